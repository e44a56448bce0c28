"""Weights as safetensors shards with an index, always: one layout for every export, small or large."""
from __future__ import annotations

import json
import math
import os
import struct
from pathlib import Path

from transformers import PreTrainedModel
from transformers.utils import SAFE_WEIGHTS_INDEX_NAME, SAFE_WEIGHTS_NAME

SINGLE_SHARD = "model-00001-of-00001.safetensors"  # transformers' shard naming, for a one-shard model


def safetensors_header(path: Path) -> dict:
    """The JSON header of a safetensors file (8-byte little-endian length, then JSON): dtype, shape and
    byte range of every tensor, read without loading any."""
    with open(path, "rb") as handle:
        (length,) = struct.unpack("<Q", handle.read(8))
        return json.loads(handle.read(length))


def save_sharded(model: PreTrainedModel, folder: Path, max_shard_size: str) -> None:
    """``save_pretrained`` (which shards, drops tied copies and indexes models over ``max_shard_size``). A model
    that fits one shard transformers writes as a lone model.safetensors: it becomes shard 1 of 1 with the
    index transformers writes for several (same fields), so every export has one layout."""
    model.save_pretrained(folder, max_shard_size=max_shard_size)
    single = folder / SAFE_WEIGHTS_NAME
    if not single.is_file():
        return
    os.rename(single, folder / SINGLE_SHARD)
    names = [key for key in safetensors_header(folder / SINGLE_SHARD) if key != "__metadata__"]
    write_index(folder, dict.fromkeys(names, SINGLE_SHARD))


def write_index(folder: Path, weight_map: dict[str, str]) -> None:
    """The safetensors index of ``folder``'s shards (tensor -> file), with transformers' metadata fields,
    read from the shards' headers."""
    parameters = size = 0
    for shard in sorted(set(weight_map.values())):
        for key, entry in safetensors_header(folder / shard).items():
            if key != "__metadata__":
                parameters += math.prod(entry["shape"])
                size += entry["data_offsets"][1] - entry["data_offsets"][0]
    index = {"metadata": {"total_parameters": parameters, "total_size": size},
             "weight_map": dict(sorted(weight_map.items()))}
    (folder / SAFE_WEIGHTS_INDEX_NAME).write_text(json.dumps(index, indent=2, sort_keys=True) + "\n")

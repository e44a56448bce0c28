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
    tensors = {key: entry for key, entry in safetensors_header(single).items() if key != "__metadata__"}
    index = {"metadata": {"total_parameters": sum(math.prod(entry["shape"]) for entry in tensors.values()),
                          "total_size": sum(end - start for start, end in
                                            (entry["data_offsets"] for entry in tensors.values()))},
             "weight_map": {key: SINGLE_SHARD for key in sorted(tensors)}}
    os.rename(single, folder / SINGLE_SHARD)
    (folder / SAFE_WEIGHTS_INDEX_NAME).write_text(json.dumps(index, indent=2, sort_keys=True) + "\n")

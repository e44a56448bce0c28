"""Atomic writes: a crash mid-write never leaves a half-written artifact under the final name."""
from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterable
from pathlib import Path

import torch
from safetensors.torch import save_file


def _replace_atomically(path: Path, write) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(handle)
    try:
        write(temporary)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def write_json_atomic(path: str | Path, data: object) -> None:
    def write(temporary: str) -> None:
        with open(temporary, "w") as handle:
            json.dump(data, handle, indent=2, sort_keys=True)
            handle.write("\n")
    _replace_atomically(Path(path), write)


def write_jsonl_atomic(path: str | Path, records: Iterable[object]) -> None:
    """One JSON object per line (UTF-8, non-ASCII kept readable)."""
    def write(temporary: str) -> None:
        with open(temporary, "w", encoding="utf-8") as handle:
            for record in records:
                handle.write(json.dumps(record, ensure_ascii=False) + "\n")
    _replace_atomically(Path(path), write)


def write_safetensors_atomic(path: str | Path, tensors: dict[str, torch.Tensor],
                             metadata: dict[str, str] | None = None) -> None:
    contiguous = {k: v.detach().contiguous().cpu() for k, v in tensors.items()}
    _replace_atomically(Path(path), lambda temporary: save_file(contiguous, temporary, metadata=metadata))

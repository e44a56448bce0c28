"""Atomic writes: a crash mid-write never leaves a half-written artifact under the final name.

Files get the permissions ``open(path, "w")`` would give (0666 minus the umask), so teammates on a
shared cluster can read datasets, connectors and summaries; tempfile.mkstemp's 0600 would hide them.
"""
from __future__ import annotations

import json
import os
import stat
import uuid
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # imported where used: the launcher's preflight writes nothing and must start fast
    import torch


def _create_temporary(path: Path) -> tuple[str, int]:
    """A new empty file next to ``path`` (same filesystem, so os.replace is atomic), and its mode.
    Created with 0666 like open(): the kernel applies the umask as it would to ``path``."""
    while True:
        temporary = str(path.parent / f".{path.name}.{uuid.uuid4().hex[:12]}.tmp")
        try:
            handle = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        except FileExistsError:  # another writer's name: draw again
            continue
        try:
            return temporary, stat.S_IMODE(os.fstat(handle).st_mode)
        finally:
            os.close(handle)


def give_files_open_mode(folder: Path) -> None:
    """Every file under ``folder`` gets the mode open() gives a new file there (some writers, such as
    safetensors' save_file behind save_pretrained, make theirs 0600). The mode is read off a probe
    file: reading the umask itself means changing it, which other threads would see."""
    probe, mode = _create_temporary(folder / "probe")
    os.unlink(probe)
    for path in folder.rglob("*"):
        if path.is_file() and not path.is_symlink():
            # A script stays runnable (DeepSpeed's zero_to_fp32.py) by whoever may read it.
            executable = stat.S_IMODE(path.stat().st_mode) & ((mode & 0o444) >> 2)
            os.chmod(path, mode | executable)


def replace_atomically(path: Path, write) -> None:
    """``write(temporary_path)`` writes the content; readers of ``path`` then see all of it or the old file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary, mode = _create_temporary(path)
    try:
        write(temporary)
        # safetensors' save_file swaps in a 0600 file of its own: give it back open()'s mode.
        os.chmod(temporary, mode)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def write_json_atomic(path: str | Path, data: object) -> None:
    def write(temporary: str) -> None:
        with open(temporary, "w") as handle:
            json.dump(data, handle, indent=2, sort_keys=True)
            handle.write("\n")
    replace_atomically(Path(path), write)


def write_text_atomic(path: str | Path, text: str) -> None:
    replace_atomically(Path(path), lambda temporary: Path(temporary).write_text(text, encoding="utf-8"))


def write_jsonl_atomic(path: str | Path, records: Iterable[object]) -> None:
    """One JSON object per line (UTF-8, non-ASCII kept readable)."""
    def write(temporary: str) -> None:
        with open(temporary, "w", encoding="utf-8") as handle:
            for record in records:
                handle.write(json.dumps(record, ensure_ascii=False) + "\n")
    replace_atomically(Path(path), write)


def write_safetensors_atomic(path: str | Path, tensors: dict[str, torch.Tensor],
                             metadata: dict[str, str] | None = None) -> None:
    from safetensors.torch import save_file

    contiguous = {k: v.detach().contiguous().cpu() for k, v in tensors.items()}
    replace_atomically(Path(path), lambda temporary: save_file(contiguous, temporary, metadata=metadata))


def nearest_existing(path: Path) -> Path:
    """``path`` or its nearest ancestor that exists: where a folder for ``path`` would be created (a file there
    stops it)."""
    return next(candidate for candidate in (path, *path.parents) if candidate.exists())

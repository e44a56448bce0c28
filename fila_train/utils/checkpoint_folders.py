"""What a ``checkpoint-N`` folder must hold to be complete: its manifest's files at their sizes.

Written by training (training/checkpoints.py); read by it to resume, and by export, generate and eval, which
need no training code, to refuse a folder whose save did not finish or whose files were cut short since.
"""
from __future__ import annotations

import json
import re
from pathlib import Path

# transformers' PREFIX_CHECKPOINT_DIR; spelled out so the launcher's preflight needs no transformers import.
PREFIX_CHECKPOINT_DIR = "checkpoint"
STAGING_DIR = ".incomplete"  # where checkpoints are written before they are complete
MANIFEST = "checkpoint_manifest.json"
TRAINER_STATE = "trainer_state.json"
_CHECKPOINT_NAME = re.compile(rf"^{PREFIX_CHECKPOINT_DIR}-(\d+)$")


def missing_parts(folder: Path) -> list[str]:
    """What ``folder`` lacks to be a complete checkpoint; empty when it is complete.

    A folder under its final name without a manifest was written before manifests existed (or by
    plain transformers): it counts as complete once its trainer state, written last, is there."""
    if not folder.is_dir():
        return ["the folder itself"]
    manifest = folder / MANIFEST
    if not manifest.is_file():
        if folder.parent.name != STAGING_DIR and (folder / TRAINER_STATE).is_file():
            return []
        return [f"{MANIFEST} (its save did not finish)"]
    try:
        files = json.loads(manifest.read_text())["files"]
    except (ValueError, KeyError, TypeError) as error:
        return [f"a readable {MANIFEST} ({type(error).__name__}: {error})"]
    missing = []
    for name, size in files.items():
        path = folder / name
        if not path.is_file():
            missing.append(name)
        elif path.stat().st_size != size:
            missing.append(f"{name} ({path.stat().st_size} of {size} bytes)")
    return missing


def step_of(folder: Path) -> int | None:
    match = _CHECKPOINT_NAME.match(folder.name)
    return int(match.group(1)) if match else None


def describe_incomplete(folder: Path, missing: list[str]) -> str:
    shown = ", ".join(missing[:3]) + (f" and {len(missing) - 3} more" if len(missing) > 3 else "")
    return f"{folder} (missing {shown})"


# What a checkpoint holds only to resume training: commands that read the model (generate, eval, an export from the
# safetensors save) do without it, and users prune it to save disk.
RESUME_ONLY = re.compile(r"^(global_step\d+/|optimizer\.|scheduler\.|rng_state|trainer_state\.json|training_args\.bin|"
                         r"latest\b|zero_to_fp32\.py)")


def incomplete_checkpoint(folder: Path, training_state: bool) -> str | None:
    """For a ``checkpoint-N`` folder of a run (with its manifest, or still being written) that lacks a file this
    command reads, or holds one cut short: what, and why; else None (any other folder, even one so named).
    ``training_state``: the command reads the optimizer / ZeRO files too (an export of the fp32 masters)."""
    if step_of(folder) is None or (not (folder / MANIFEST).is_file() and folder.parent.name != STAGING_DIR):
        return None
    missing = [part for part in missing_parts(folder) if training_state or not RESUME_ONLY.match(part)]
    if not missing:
        return None
    return (f"{describe_incomplete(folder, missing)}: its save did not finish, or a file was cut short since; "
            f"use a complete checkpoint")


def checkpoint_subfolders(folder: Path) -> list[str]:
    """The ``checkpoint-N`` folders in a run folder, by step: a run that stopped before its final save has only
    these (named to the user who passed the run folder)."""
    found = [p for p in folder.glob(f"{PREFIX_CHECKPOINT_DIR}-*") if p.is_dir() and step_of(p) is not None]
    return [p.name for p in sorted(found, key=step_of)]

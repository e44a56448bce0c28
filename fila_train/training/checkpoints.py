"""Checkpoints that are complete or absent, and finding the one to resume from.

Every rank writes its part of ``checkpoint-N`` under ``OUTPUT_DIR/.incomplete/checkpoint-N``. Once all
ranks are done, one process writes a manifest (every file and its size) and renames the folder to
``OUTPUT_DIR/checkpoint-N``: a kill at any moment leaves either the whole checkpoint under its final
name or nothing there. Older checkpoints are rotated out (``save_total_limit``) only after that rename.
"""
from __future__ import annotations

import json
import logging
import re
import shutil
from pathlib import Path

from ..utils.files import write_json_atomic

logger = logging.getLogger(__name__)

# transformers' PREFIX_CHECKPOINT_DIR; spelled out so the launcher's preflight needs no transformers import.
PREFIX_CHECKPOINT_DIR = "checkpoint"
STAGING_DIR = ".incomplete"  # where checkpoints are written before they are complete
MANIFEST = "checkpoint_manifest.json"
RESUME_LATEST = ("latest", "auto")  # "auto" starts from scratch when there is none yet
_CHECKPOINT_NAME = re.compile(rf"^{PREFIX_CHECKPOINT_DIR}-(\d+)$")


class CheckpointError(ValueError):
    """A checkpoint that cannot be resumed from; the message names what is missing."""


def checkpoint_name(step: int) -> str:
    return f"{PREFIX_CHECKPOINT_DIR}-{step}"


def staging_root(run_dir: str | Path) -> Path:
    return Path(run_dir) / STAGING_DIR


def clear_staging(folder: Path) -> None:
    """A staging folder left by a killed save of the same step: its files would mix with the new ones."""
    if folder.exists():
        logger.info("removing the unfinished save %s", folder)
        shutil.rmtree(folder)


def write_manifest(folder: Path, step: int, world_size: int) -> None:
    files = {str(path.relative_to(folder)): path.stat().st_size
             for path in sorted(folder.rglob("*")) if path.is_file()}
    write_json_atomic(folder / MANIFEST, {"step": step, "world_size": world_size, "files": files})


def publish(staged: Path, final: Path) -> None:
    """Give the complete ``staged`` folder its final name (a rename: atomic on one filesystem).

    A checkpoint of the same step from an earlier attempt is replaced; it is moved aside first, so
    the final name never holds a mix of both."""
    if not staged.exists():  # another node's process published it (save_on_each_node on a shared disk)
        return
    if final.exists():
        retired = staged.with_name(staged.name + ".old")
        shutil.rmtree(retired, ignore_errors=True)
        final.rename(retired)
        staged.rename(final)
        shutil.rmtree(retired)
    else:
        staged.rename(final)
    logger.info("checkpoint %s is complete", final)


def missing_parts(folder: Path) -> list[str]:
    """What ``folder`` lacks to be a complete checkpoint; empty when it is complete."""
    if not folder.is_dir():
        return ["the folder itself"]
    manifest = folder / MANIFEST
    if not manifest.is_file():
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


def checkpoints_newest_first(run_dir: Path) -> list[Path]:
    """``checkpoint-N`` folders under their final name, then those still being written, newest first."""
    found = [p for root in (run_dir, staging_root(run_dir)) if root.is_dir()
             for p in root.iterdir() if p.is_dir() and step_of(p) is not None]
    return sorted(found, key=lambda p: (step_of(p), p.parent == run_dir), reverse=True)


def describe_incomplete(folder: Path, missing: list[str]) -> str:
    shown = ", ".join(missing[:3]) + (f" and {len(missing) - 3} more" if len(missing) > 3 else "")
    return f"{folder} (missing {shown})"


def newest_complete(run_dir: Path) -> tuple[Path | None, list[str]]:
    """The newest complete checkpoint under ``run_dir`` and the incomplete ones newer than it."""
    skipped = []
    for folder in checkpoints_newest_first(run_dir):
        missing = missing_parts(folder)
        if not missing:
            return folder, skipped
        skipped.append(describe_incomplete(folder, missing))
    return None, skipped


def resolve_resume(value: str | None, output_dir: str | Path) -> str | None:
    """``--resume_from_checkpoint`` as a checked folder: ``latest`` / ``auto`` pick the newest complete
    checkpoint in ``output_dir`` (``auto`` starts from scratch when there is none); a path must be complete."""
    if value is None:
        return None
    output_dir = Path(output_dir)
    if value in RESUME_LATEST:
        chosen, skipped = newest_complete(output_dir)
        if skipped:
            logger.warning("--resume_from_checkpoint %s: skipped incomplete checkpoint(s): %s", value,
                           "; ".join(skipped))
        if chosen is None:
            if value == "auto":
                logger.info("--resume_from_checkpoint auto: no complete checkpoint in %s, starting from scratch",
                            output_dir)
                return None
            raise CheckpointError(f"--resume_from_checkpoint latest: no complete checkpoint in {output_dir} "
                                  f"(use 'auto' to start from scratch when there is none)")
        logger.info("--resume_from_checkpoint %s: resuming from %s, the newest complete checkpoint", value, chosen)
        return str(chosen)
    folder = Path(value)
    missing = missing_parts(folder)
    if missing:
        run_dir = folder.parent.parent if folder.parent.name == STAGING_DIR else folder.parent
        alternative, _ = newest_complete(run_dir) if run_dir.is_dir() else (None, [])
        hint = f"; the newest complete checkpoint there is {alternative}" if alternative else ""
        raise CheckpointError(f"--resume_from_checkpoint {value} is incomplete: missing "
                              f"{', '.join(missing[:5])}{' ...' if len(missing) > 5 else ''}{hint} "
                              f"(--resume_from_checkpoint latest picks it)")
    return str(folder)

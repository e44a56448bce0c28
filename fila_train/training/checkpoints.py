"""Checkpoints that are complete or absent, and finding the one to resume from.

Every rank writes its part of ``checkpoint-N`` under ``OUTPUT_DIR/.incomplete/checkpoint-N``. Once all
ranks are done, one process writes a manifest (every file and its size) and renames the folder to
``OUTPUT_DIR/checkpoint-N``: a kill at any moment leaves either the whole checkpoint under its final
name or nothing there. Older checkpoints are rotated out (``save_total_limit``) only after that rename.
The files are not fsynced: a checkpoint survives any kill of the training processes, not a power cut
of the node before the page cache reaches the disk.
"""
from __future__ import annotations

import json
import logging
import os
import shutil
import time
from pathlib import Path

from ..utils.checkpoint_folders import (MANIFEST, PREFIX_CHECKPOINT_DIR, STAGING_DIR, TRAINER_STATE, describe_incomplete,
                                        missing_parts, step_of)
from ..utils.files import write_json_atomic
from ..utils.run_summary import TRAIN_SUMMARY
from ..utils.errors import CheckpointError

logger = logging.getLogger(__name__)

RESUME_LATEST = ("latest", "auto")  # "auto" starts from scratch when there is no checkpoint yet
# transformers' booleans (LLaVA's train.py resumes with True): True is the newest checkpoint, False none.
TRANSFORMERS_BOOLEANS = {"True": "latest", "true": "latest", "False": None, "false": None}


def checkpoint_name(step: int) -> str:
    return f"{PREFIX_CHECKPOINT_DIR}-{step}"


def staging_root(run_dir: str | Path) -> Path:
    return Path(run_dir) / STAGING_DIR


def clear_staging(folder: Path) -> None:
    """What a killed save of the same step left (its files would mix with the new ones), with the folders
    a killed publish of it left beside (``.publishing-*``, ``.replaced-*``)."""
    for leftover in [folder, *folder.parent.glob(f"{folder.name}.*")]:
        if leftover.exists():
            logger.info("removing the unfinished save %s", leftover)
            shutil.rmtree(leftover, ignore_errors=True)  # another node's process may be removing it too


def write_manifest(folder: Path, step: int, run_facts: dict) -> None:
    """Every file and its size, with ``run_facts`` (what a resume must agree with: resume_checks.py; and the wandb
    run it continues: reporting.py)."""
    files = {str(path.relative_to(folder)): path.stat().st_size
             for path in sorted(folder.rglob("*")) if path.is_file()}
    write_json_atomic(folder / MANIFEST, {"step": step, **run_facts, "published_ns": time.time_ns(), "files": files})


def read_manifest(checkpoint: Path) -> dict:
    """The manifest's fields; empty for a checkpoint without a readable one (written before manifests)."""
    try:
        manifest = json.loads((checkpoint / MANIFEST).read_text())
    except (OSError, ValueError):
        return {}
    return manifest if isinstance(manifest, dict) else {}


def publish(staged: Path, final: Path) -> bool:
    """Give the complete ``staged`` folder its final name (a rename: atomic on one filesystem).

    A checkpoint of the same step from an earlier attempt is replaced; it is moved aside first, so the
    final name never holds a mix of both. Where several processes publish the same folder (one per node
    with save_on_each_node on a shared disk), the first to claim it by renaming it does; the others
    return False."""
    claimed = staged.with_name(f"{staged.name}.publishing-{os.getpid()}")
    try:
        staged.rename(claimed)
    except FileNotFoundError:
        return False
    if final.exists():
        retired = claimed.with_name(f"{staged.name}.replaced-{os.getpid()}")
        final.rename(retired)
        claimed.rename(final)
        shutil.rmtree(retired, ignore_errors=True)
    else:
        claimed.rename(final)
    logger.info("checkpoint %s is complete", final)
    return True


def published_at(folder: Path) -> int:
    """When a complete checkpoint was published (its manifest's time; the trainer state's for older ones)."""
    try:
        return int(read_manifest(folder)["published_ns"])
    except (KeyError, TypeError, ValueError):
        return (folder / TRAINER_STATE).stat().st_mtime_ns


def checkpoints_by_step(run_dir: Path) -> list[Path]:
    """``checkpoint-N`` folders under their final name, then those still being written, newest step first."""
    found = [p for root in (run_dir, staging_root(run_dir)) if root.is_dir()
             for p in root.iterdir() if p.is_dir() and step_of(p) is not None]
    return sorted(found, key=lambda p: (step_of(p), p.parent == run_dir), reverse=True)


def newest_complete(run_dir: Path) -> tuple[Path | None, list[str]]:
    """The most recently published complete checkpoint under ``run_dir`` (after a resume from an earlier
    step, a higher step can belong to the abandoned run), and the incomplete ones of higher steps."""
    missing = {folder: missing_parts(folder) for folder in checkpoints_by_step(run_dir)}
    complete = [f for f, lacks in missing.items() if f.parent == run_dir and not lacks]
    chosen = max(complete, key=published_at, default=None)
    skipped = [describe_incomplete(f, lacks) for f, lacks in missing.items()
               if f not in complete and (chosen is None or step_of(f) > step_of(chosen))]
    return chosen, skipped


def where_to_resume(run_dir: str | Path) -> str:
    """For a run stopped early: the checkpoint ``--resume_from_checkpoint latest`` would continue from."""
    chosen, _ = newest_complete(Path(run_dir))
    if chosen is None:
        return f"{run_dir} holds no complete checkpoint yet"
    return f"the newest complete checkpoint is {chosen}: --resume_from_checkpoint latest continues from it"


def resume_value(value: str | None) -> str | None:
    """--resume_from_checkpoint with transformers' True / False read as they mean there."""
    return TRANSFORMERS_BOOLEANS.get(value, value) if value is not None else None


def refuse_start_over(output_dir: str | Path) -> None:
    """A run without --resume_from_checkpoint would start from step 0 in a folder that holds an earlier run's
    checkpoints, and rotate them out at its first saves (the scripts keep one): a crashed run's only checkpoint
    would be lost to rerunning the same command."""
    earlier = [folder.name for folder in reversed(checkpoints_by_step(Path(output_dir))) if folder.parent == Path(output_dir)]
    if earlier and (Path(output_dir) / TRAIN_SUMMARY).is_file():
        raise CheckpointError(
            f"--output_dir {output_dir} holds a finished run ({TRAIN_SUMMARY}) and its {', '.join(earlier)}, which this "
            f"run would rotate out as it saves: give another --output_dir (or remove them to train there again)")
    if earlier:
        raise CheckpointError(
            f"--output_dir {output_dir} holds {', '.join(earlier)} of an earlier run, which this run would start "
            f"over from step 0 and rotate out as it saves: --resume_from_checkpoint latest continues that run ('auto' "
            f"continues one where there is one); to start over, give another --output_dir or remove those folders")


def resolve_resume(value: str | None, output_dir: str | Path) -> str | None:
    """``--resume_from_checkpoint`` as a checked folder: ``latest`` / ``auto`` pick the newest complete
    checkpoint in ``output_dir`` (``auto`` starts from scratch when none was ever published); a path must
    be complete; a finished run's final save is not a checkpoint."""
    value = resume_value(value)
    if value is None:
        return None
    output_dir = Path(output_dir)
    if value in RESUME_LATEST:
        chosen, skipped = newest_complete(output_dir)
        if skipped:
            logger.warning("--resume_from_checkpoint %s: skipped incomplete checkpoint(s): %s", value,
                           "; ".join(skipped))
        if chosen is not None:
            logger.info("--resume_from_checkpoint %s: resuming from %s, the newest complete checkpoint", value,
                        chosen)
            return str(chosen)
        published = [f for f in checkpoints_by_step(output_dir) if f.parent == output_dir]
        if value == "auto" and not published:
            logger.info("--resume_from_checkpoint auto: no checkpoint in %s yet, starting from scratch", output_dir)
            return None
        raise CheckpointError(f"--resume_from_checkpoint {value}: no complete checkpoint in {output_dir}"
                              + (f" (incomplete: {'; '.join(skipped)})" if published else
                                 " ('auto' starts from scratch when there is none)"))
    folder = Path(value)
    if folder.is_dir() and checkpoints_by_step(folder):
        raise CheckpointError(f"--resume_from_checkpoint {value} is a run folder, not a checkpoint: give one of its "
                              f"checkpoint-N folders, or 'latest' with --output_dir {value}")
    if (folder / TRAIN_SUMMARY).is_file() and not (folder / TRAINER_STATE).is_file():
        raise CheckpointError(f"--resume_from_checkpoint {value} is a finished run's final save, not a checkpoint: it "
                              f"holds no optimizer or schedule to resume; start a new run from its weights "
                              f"(--model_name_or_path {value})")
    missing = missing_parts(folder)
    if missing:
        run_dir = folder.parent.parent if folder.parent.name == STAGING_DIR else folder.parent
        alternative, _ = newest_complete(run_dir) if run_dir.is_dir() else (None, [])
        hint = f"; the newest complete checkpoint there is {alternative}" if alternative else ""
        raise CheckpointError(f"--resume_from_checkpoint {value} is incomplete: missing "
                              f"{', '.join(missing[:5])}{' ...' if len(missing) > 5 else ''}{hint} "
                              f"(--resume_from_checkpoint latest picks it)")
    return str(folder)

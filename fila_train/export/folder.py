"""Write an output folder atomically: everything goes to a hidden sibling, renamed into place at the end."""
from __future__ import annotations

import logging
import os
import shutil
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from .errors import ExportError

logger = logging.getLogger(__name__)


def _sibling(output: Path, kind: str) -> Path:
    return output.parent / f".{output.name}.{kind}-{uuid.uuid4().hex[:8]}"


@contextmanager
def atomic_folder(output: str | Path, overwrite: bool = False) -> Iterator[Path]:
    """Yield an empty staging folder; on success it becomes ``output``, on any error it is removed.

    A crash therefore never leaves a half-written folder under the final name. An existing non-empty
    ``output`` is an error unless ``overwrite``; then it is replaced only once the new folder is complete.
    """
    output = Path(output)
    if output.exists() and not output.is_dir():
        raise ExportError(f"output {output} exists and is not a folder")
    if output.is_dir() and any(output.iterdir()) and not overwrite:
        raise ExportError(f"output folder {output} exists and is not empty (pass --overwrite to replace it)")
    output.parent.mkdir(parents=True, exist_ok=True)
    staging = _sibling(output, "tmp")
    staging.mkdir()
    try:
        yield staging
        if output.exists():
            previous = _sibling(output, "old")
            os.rename(output, previous)
            os.rename(staging, output)
            shutil.rmtree(previous)
        else:
            os.rename(staging, output)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    logger.info("wrote %s", output)

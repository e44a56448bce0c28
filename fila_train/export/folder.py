"""Write an output folder atomically: everything goes to a hidden sibling, renamed into place at the end."""
from __future__ import annotations

import logging
import os
import re
import shutil
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from ..utils.files import give_files_open_mode, nearest_existing
from .errors import ExportError

logger = logging.getLogger(__name__)


# The hidden siblings' kinds: the folder being written, and the output an --overwrite replaces.
STAGING, PREVIOUS = "tmp", "old"


def sibling(output: Path, kind: str) -> Path:
    return output.parent / f".{output.name}.{kind}-{uuid.uuid4().hex[:8]}"


def is_sibling(path: Path, output: Path, kind: str) -> bool:
    """Whether ``path`` is named as sibling(output, kind) names, exactly: the siblings of a destination
    named, say, ``export.tmp-1234abcd`` begin like those of ``export`` but are not its."""
    return re.fullmatch(rf"\.{re.escape(output.name)}\.{re.escape(kind)}-[0-9a-f]{{8}}", path.name) is not None


def remove_stale_siblings(output: Path) -> None:
    """Remove what an interrupted export into ``output`` left next to it: its staging folders and,
    when ``output`` exists (complete, renamed in at once), an older output an --overwrite was deleting.
    Without ``output``, a PREVIOUS sibling may be the only complete copy: it is left alone."""
    kinds = (STAGING, PREVIOUS) if output.is_dir() else (STAGING,)
    stale = sorted(path for path in output.parent.iterdir()
                   if any(is_sibling(path, output, kind) for kind in kinds) and path.is_dir() and not path.is_symlink())
    removed = []
    for path in stale:
        try:
            shutil.rmtree(path)
            removed.append(path.name)
        except OSError as error:  # e.g. someone else's: this export does not need it gone
            logger.warning("could not remove %s, left by an interrupted export: %s", path, error)
    if removed:
        logger.info("removed %d stale folder(s) an interrupted export left next to %s: %s", len(removed), output,
                    ", ".join(removed))


def check_output(output: Path, overwrite: bool, source: Path | None = None) -> None:
    """``output`` is a folder atomic_folder may write: absent, empty, or replaced with ``overwrite``; and neither
    ``source`` nor a folder holding it, which replacing would delete (checked before any slow work)."""
    if source is not None and (output.resolve() == source.resolve() or output.resolve() in source.resolve().parents):
        raise ExportError(f"output {output} is or holds the checkpoint it exports ({source}): replacing it would delete "
                          f"that checkpoint; choose another output folder")
    if output.exists() and not output.is_dir():
        raise ExportError(f"output {output} exists and is not a folder")
    # The staging folder is made beside the output: its nearest existing ancestor must take new folders.
    ancestor = nearest_existing(output.absolute().parent)
    if not ancestor.is_dir():
        raise ExportError(f"output {output}: {ancestor} is a file, not a folder")
    if not os.access(ancestor, os.W_OK | os.X_OK):
        raise ExportError(f"output {output}: no permission to create folders in {ancestor}")
    if output.is_dir() and any(output.iterdir()) and not overwrite:
        raise ExportError(f"output folder {output} exists and is not empty (pass --overwrite to replace it)")


@contextmanager
def atomic_folder(output: str | Path, overwrite: bool = False) -> Iterator[Path]:
    """Yield an empty staging folder; on success it becomes ``output``, on any error it is removed.

    A crash therefore never leaves a half-written folder under the final name. An existing non-empty
    ``output`` is an error unless ``overwrite``; then it is replaced only once the new folder is complete.
    """
    output = Path(output)
    if output.is_symlink():  # the folder it names is replaced and the link kept (renamed, the link would be)
        output = output.resolve()
    check_output(output, overwrite)
    output.parent.mkdir(parents=True, exist_ok=True)
    # Before our own staging folder exists. One export per destination at a time: a second export
    # into the same folder while one runs removes the first's staging folder.
    remove_stale_siblings(output)
    staging = sibling(output, STAGING)
    staging.mkdir()
    try:
        yield staging
        give_files_open_mode(staging)  # readable by others as the umask allows, like files made by open()
        if output.exists():
            previous = sibling(output, PREVIOUS)
            os.rename(output, previous)
            os.rename(staging, output)
            try:  # the export is in place: a leftover is removed by the next export into output
                shutil.rmtree(previous)
            except OSError as error:
                logger.warning("could not remove %s, the export %s replaced: %s", previous, output, error)
        else:
            os.rename(staging, output)
    except OSError as error:  # e.g. the disk filled up: the user's to mend, not a bug
        shutil.rmtree(staging, ignore_errors=True)
        kept = "is left as it was" if output.exists() else "was not created"
        raise ExportError(f"could not write {output} ({error}); {output} {kept}") from None
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    logger.info("wrote %s", output)

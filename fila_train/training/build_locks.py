"""A rank that waits on a torch extension's build lock says so.

On the CPU, DeepSpeed loads its shared-memory comm op at start-up through torch's JIT extension loader. The
loader takes a lock file in the op's build folder and waits for it without a word, forever. A process killed
while it holds the lock (a launcher stopping its workers, SIGKILL, a cancelled job) leaves the file behind,
and every later run then hangs with nothing on the terminal. Each waiting rank logs the lock's path once.
"""
from __future__ import annotations

import logging
import os
import time
from functools import partial
from pathlib import Path

from ..utils.logs import reported_if_slow

logger = logging.getLogger(__name__)

REPORT_AFTER_SECONDS = 90.0  # a first build of the op takes 30-75 s here, and a peer rank waits for it


def extension_locks() -> list[Path]:
    """The build locks under torch's extension root (TORCH_EXTENSIONS_DIR, or its default per Python/CUDA)."""
    from torch.utils.cpp_extension import get_default_build_root

    root = Path(os.environ.get("TORCH_EXTENSIONS_DIR") or get_default_build_root())
    return sorted({*root.glob("*/lock"), *root.glob("*/*/lock")})


def report_locks(since: float) -> None:
    """Log the locks that existed before ``since`` (a lock taken later is a build this run started)."""
    for lock in extension_locks():
        try:
            created = lock.stat().st_mtime
        except FileNotFoundError:  # released meanwhile
            continue
        if created < since - 1:  # file times run on a coarser clock than time.time()
            logger.warning("still starting: torch's extension build lock %s exists (%.0f s old). If no other "
                           "process is building that op, a killed run left it behind and this run waits for it "
                           "forever: delete it", lock, time.time() - created)


def reporting_build_locks(after_seconds: float = REPORT_AFTER_SECONDS):
    """Around a step that may build or load a JIT op: if it still runs after ``after_seconds``, the locks
    that were there before it started are logged."""
    return reported_if_slow(after_seconds, partial(report_locks, time.time()))

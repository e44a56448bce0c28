"""What a launcher (ours around torchrun, or around DeepSpeed's runner) says when a signal stops the run.

Ctrl-C: the node's first process to take it reports it, a worker with the run's step or else the launcher: each
claims a file that the launcher names for its workers (utils/errors.py). SIGTERM kills the workers unheard: the
launcher reports it. Either line names the checkpoint that ``--resume_from_checkpoint latest`` would take.
"""
from __future__ import annotations

import os
import shutil
import signal
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from ..utils.errors import INTERRUPT_REPORTED_ENV
from .checkpoints import where_to_resume
from .preflight import output_dir_of


@contextmanager
def interrupt_claims() -> Iterator[None]:
    """The claim file's name for this launcher's workers (they inherit the environment), in a folder of its own."""
    folder = Path(tempfile.mkdtemp(prefix="fila-train-launch-"))
    os.environ[INTERRUPT_REPORTED_ENV] = str(folder / "interrupt-reported")
    try:
        yield
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def stopped(training_args: list[str], signum: int) -> str:
    """One line for the run stopped by a signal, once its workers are."""
    output_dir = output_dir_of(training_args)
    resume = "a checkpoint is complete or absent"
    if output_dir:
        try:
            resume = where_to_resume(output_dir)
        except OSError:  # an unreadable folder: the line still comes, without the checkpoint's name
            pass
    how = "interrupted" if signum == signal.SIGINT else f"stopped by {signal.Signals(signum).name}"
    return f"[fila-train] {how}: every worker was stopped; {resume}"

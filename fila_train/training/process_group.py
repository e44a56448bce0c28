"""The ranks meet: --ddp_timeout holds on the CPU too, a long wait is announced, a rank that never comes is one line.

HF's TrainingArguments starts the process group while it is built (its ``device``). Its CPU branch passes no
timeout, so a missing rank (a node that never started, a wrong --nnodes) made the others wait torch's default
30 minutes, silently, whatever --ddp_timeout said. On the GPU it passes the timeout on to DeepSpeed.
"""
from __future__ import annotations

import logging
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta
from functools import partial

import torch

from ..utils.errors import LaunchError
from ..utils.logs import reported_if_slow

logger = logging.getLogger(__name__)

ANNOUNCE_AFTER_SECONDS = 60.0  # ranks of one node meet in seconds; a wait this long is another node's start

# torchrun's and the deepspeed launcher's env:// rendezvous.
RENDEZVOUS_VARIABLES = ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")


def launched_distributed() -> bool:
    return all(os.environ.get(name) for name in RENDEZVOUS_VARIABLES) and int(os.environ["WORLD_SIZE"]) > 1


def meeting_point() -> str:
    return f"{os.environ.get('MASTER_ADDR')}:{os.environ.get('MASTER_PORT')}"


def start_cpu_process_group(backend: str | None, timeout_seconds: float) -> None:
    """The CPU process group, with the timeout HF leaves out; HF then uses this one. The backend is the one
    accelerate would pick (its _prepare_backend): MPI where torch has it and nothing else was asked, else gloo."""
    if not launched_distributed() or torch.distributed.is_initialized():
        return
    chosen = "mpi" if backend in (None, "mpi") and torch.distributed.is_mpi_available() else "gloo"
    if backend not in (None, chosen):  # accelerate refuses it at once, without waiting for the others
        return
    torch.distributed.init_process_group(chosen, timeout=timedelta(seconds=timeout_seconds))


def announce_wait(timeout_seconds: float) -> None:
    logger.warning("rank %s: still waiting for the other processes (%s in all) at %s; it gives up after "
                   "--ddp_timeout %g s", os.environ.get("RANK"), os.environ.get("WORLD_SIZE"), meeting_point(),
                   timeout_seconds)


@contextmanager
def meeting_ranks(timeout_seconds: float, announce_after: float = ANNOUNCE_AFTER_SECONDS) -> Iterator[None]:
    """Around the start of the process group: a wait longer than ``announce_after`` is logged once, and a
    rendezvous that times out or cannot connect becomes one line (LaunchError). A backend's own error
    (NCCL) is left as it is."""
    if not launched_distributed():
        yield
        return
    started = time.monotonic()
    try:
        with reported_if_slow(announce_after, partial(announce_wait, timeout_seconds)):
            yield
    except (torch.distributed.DistStoreError, torch.distributed.DistNetworkError) as error:
        torch_says = " ".join(str(error).split())
        if time.monotonic() - started < 0.9 * timeout_seconds:  # refused, not timed out: a port or an address
            raise LaunchError(f"could not start the process group at {meeting_point()} ({torch_says})") from error
        raise LaunchError(
            f"not all {os.environ['WORLD_SIZE']} processes joined at {meeting_point()} within --ddp_timeout "
            f"{timeout_seconds:g} s ({torch_says}): start every rank (on each node the launcher with the same "
            f"--nnodes, --master_addr and --master_port), or raise --ddp_timeout if a node starts late") from error

"""Process hygiene for a rank: it dies with its launcher (none keeps training, or writing checkpoints, after it is
killed), and its DataLoader workers leave no temporary folders or exit tracebacks behind."""
from __future__ import annotations

import ctypes
import multiprocessing.util
import os
import signal
import sys
import threading
import time

PR_SET_PDEATHSIG = 1  # linux/prctl.h
WATCH_SECONDS = 0.5  # where prctl is unavailable: how often a worker looks for its launcher


def started_by_launcher() -> bool:
    # torchrun and DeepSpeed's launcher both set it for every worker they start.
    return "LOCAL_RANK" in os.environ


def die_with_launcher() -> None:
    """Under a launcher, this process is killed (SIGKILL) the moment its parent dies, by any signal.

    torchrun starts each worker in a session of its own, so killing the launcher's process group
    (or the launcher alone, with SIGKILL) would otherwise leave the workers running. Call it first
    thing, before the slow imports: a launcher that dies after the call kills this process, one that
    dies while it runs is noticed by the second look at the parent."""
    if not started_by_launcher():
        return
    launcher = os.getppid()
    if _parent_death_signal(signal.SIGKILL):
        # A fork (a DataLoader worker) does not inherit the setting: its own watchdog would take up to
        # 5 s to notice a dead rank. Each forked child asks for it again, to die with this process.
        os.register_at_fork(after_in_child=lambda: _parent_death_signal(signal.SIGKILL))
    else:
        threading.Thread(target=_watch, args=(launcher,), name="launcher-watch", daemon=True).start()
    if os.getppid() != launcher:  # the launcher died between the two looks
        os.kill(os.getpid(), signal.SIGKILL)


def _parent_death_signal(signum: int) -> bool:
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return libc.prctl(PR_SET_PDEATHSIG, int(signum), 0, 0, 0) == 0
    except (OSError, AttributeError):
        return False


def _watch(launcher: int) -> None:
    while os.getppid() == launcher:
        time.sleep(WATCH_SECONDS)
    os.kill(os.getpid(), signal.SIGKILL)


def share_temp_folder_with_workers(num_workers: int) -> None:
    """Create this process's multiprocessing temp folder now, before a DataLoader builds its ``num_workers`` worker
    processes (none: nothing to do, no folder made).

    torch hands a batch's storage to the rank as a file descriptor, through a listener socket in that folder. A
    worker built before the folder exists makes one of its own, from the thread that sends its batches, and
    removes it when it exits: killed, it leaks the folder, and stopped while sending its first batch (the rank
    failed, or training ended mid-epoch) its exit can remove the folder while the socket is being created, printing
    "OSError: [Errno 39] Directory not empty" with a traceback. Built after this call, the workers inherit this
    folder (by any start method) and never remove it; this process removes it at exit, after it has joined them."""
    if num_workers > 0:
        multiprocessing.util.get_temp_dir()

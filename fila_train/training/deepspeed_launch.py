"""DeepSpeed's runner (the scripts' LAUNCHER=deepspeed and HOSTFILE runs), minus the traceback it prints on Ctrl-C
and the silence on SIGTERM.

On one node the runner waits for DeepSpeed's per-node launcher, which stops the workers on Ctrl-C or SIGTERM; the
runner itself died with a KeyboardInterrupt traceback, or by the SIGTERM without a word, and a SIGTERM sent to it
alone (`kill PID`) left the launcher and its workers running. Here it passes a SIGTERM on to that launcher, waits for
it to finish (a second signal stops waiting), then says what stopped the run: for Ctrl-C the first process to take
it, a worker with the run's step or this runner, has printed one line (training/launcher_stops.py), and the runner
ends by SIGINT (utils/errors.py); for SIGTERM the runner prints the line and exits with 143, as ours around torchrun
does. Across nodes (pdsh) DeepSpeed's runner handles both signals itself. Everything else is DeepSpeed's own: same
flags, same behaviour.
"""
from __future__ import annotations

import signal
import sys
import time

from ..utils.errors import launcher_reports_interrupt, leave_as_interrupted
from .launcher_stops import interrupt_claims, stopped

# Where each signal's handler is left to us: Python's own for Ctrl-C, the default for SIGTERM. A process started
# with one ignored (a script's background job) keeps ignoring it.
OURS_TO_HANDLE = {signal.SIGINT: signal.default_int_handler, signal.SIGTERM: signal.SIG_DFL}


def main(argv: list[str] | None = None) -> int:
    from deepspeed.launcher.runner import main as run, parse_args

    argv = sys.argv[1:] if argv is None else argv
    stops: list[int] = []

    def wait_for_the_workers(signum, frame) -> None:
        stops.append(signum)
        signal.signal(signum, OURS_TO_HANDLE[signum])  # a second one stops waiting
        if signum == signal.SIGTERM:  # Ctrl-C reaches the whole job; a SIGTERM may have reached this runner alone
            pass_on(signum)

    with interrupt_claims():
        for signum, default in OURS_TO_HANDLE.items():
            if signal.getsignal(signum) is default:
                signal.signal(signum, wait_for_the_workers)
        try:
            run(argv)
        except (KeyboardInterrupt, SystemExit):  # DeepSpeed's launcher exits with 1 once it stopped the workers
            if not stops:
                raise
        if stops:
            if stops[0] != signal.SIGINT or launcher_reports_interrupt():
                print(f"\n{stopped(parse_args(argv).user_args, stops[0])}", file=sys.stderr)
            if stops[0] == signal.SIGINT:
                leave_as_interrupted()
            return 128 + stops[0]  # as a shell reports it
    return 0


NODE_LAUNCHER = "deepspeed.launcher.launch"  # DeepSpeed's per-node launcher, as its runner starts it
LAUNCHER_GRACE_S = 3  # a launcher that took the signal itself stops its workers and exits within it


def pass_on(signum: int) -> None:
    """To DeepSpeed's per-node launcher (this runner's child), which stops the workers on it. Before that launcher
    has started (the runner's own probes, numactl or ssh, may be its children then), no worker runs: the runner
    stops here, and main says so."""
    import psutil  # DeepSpeed's own dependency: its launcher stops the workers with it

    launchers = []
    for child in psutil.Process().children():
        try:
            if NODE_LAUNCHER in " ".join(child.cmdline()):
                launchers.append(child)
        except psutil.Error:  # finished meanwhile
            continue
    if not launchers:
        raise SystemExit(128 + signum)
    # Signalled with the whole job (scancel, killpg), the launcher stops by itself: a second signal would reach
    # its exit (a traceback). Signalled alone, this runner passes it on once the launcher is seen running on.
    deadline = time.monotonic() + LAUNCHER_GRACE_S
    while time.monotonic() < deadline and any(running(launcher) for launcher in launchers):
        time.sleep(0.1)
    for launcher in launchers:
        if running(launcher):
            try:
                launcher.send_signal(signum)
            except psutil.NoSuchProcess:
                pass


def running(process) -> bool:
    """Alive and not yet a zombie (reaping it here would take its exit code from DeepSpeed's runner)."""
    import psutil

    try:
        return process.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


if __name__ == "__main__":
    sys.exit(main())

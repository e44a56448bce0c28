"""DeepSpeed's runner (the scripts' LAUNCHER=deepspeed and HOSTFILE runs), minus the traceback it prints on Ctrl-C.

On one node the runner waits for DeepSpeed's per-node launcher, which takes the same Ctrl-C and stops the workers;
the runner itself died with a KeyboardInterrupt traceback. Here it waits for that launcher to finish (a second
Ctrl-C stops waiting), then the first process to take the Ctrl-C, a worker with the run's step or this runner,
has printed one line (training/launcher_stops.py), and the runner ends by SIGINT (utils/errors.py). Across nodes
(pdsh) DeepSpeed's runner handles the signal itself. Everything else is DeepSpeed's own: same flags, same behaviour.
"""
from __future__ import annotations

import signal
import sys

from ..utils.errors import first_to_report_interrupt, leave_as_interrupted
from .launcher_stops import interrupt_claims, stopped


def main(argv: list[str] | None = None) -> int:
    from deepspeed.launcher.runner import main as run, parse_args

    argv = sys.argv[1:] if argv is None else argv
    interrupted: list[int] = []

    def wait_for_the_workers(signum, frame) -> None:
        interrupted.append(signum)
        signal.signal(signal.SIGINT, signal.default_int_handler)  # a second Ctrl-C stops waiting

    with interrupt_claims():
        if signal.getsignal(signal.SIGINT) is signal.default_int_handler:  # not when started with it ignored
            signal.signal(signal.SIGINT, wait_for_the_workers)
        try:
            run(argv)
        except (KeyboardInterrupt, SystemExit):  # DeepSpeed's launcher exits with 1 once it stopped the workers
            if not interrupted:
                raise
        if interrupted:
            if first_to_report_interrupt():
                print(f"\n{stopped(parse_args(argv).user_args, signal.SIGINT)}", file=sys.stderr)
            leave_as_interrupted()
    return 0


if __name__ == "__main__":
    sys.exit(main())

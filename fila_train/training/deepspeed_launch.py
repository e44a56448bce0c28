"""DeepSpeed's runner (the scripts' LAUNCHER=deepspeed and HOSTFILE runs), minus the traceback it prints on Ctrl-C.

On one node the runner waits for DeepSpeed's per-node launcher, which kills the workers on Ctrl-C; the runner
itself then died with a KeyboardInterrupt traceback. Here the first process to take the Ctrl-C, a worker with the
run's step or this runner, prints one line (training/launcher_stops.py) and the exit code is 130. Everything else
is DeepSpeed's own: same flags, same behaviour.
"""
from __future__ import annotations

import signal
import sys

from ..utils.errors import INTERRUPTED_EXIT_CODE, first_to_report_interrupt
from .launcher_stops import interrupt_claims, stopped


def main(argv: list[str] | None = None) -> int:
    from deepspeed.launcher.runner import main as run, parse_args

    argv = sys.argv[1:] if argv is None else argv
    with interrupt_claims():
        try:
            run(argv)
        except KeyboardInterrupt:
            if first_to_report_interrupt():
                print(f"\n{stopped(parse_args(argv).user_args, signal.SIGINT)}", file=sys.stderr)
            return INTERRUPTED_EXIT_CODE
    return 0


if __name__ == "__main__":
    sys.exit(main())

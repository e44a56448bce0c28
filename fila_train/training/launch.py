"""torchrun for the launcher scripts, minus the wall it prints when a worker fails.

A worker that has something to say prints one line (utils/errors.py) and exits with code 1; the others
exit quietly. torchrun would then add the ChildFailedError traceback and failure table; here the
launcher exits with code 1 and adds nothing, or, when no worker printed (all stopped on a peer's
failure, or one was killed by a signal), prints one line: the first failed worker's own, left in
torchrun's error file, or how it died. Node launchers that do not meet (a node that never started) give
one line too, instead of the agent's traceback, and so does a signal that stops the launcher (SIGTERM from a
scheduler; Ctrl-C when no worker could report it). Everything else is torchrun's own: same flags, same behaviour.
"""
from __future__ import annotations

import logging
import os
import signal
import sys

from ..utils.errors import (REPORTED_EXIT_CODE, SILENT_EXIT_CODE, launcher_reports_interrupt, leave_as_interrupted,
                            read_launcher_record)
from .launcher_stops import interrupt_claims, stopped

# torchrun's agent logs this when a signal stops it; the line below (or the workers', for Ctrl-C) says it.
STOP_NOTICE = "death signal, shutting down workers"

CPP_LOG_LEVEL = "TORCH_CPP_LOG_LEVEL"
# torchrun's --signals_to_handle (the signals its agent stops the workers on) as its environment gives it.
AGENT_SIGNALS = "PET_SIGNALS_TO_HANDLE"


def describe(exitcode: int) -> str:
    if exitcode < 0:
        try:
            return f"was killed by {signal.Signals(-exitcode).name}"
        except ValueError:
            return f"was killed by signal {-exitcode}"
    return f"exited with code {exitcode}"


def rendezvous_failure(args, error: Exception) -> str:
    """One line for a rendezvous of the node launchers that failed (before any worker started)."""
    from torch.distributed.run import get_rdzv_endpoint, parse_min_max_nnodes

    endpoint, (_, nodes) = get_rdzv_endpoint(args), parse_min_max_nnodes(args.nnodes)
    torch_says = " ".join(str(error).split()) or type(error).__name__
    if "EADDRINUSE" in torch_says or "address already in use" in torch_says.lower():
        return f"[fila-train] error: {endpoint} is taken (another run on this machine?): set MASTER_PORT ({torch_says})"
    hint = (": start the launcher on every node, with the same NNODES, MASTER_ADDR and MASTER_PORT"
            if nodes > 1 else "")
    return f"[fila-train] error: the launchers of {nodes} node(s) did not meet at {endpoint} ({torch_says}){hint}"


def main(argv: list[str] | None = None) -> int:
    # c10d's C++ logs a stack-frame wall while a launcher retries the store of another node; read when torch
    # loads, so set before the import and put back for the workers (theirs keep NCCL's warnings).
    user_level = os.environ.get(CPP_LOG_LEVEL)
    os.environ[CPP_LOG_LEVEL] = "FATAL"
    from torch.distributed.run import parse_args

    if user_level is None:
        del os.environ[CPP_LOG_LEVEL]
    else:
        os.environ[CPP_LOG_LEVEL] = user_level
    if "LOGLEVEL" not in os.environ:  # torchrun's own switch for its logs: left to the user when set
        # When a worker fails, this logger adds "Sending process N closing signal SIGTERM" and "failed
        # (exitcode: 2) local_rank: 0 ..." after the worker's own line; a silent failure gets ours below.
        logging.getLogger("torch.distributed.elastic.multiprocessing.api").setLevel(logging.CRITICAL)
        logging.getLogger("torch.distributed.elastic.agent.server.api").addFilter(
            lambda record: STOP_NOTICE not in record.getMessage())

    if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:  # started with Ctrl-C ignored (a script's background
        os.environ.setdefault(AGENT_SIGNALS, "SIGTERM,SIGHUP,SIGQUIT")  # job): torchrun's agent would stop on it
    args = parse_args(sys.argv[1:] if argv is None else argv)
    with interrupt_claims():
        code = launched(args)
    if code == 128 + signal.SIGINT:  # its line is printed (or a worker's): end by the signal, outside the claims
        leave_as_interrupted()
    return code


def launched(args) -> int:
    """torchrun's run, its failures as one line (see the module doc); the exit code."""
    from torch.distributed import DistError
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.elastic.rendezvous import RendezvousError
    from torch.distributed.run import run

    try:
        run(args)
    except SignalException as stop:  # torchrun has passed the signal on to its workers and waited for them
        # Ctrl-C: unless a worker reported it (one blocked in a collective until torchrun killed it cannot).
        if stop.sigval != signal.SIGINT or launcher_reports_interrupt():
            # On a line of its own: a worker stopped by the signal leaves its progress bar's line open.
            print(f"\n{stopped(args.training_script_args, stop.sigval)}", file=sys.stderr)
        return 128 + stop.sigval  # as a shell reports it (main ends by SIGINT itself)
    except (DistError, RendezvousError) as error:  # this agent's, before any worker: meeting the other nodes
        print(rendezvous_failure(args, error), file=sys.stderr)
        return REPORTED_EXIT_CODE
    except ChildFailedError as error:
        failures = error.failures.values()
        if any(failure.exitcode == REPORTED_EXIT_CODE or read_launcher_record(failure.error_file_data)[1]
               for failure in failures):
            return REPORTED_EXIT_CODE  # a rank printed its line (and may have been stopped by torchrun since)
        rank, failure = error.get_first_failure()
        line, _ = read_launcher_record(failure.error_file_data)
        if failure.exitcode == SILENT_EXIT_CODE and line:
            print(line, file=sys.stderr)
        else:
            print(f"[fila-train] error: rank {rank} {describe(failure.exitcode)} (its output is above)",
                  file=sys.stderr)
        return REPORTED_EXIT_CODE
    return 0


if __name__ == "__main__":
    sys.exit(main())

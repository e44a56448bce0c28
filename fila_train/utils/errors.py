"""The error hierarchy, and one report per error from the process that has something to say.

A user's error is a FilaError (or the file system's OSError): one line, exit code 1. A configuration error
is the same on every rank, so only rank 0 prints it; a bad record is met by one rank, which prints it; a
LaunchError (processes that never met) is printed once per node, since rank 0 may be the one missing. Any
other exception is a bug (or out of memory): the rank that hit it prints its traceback. A rank that only
stopped because a peer failed (a torch.distributed error) prints nothing: it exits with SILENT_EXIT_CODE
and leaves its one line in torchrun's error file, which the launcher (training/launch.py) prints when no
rank printed anything. Every traceback is also stored in a file (FILA_TRAIN_DEBUG=1 prints it instead: the
error propagates, so Python prints its traceback and exits with 1). Ctrl-C is one line per node, and the process
ends by SIGINT, as a Python program that does not catch Ctrl-C does (a shell reports 130; a calling script stops):
torchrun passes it on to each worker, the first worker of the node to take it prints (with the run's step and
checkpoint when training), and the launcher prints a line of its own when none could (a worker blocked in a
collective until torchrun kills it).
"""
from __future__ import annotations

import json
import os
import signal
import sys
import threading
import tempfile
import time
import traceback
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import NoReturn

DEBUG_ENV = "FILA_TRAIN_DEBUG"
REPORTED_EXIT_CODE = 1  # the error is on the terminal already
SILENT_EXIT_CODE = 3  # this rank printed nothing; its line is in torchrun's error file
# A file the launcher names for its workers: created by the first of them to report a Ctrl-C.
INTERRUPT_REPORTED_ENV = "FILA_TRAIN_INTERRUPT_REPORTED"


class FilaError(Exception):
    """Something the user can fix. Its message is the whole story: one line naming the flag, file, record or
    field. The CLIs print it as one line and exit with 1; any other exception is a bug and keeps its traceback."""


class ConfigError(FilaError, ValueError):
    """A flag, option, config file or combination of them that cannot work; found before any weights load
    wherever the check needs no weights."""


class DataError(FilaError, ValueError):
    """A data file (annotations, mixture source, benchmark) that cannot be read as a whole."""


class DataRecordError(DataError):
    """One record that cannot be used. ``kind`` counts it under --on_bad_sample skip."""

    kind = "invalid_record"

    def __init__(self, message: str, kind: str | None = None):
        super().__init__(message)
        if kind is not None:
            self.kind = kind


class CheckpointError(FilaError, ValueError):
    """A checkpoint, model folder or stage-1 artifact that is incomplete or does not fit the model."""


class NonFiniteLossError(FilaError):
    """A training loss that is NaN or infinite: a diverged run, non-finite weights or a record that breaks the model."""


class NonFiniteGradientError(FilaError):
    """Gradients that are NaN or infinite under a finite loss: DeepSpeed skipped the step, and would skip the next."""


class LaunchError(FilaError):
    """Processes that cannot form their group: a rank that never started, a wrong address or port."""


class ExportError(FilaError, ValueError):
    """An export that cannot be written as asked."""


class Interrupted(KeyboardInterrupt):
    """Ctrl-C, with what the command had done: a training run names its step and the checkpoint to resume from."""


# Errors a user can cause: ours, and the file system's (their message names the path).
USER_ERRORS = (FilaError, OSError)


class ReportedExit(SystemExit):
    """Raised once the error has been printed (and its traceback stored)."""


def debugging() -> bool:
    """FILA_TRAIN_DEBUG=1: let every error propagate with its traceback, a FilaError included."""
    return os.environ.get(DEBUG_ENV, "0") not in ("", "0")


def process_rank() -> int:
    return int(os.environ.get("RANK", "0"))


def local_rank() -> int:
    return int(os.environ.get("LOCAL_RANK", process_rank()))


def rank_label() -> str:
    """The " [rank N]" of a line from one process of several; empty for a single process."""
    return f" [rank {process_rank()}]" if int(os.environ.get("WORLD_SIZE", "1")) > 1 else ""


def is_peer_failure(error: BaseException) -> bool:
    """A collective that failed because another rank stopped (gloo/NCCL report it as Dist*Error)."""
    if isinstance(error, FilaError):  # ours: its message may quote torch's, it is still a user's error
        return False
    return any(cls.__module__.startswith("torch.distributed") for cls in type(error).__mro__[:-2]) or \
        "Connection closed by peer" in str(error)


def is_record_error(error: BaseException) -> bool:
    """Met by the one rank that read the record."""
    return isinstance(error, DataRecordError)


def should_print(error: BaseException, rank: int, world_size: int, local_rank: int) -> bool:
    if world_size == 1:
        return True
    if is_peer_failure(error):
        return False
    if isinstance(error, LaunchError):  # one line per node: rank 0 may be the process that never came
        return local_rank == 0
    return rank == 0 or is_record_error(error) or not isinstance(error, USER_ERRORS)


def leave_for_launcher(line: str, stored: Path | None, printed: bool) -> None:
    """The line in torchrun's per-worker error file (the format its ProcessFailure reads), and whether this rank
    printed it: torchrun may stop a rank by a signal after it printed, so its exit code cannot tell."""
    path = os.environ.get("TORCHELASTIC_ERROR_FILE")
    if path:
        record = {"message": {"message": line, "extraInfo": {"py_callstack": str(stored or ""), "printed": printed,
                                                              "timestamp": str(int(time.time()))}}}
        Path(path).write_text(json.dumps(record))


def read_launcher_record(error_file_data: dict) -> tuple[str | None, bool]:
    """(the line, whether its rank printed it) from a worker's error file as torchrun read it (a record of
    torch's @record has the same shape: a line no rank printed); (None, False) for anything else."""
    record = error_file_data.get("message")
    if not isinstance(record, dict) or not isinstance(record.get("message"), str):
        return None, False
    extra = record.get("extraInfo")
    return record["message"], isinstance(extra, dict) and extra.get("printed") is True


# How torch's DataLoader re-raises an error from a worker process: the worker's traceback is the message.
WORKER_TRACEBACK = "Original Traceback (most recent call last):"


def message_of(error: BaseException) -> str:
    text = str(error)
    if WORKER_TRACEBACK in text:  # the original message ends the traceback, after "module.Class: " (all its lines)
        kind = type(error)
        name = kind.__qualname__ if kind.__module__ == "builtins" else f"{kind.__module__}.{kind.__qualname__}"
        at = text.rfind(f"\n{name}: ")
        text = text[at + len(name) + 3:] if at >= 0 else text.rstrip().splitlines()[-1]
    return text


def one_line(error: BaseException) -> str:
    text = " ".join(message_of(error).split()) or type(error).__name__
    return text if isinstance(error, USER_ERRORS) else f"{type(error).__name__}: {text}"


def store_traceback(error: BaseException, folder: str | Path | None, rank: int) -> Path:
    folder = Path(folder) if folder else Path(tempfile.gettempdir())
    try:
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"error-rank{rank}.txt"
        path.write_text("".join(traceback.format_exception(error)))
    except OSError:
        path = Path(tempfile.gettempdir()) / f"fila-train-error-rank{rank}-{os.getpid()}.txt"
        path.write_text("".join(traceback.format_exception(error)))
    return path


def interrupt_once(signum, frame) -> None:
    """Ctrl-C as KeyboardInterrupt, once: a second Ctrl-C would interrupt the report, or the exit after it, with
    a traceback. (A process that hangs on its way out is torchrun's to kill, or Ctrl-\\.)"""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    raise KeyboardInterrupt


def first_to_report_interrupt() -> bool:
    """Under our launcher, the node's first worker to claim its file; otherwise the node's first process."""
    claim = os.environ.get(INTERRUPT_REPORTED_ENV)
    if not claim:
        return local_rank() == 0
    try:
        os.close(os.open(claim, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
    except OSError:  # taken; or its folder is gone, with the launcher that printed the line
        return False
    return True


PRINTED_SUFFIX = ".printed"  # beside the claim file: its claimant's line is out
CLAIMANT_GRACE_S = 2.0  # how long a launcher waits for a claimant still alive to print its line


def interrupt_printed() -> None:
    """After a worker that claimed the interrupt printed its line: the launcher must not print its own."""
    claim = os.environ.get(INTERRUPT_REPORTED_ENV)
    if claim:
        try:
            Path(claim + PRINTED_SUFFIX).touch()
        except OSError:  # its folder is gone, with the launcher
            pass


def launcher_reports_interrupt() -> bool:
    """For a launcher once its workers were stopped: whether the interrupt's line is still to be printed. It is
    when no worker claimed it, and when the worker that did died before its line was out (DeepSpeed's launcher
    kills the workers at once: before, the run then ended without a line)."""
    claim = os.environ.get(INTERRUPT_REPORTED_ENV)
    if first_to_report_interrupt():
        return True
    if not claim:
        return False
    printed = Path(claim + PRINTED_SUFFIX)
    deadline = time.monotonic() + CLAIMANT_GRACE_S
    while not printed.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    return not printed.exists()


# Set on the KeyboardInterrupt that ends a process whose line is printed: the traceback hook passes it over.
REPORTED_MARK = "fila_train_reported"


def leave_as_interrupted() -> NoReturn:
    """End the process as Ctrl-C ends a Python program, its line printed already: a KeyboardInterrupt that reaches
    the interpreter runs the usual clean-up (atexit: wandb, logging), then ends the process by SIGINT. A calling
    shell script stops with it; it goes on after a child that exits with a code, 130 included. No traceback.
    Its traceback hook puts itself back once it has run."""
    previous = sys.excepthook

    def without_traceback(kind, value, trace) -> None:
        sys.excepthook = previous  # called once, at the interpreter's exit
        if not getattr(value, REPORTED_MARK, False):
            previous(kind, value, trace)

    sys.excepthook = without_traceback
    stop = KeyboardInterrupt()  # exactly KeyboardInterrupt: Python ends by SIGINT for no subclass
    setattr(stop, REPORTED_MARK, True)
    raise stop


def end_by_sigint_after_an_interrupt() -> None:
    """For atexit, registered before any library's, so it runs after theirs: Python ends a process whose
    KeyboardInterrupt went unhandled by SIGINT, but once torch._dynamo is imported (transformers' tokenizers import
    it) the process exits with code 1 instead, and a calling script goes on to its next command."""
    if type(getattr(sys, "last_value", None)) is KeyboardInterrupt:
        for stream in (sys.stdout, sys.stderr):
            stream.flush()
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        os.kill(os.getpid(), signal.SIGINT)


@contextmanager
def reported_interrupt(command: str) -> Iterator[None]:
    """Ctrl-C as one line per node, then the process ends by SIGINT (see the module doc)."""
    # Only where Python's own handler is: a process started with Ctrl-C ignored (a script's background job) keeps
    # ignoring it, as Python leaves it; SIG_IGN and handlers from elsewhere are not Python's default.
    pythons = (threading.current_thread() is threading.main_thread()
               and signal.getsignal(signal.SIGINT) is signal.default_int_handler)
    previous = signal.signal(signal.SIGINT, interrupt_once) if pythons else None
    interrupted = False
    try:
        yield
    except KeyboardInterrupt as interrupt:
        interrupted = True  # SIGINT stays ignored: the process is on its way out
        if debugging():  # its traceback, and still the end by SIGINT (no subclass has it)
            raise KeyboardInterrupt(str(interrupt)) from interrupt
        line = f"{command}{rank_label()}: {str(interrupt) or 'interrupted'}"
        printed = first_to_report_interrupt()
        if printed:  # on a line of its own: rank 0's progress bar may still hold the line
            print(("\n" if process_rank() else "") + line, file=sys.stderr, flush=True)
            interrupt_printed()
        leave_for_launcher(line, None, printed)
    finally:
        if previous is not None and not interrupted:
            signal.signal(signal.SIGINT, previous)
    if interrupted:
        leave_as_interrupted()


class Terminated(BaseException):
    """SIGTERM raised where the process is, so that its clean-ups run (a half-written output is removed)."""


@contextmanager
def reported_termination(command: str) -> Iterator[None]:
    """SIGTERM (a job's time limit, ``timeout``, ``kill``) as one line once the command's clean-ups ran, then the
    end by SIGTERM, as its sender expects. Before, SIGTERM's default action left a converter's temporary output
    behind. Only where that default is in place: a process that set or ignores SIGTERM keeps its own."""
    if (threading.current_thread() is not threading.main_thread()
            or signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL):
        yield
        return

    owner = os.getpid()

    def terminate(signum, frame) -> None:
        if os.getpid() != owner:  # a forked child that kept the handler: SIGTERM's default for it
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            os.kill(os.getpid(), signal.SIGTERM)
            return
        signal.signal(signal.SIGTERM, signal.SIG_IGN)  # a second SIGTERM must not interrupt the clean-ups
        raise Terminated

    signal.signal(signal.SIGTERM, terminate)
    try:
        yield
    except Terminated:
        print(f"{command}: terminated (SIGTERM)", file=sys.stderr, flush=True)
        sys.stdout.flush()
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        os.kill(os.getpid(), signal.SIGTERM)
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)


@contextmanager
def one_line_errors(command: str, log_folder: str | Path | None = None) -> Iterator[None]:
    """Turn a user's error into one line on stderr (see the module doc) and ReportedExit(1); a bug prints its
    traceback above that line. (Ctrl-C: reported_interrupt, around every command.)"""
    try:
        yield
    except (KeyboardInterrupt, SystemExit):
        raise
    except Exception as error:
        if debugging():
            raise
        rank, world_size = process_rank(), int(os.environ.get("WORLD_SIZE", "1"))
        stored = store_traceback(error, log_folder, rank)
        bug = not isinstance(error, USER_ERRORS) and not is_peer_failure(error)
        detail = "" if isinstance(error, USER_ERRORS) else f" (traceback in {stored})"
        line = f"{command}{rank_label()}: error: {one_line(error)}{detail}"
        if should_print(error, rank, world_size, local_rank()):
            if bug:  # what a bug report needs
                sys.stderr.write("".join(traceback.format_exception(error)))
            print(line, file=sys.stderr, flush=True)
            leave_for_launcher(line, stored, printed=True)
            raise ReportedExit(REPORTED_EXIT_CODE) from None
        leave_for_launcher(line, stored, printed=False)
        raise ReportedExit(SILENT_EXIT_CODE) from None

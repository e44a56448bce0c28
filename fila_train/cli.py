"""``fila-train``: one console command, one subcommand per job."""
from __future__ import annotations

import atexit
import importlib
import sys
from contextlib import nullcontext

from .utils.errors import (FilaError, debugging, end_by_sigint_after_an_interrupt, reported_interrupt,
                           reported_termination)

# Subcommand -> ("module:function", one-line help). Modules are imported only when their
# command runs, so `fila-train generate` does not pay for DeepSpeed and friends.
COMMANDS: dict[str, tuple[str, str]] = {
    "train": ("fila_train.training.cli:main", "run stage 1 or stage 2 training (HF TrainingArguments-style flags)"),
    "data": ("fila_train.data.cli:main", "convert datasets, inspect a mixture, make the probe (data convert|inspect|probe)"),
    "export": ("fila_train.export.cli:main", "write one merged, self-contained checkpoint folder"),
    "generate": ("fila_train.inference.cli:main", "answer a prompt about an image with a checkpoint"),
    "eval": ("fila_train.evaluation.cli:main", "score a checkpoint on a benchmark file (vqa, anls, relaxed, exact)"),
    "bench": ("fila_train.bench.cli:main", "measure step time, tokens/s, MFU and memory (or the data pipeline)"),
    "demo": ("fila_train.demo.cli:main", "build the synthetic demo dataset and tiny models (used by scripts/demo.sh)"),
    "ablate": ("fila_train.ablation.cli:main", "FILA's ablation: anyres vs FILA's fusions on the fragmentation probe"),
}

# Single-process commands whose clean-ups must run on SIGTERM too. Training keeps SIGTERM's default: its launcher
# stops the workers with it and reports the stop (training/launch.py), and bench / ablate / demo wait on runs.
CLEAN_UP_ON_SIGTERM = frozenset({"data", "export", "generate", "eval"})


def usage() -> str:
    width = max(map(len, COMMANDS))
    lines = [f"  {name:<{width}}  {text}" for name, (_, text) in COMMANDS.items()]
    return "usage: fila-train <command> [options]\n\ncommands:\n" + "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help"):
        print(usage())
        return 0
    command, rest = argv[0], argv[1:]
    if command not in COMMANDS:
        print(f"fila-train: unknown command {command!r}\n\n{usage()}", file=sys.stderr)
        return 2
    # First, so that it runs last: before the imports below, which register clean-ups of their own (multiprocessing
    # removes its workers' temp folder at exit, logging flushes its files) that must still run after Ctrl-C.
    atexit.register(end_by_sigint_after_an_interrupt)
    from .utils.processes import die_with_launcher
    from .utils.quiet import known_noise_silenced

    die_with_launcher()  # before the slow imports: a launcher killed meanwhile is noticed at once
    module_name, _, function = COMMANDS[command][0].partition(":")
    try:  # Ctrl-C is one line from the start, the imports included (20 s before training begins)
        with (reported_interrupt(f"fila-train {command}"), known_noise_silenced(),  # some noise comes from importing
              reported_termination(f"fila-train {command}") if command in CLEAN_UP_ON_SIGTERM else nullcontext()):
            return getattr(importlib.import_module(module_name), function)(rest)
    except FilaError as error:  # the user's to fix, and its message says how; anything else keeps its traceback
        if debugging():  # asked for the traceback: Python prints it and exits with 1
            raise
        print(f"fila-train {command}: error: {' '.join(str(error).split())}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())

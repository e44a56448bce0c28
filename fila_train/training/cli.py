"""``fila-train train``: the preflight checks first (no heavy import), then the run; errors as one line."""
from __future__ import annotations

import sys

from ..utils.errors import one_line_errors
from .preflight import output_dir_of, preflight


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    with one_line_errors("fila-train train", output_dir_of(argv)):
        preflight(argv)
        from .train import main as run_training  # torch, transformers, DeepSpeed: ~20 s

        return run_training(argv)

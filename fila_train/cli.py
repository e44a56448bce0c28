"""``fila-train``: one console command, one subcommand per job."""
from __future__ import annotations

import sys

USAGE = """usage: fila-train <command> [options]

commands:
  train     run stage 1 or stage 2 training (HF TrainingArguments-style flags)
  demo      build the synthetic demo dataset and tiny models (used by scripts/demo.sh)
"""


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help"):
        print(USAGE)
        return 0
    command, rest = argv[0], argv[1:]
    if command == "train":
        from .training.train import main as train_main
        return train_main(rest)
    if command == "demo":
        from .demo.cli import main as demo_main
        return demo_main(rest)
    print(f"fila-train: unknown command {command!r}\n\n{USAGE}", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())

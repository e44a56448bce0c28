"""``fila-train ablate run|report``: FILA's ablation on the fragmentation probe (see docs/ablation.md)."""
from __future__ import annotations

import argparse
import logging
import os
from pathlib import Path

from ..utils.argument_parser import StrictParser
from .config import VARIANTS, load_config


def _overrides(args: argparse.Namespace) -> dict:
    return {key: value for key, value in (("output", args.output), ("variants", args.variants),
                                          ("seeds", args.seeds), ("report_to", args.report_to),
                                          ("name", args.name)) if value is not None}


def log_to_wandb(results: dict, output: Path) -> None:
    """One summary run in the ablation's wandb group: the table and the chart beside the training runs."""
    import wandb

    run = wandb.init(project=os.environ.get("WANDB_PROJECT", "fila-train-ablation"), group=results["name"],
                     name=f"{results['name']}-results", job_type="ablation-report", dir=str(output),
                     mode=os.environ.get("WANDB_MODE", "offline"), config=results["recipe"])
    table = wandb.Table(columns=["variant", "seed", "fragmented", "control"],
                        data=[[r["variant"], r["seed"], r["fragmented"], r["control"]] for r in results["runs"]])
    run.log({"results": table, "chart": wandb.Image(str(output / "results.png"))})
    run.summary.update({"verdict": results["verdict"]})
    run.finish()


def main(argv: list[str]) -> int:
    parser = StrictParser(prog="fila-train ablate", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    for name, text in (("run", "prepare models and probe, train and evaluate every variant and seed, then report"),
                       ("report", "write the table and chart from finished runs")):
        command = commands.add_parser(name, help=text)
        command.add_argument("--config", type=Path, help="YAML overriding the tiny CPU defaults "
                                                         "(e.g. configs/ablation/fila7b.yaml)")
        command.add_argument("--output", help="the ablation folder (default: playground/ablation)")
        command.add_argument("--name", help="the ablation's name and wandb group")
        command.add_argument("--variants", nargs="+", help=f"of {', '.join(VARIANTS)}, each optionally +mmfuser")
        command.add_argument("--seeds", nargs="+", type=int)
        command.add_argument("--report_to", choices=("wandb", "none"))
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    config = load_config(args.config, _overrides(args))
    from .report import write_report
    from .runner import plans, run_ablation

    done = run_ablation(config) if args.command == "run" else plans(config, Path(config.output))
    results = write_report(config, done)
    if config.report_to == "wandb":
        log_to_wandb(results, Path(config.output))
    print((Path(config.output) / "results.md").read_text(), end="")
    print(f"written: {config.output}/results.md, results.json, results.png")
    return 0

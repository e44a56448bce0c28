"""The ablation's results: one table (markdown + JSON) and one bar chart with the seed-to-seed spread.

The verdict is the issue's question, asked of the numbers: does FILA (concat) beat the crop-only anyres encoder
on the fragmented split by more than the seed-to-seed spread, without doing worse on the control split?
"""
from __future__ import annotations

import json
import statistics
from pathlib import Path

from ..data.probe import SPLITS
from ..utils.errors import DataError
from ..utils.files import write_json_atomic, write_text_atomic
from .config import AblationConfig
from .runner import RunPlan, check_finished_steps

BASELINE, CANDIDATE = "anyres", "fila_concat"


def _score(plan: RunPlan, split: str) -> float:
    path = plan.eval_dir(split) / "score.json"
    if not path.is_file():
        raise DataError(f"{plan.label}: no score for the {split} split ({path} is missing): run the ablation first")
    return json.loads(path.read_text())["score"]


def _spread(values: list[float]) -> dict[str, float]:
    return {"mean": statistics.fmean(values), "std": statistics.pstdev(values), "min": min(values),
            "max": max(values), "range": max(values) - min(values), "seeds": len(values)}


def _check_finished(plan: RunPlan) -> None:
    """A run's every step has left its file: else one line naming the run and the step, not a FileNotFoundError."""
    for step in ("stage1", "stage2", "eval"):
        if not plan.done(step).is_file():
            raise DataError(f"{plan.label} has not finished: its {step} step left no {plan.done(step)}; run "
                            f"`fila-train ablate run` with the same --config, --output, --variants and --seeds first")


def collect(config: AblationConfig, plans: list[RunPlan]) -> dict:
    check_finished_steps(plans, config)  # the recipe reported below is the one every run was made with
    runs = []
    for plan in plans:
        _check_finished(plan)
        stages = {stage: json.loads((plan.stage_dir(stage) / "train_summary.json").read_text()) for stage in (1, 2)}
        runs.append({"variant": plan.variant, "seed": plan.seed, **{split: _score(plan, split) for split in SPLITS},
                     **{f"stage{stage}_loss": [summary["loss_first"], summary["loss_last"]]
                        for stage, summary in stages.items()},
                     "train_seconds": sum(summary["seconds"] for summary in stages.values())})
    summary = {variant: {split: _spread([run[split] for run in runs if run["variant"] == variant]) for split in SPLITS}
               for variant in config.variants}
    return {"name": config.name, "metric": "exact", "runs": runs, "summary": summary, "verdict": verdict(summary),
            "recipe": {"stage1": vars(config.stage1), "stage2": vars(config.stage2), "seeds": config.seeds,
                       "probe": vars(config.probe), "models": config.models or "tiny (fila-train demo prepare)"}}


def verdict(summary: dict) -> dict | None:
    """FILA concat vs anyres: the margin of the means against the larger seed range of the two."""
    if BASELINE not in summary or CANDIDATE not in summary:
        return None
    result = {}
    for split in SPLITS:
        ours, theirs = summary[CANDIDATE][split], summary[BASELINE][split]
        result[split] = {"margin": ours["mean"] - theirs["mean"], "spread": max(ours["range"], theirs["range"])}
    fragmented, control = result["fragmented"], result["control"]
    result["fila_beats_anyres_on_fragmented"] = fragmented["margin"] > fragmented["spread"]
    result["fila_not_worse_on_control"] = control["margin"] >= -control["spread"]
    result["seeds"] = min(summary[CANDIDATE]["fragmented"]["seeds"], summary[BASELINE]["fragmented"]["seeds"])
    return result


def markdown(results: dict) -> str:
    lines = [f"| variant | {' | '.join(f'{split} (mean ± std, min-max)' for split in SPLITS)} | seeds |",
             f"|---|{'---|' * len(SPLITS)}---|"]
    for variant, splits in results["summary"].items():
        cells = [f"{100 * s['mean']:.1f} ± {100 * s['std']:.1f} ({100 * s['min']:.1f}-{100 * s['max']:.1f})"
                 for s in splits.values()]
        lines.append(f"| {variant} | {' | '.join(cells)} | {splits[SPLITS[0]]['seeds']} |")
    found = results["verdict"]
    if found:
        lines += ["", f"FILA (concat) - anyres, fragmented: {100 * found['fragmented']['margin']:+.1f} points against a "
                      f"seed spread of {100 * found['fragmented']['spread']:.1f} "
                      f"({'beats' if found['fila_beats_anyres_on_fragmented'] else 'does not beat'} it); control: "
                      f"{100 * found['control']['margin']:+.1f} against {100 * found['control']['spread']:.1f} "
                      f"({'not worse' if found['fila_not_worse_on_control'] else 'worse'}), over {found['seeds']} seeds."]
    lines += ["", f"Scores: exact match in percent on the held-out probe splits; spread = max - min over seeds."]
    return "\n".join(lines) + "\n"


def bar_chart(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    variants = list(results["summary"])
    width = 0.8 / len(SPLITS)
    figure, axes = plt.subplots(figsize=(1.6 + 1.4 * len(variants), 3.6), dpi=120)
    for index, split in enumerate(SPLITS):
        xs = [position + (index - (len(SPLITS) - 1) / 2) * width for position in range(len(variants))]
        stats = [results["summary"][variant][split] for variant in variants]
        axes.bar(xs, [100 * s["mean"] for s in stats], width, label=split,
                 yerr=[[100 * (s["mean"] - s["min"]) for s in stats], [100 * (s["max"] - s["mean"]) for s in stats]],
                 capsize=3)
        for x, variant in zip(xs, variants):  # every seed as a dot: the spread is visible, not summarised away
            seeds = [100 * run[split] for run in results["runs"] if run["variant"] == variant]
            axes.scatter([x] * len(seeds), seeds, color="black", s=8, zorder=3)
    axes.set_xticks(range(len(variants)), variants, rotation=15)
    axes.set_ylabel("exact match (%)")
    axes.set_ylim(0, 100)
    # Two lines: with two variants the figure is narrow, and one line ran past its edge.
    axes.set_title(f"{results['name']}: probe accuracy\nbars: mean, whiskers: min-max over seeds", fontsize=9)
    axes.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path)
    plt.close(figure)


def write_report(config: AblationConfig, plans: list[RunPlan]) -> dict:
    """results.json, results.md and results.png in the ablation folder; returns the results."""
    output = Path(config.output)
    results = collect(config, plans)
    write_json_atomic(output / "results.json", results)
    write_text_atomic(output / "results.md", markdown(results))
    bar_chart(results, output / "results.png")
    return results

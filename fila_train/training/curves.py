"""curves.png: loss, grad norm, learning rate per part, tokens/s and MFU against steps, from the Trainer's log
history. Written at every checkpoint and at the end of a run, so a run can be looked at without wandb."""
from __future__ import annotations

from pathlib import Path

from ..utils.files import replace_atomically

CURVES_FILE = "curves.png"
PART_LR_PREFIX = "learning_rate/"  # + part name: each part's own rate, logged beside transformers' learning_rate

# (panel title, the log keys it draws: exact names, or a prefix ending in "/"); MFU in percent.
PANELS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("loss", ("loss",)),
    ("grad norm", ("grad_norm",)),
    ("learning rate by part", (PART_LR_PREFIX,)),
    ("tokens/s (all ranks)", ("tokens_per_second",)),
    ("MFU (%)", ("mfu",)),
    ("peak memory (GiB)", ("peak_memory_gib",)),
)
COLUMNS = 3
MISSING = {"MFU (%)": "not logged: MFU needs a known GPU or --peak_tflops"}


def series(log_history: list[dict], key: str) -> dict[str, tuple[list[int], list[float]]]:
    """Log key (or prefix ending in '/') -> {name: (steps, values)} over the training log entries."""
    found: dict[str, tuple[list[int], list[float]]] = {}
    for entry in log_history:
        if "step" not in entry or "train_runtime" in entry:  # the end-of-run totals are not a step
            continue
        for name, value in entry.items():
            if (name == key or (key.endswith("/") and name.startswith(key))) and isinstance(value, (int, float)):
                steps, values = found.setdefault(name.removeprefix(key) if key.endswith("/") else name, ([], []))
                steps.append(entry["step"])
                values.append(100 * value if name == "mfu" else value)
    return found


def write_curves(log_history: list[dict], path: Path, title: str) -> Path:
    """One figure, a panel per PANELS entry, written atomically to ``path``."""
    from matplotlib.figure import Figure  # no pyplot: no global figure state, no GUI backend

    rows = -(-len(PANELS) // COLUMNS)
    figure = Figure(figsize=(4.2 * COLUMNS, 3.0 * rows + 0.4), dpi=100)
    axes = figure.subplots(rows, COLUMNS, squeeze=False).flatten()
    for ax in axes[len(PANELS):]:
        ax.set_visible(False)
    for ax, (panel, keys) in zip(axes, PANELS):
        lines = {name: data for key in keys for name, data in series(log_history, key).items()}
        for name, (steps, values) in lines.items():
            ax.plot(steps, values, label=name, linewidth=1.2, marker="." if len(steps) < 30 else None)
        if len(lines) > 1:
            ax.legend(fontsize=7)
        if not lines:
            ax.text(0.5, 0.5, MISSING.get(panel, "not logged"), ha="center", va="center", fontsize=8,
                    transform=ax.transAxes, wrap=True)
        ax.set_title(panel, fontsize=10)
        ax.set_xlabel("step", fontsize=8)
        ax.tick_params(labelsize=7)
    figure.suptitle(title, fontsize=10)
    figure.tight_layout()
    replace_atomically(Path(path), lambda temporary: figure.savefig(temporary, format="png"))
    return Path(path)

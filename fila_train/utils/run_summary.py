"""A run's summary from its logged history: what train_summary.json holds, and what export's model card reads
back from a checkpoint's trainer_state.json (export needs no training code)."""
from __future__ import annotations

TRAIN_SUMMARY = "train_summary.json"  # written by fila-train train beside its final save


def loss_history(log_history: list[dict]) -> list[float]:
    return [entry["loss"] for entry in log_history if "loss" in entry]


def run_summary(log_history: list[dict], steps: int, seconds: float, tokens_per_second: float) -> dict:
    losses = loss_history(log_history)
    window = max(1, len(losses) // 10)
    return {
        "steps": steps,
        "seconds": round(seconds, 2),
        "losses": losses,
        "loss_first": sum(losses[:window]) / window if losses else None,
        "loss_last": sum(losses[-window:]) / window if losses else None,
        "tokens_per_second": round(tokens_per_second, 2),
    }

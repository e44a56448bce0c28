"""The progress bar with readable logs: one short line every ~5% of the run, not a dict every logging step.

Every logged value still goes to the log history (curves.png, train_summary.json) and to wandb.
"""
from __future__ import annotations

from transformers.trainer_callback import ProgressCallback

LINES_PER_RUN = 20


def format_log_line(step: int, max_steps: int, logs: dict) -> str:
    parts = [f"step {step}/{max_steps}"]
    for key, label, fmt in (("loss", "loss", "{:.4f}"), ("grad_norm", "grad norm", "{:.3g}"),
                            ("learning_rate", "lr", "{:.3g}"), ("tokens_per_second", "tokens/s", "{:,.0f}")):
        if isinstance(logs.get(key), (int, float)):
            parts.append(f"{label} {fmt.format(logs[key])}")
    if isinstance(logs.get("mfu"), (int, float)):
        parts.append(f"MFU {100 * logs['mfu']:.1f}%")
    return " | ".join(parts)


class ReadableProgress(ProgressCallback):
    def __init__(self):
        super().__init__()
        self.last_written = 0

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not state.is_world_process_zero or self.training_bar is None or not logs or "train_runtime" in logs:
            return  # the run's totals are in the summary table at the end
        if "loss" in logs:
            every = max(1, state.max_steps // LINES_PER_RUN)
            if state.global_step - self.last_written < every and state.global_step != state.max_steps \
                    and self.last_written:
                return
            self.last_written = state.global_step
        self.training_bar.write(format_log_line(state.global_step, state.max_steps, logs))

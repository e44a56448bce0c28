"""What the training run left next to the weights, for the model card: summary, trainer state, data plan.

All are optional: a record that is absent is simply not reported. A record that is present but
unreadable is an error naming the file (a model card must not silently drop what it claims).
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

from .errors import ExportError

TRAIN_SUMMARY = "train_summary.json"  # written by fila-train train at the end of a run
TRAINER_STATE = "trainer_state.json"  # HF Trainer, in every checkpoint-N folder
DATA_PLAN = "data_plan.json"  # the run's data mixture (fila_train.training.datasets.PLAN_FILE), in its output folder


@dataclass(frozen=True)
class RunRecords:
    train_summary: dict | None = None
    trainer_state: dict | None = None
    data_plan: dict | None = None
    data_plan_path: Path | None = None


def _read_json(path: Path) -> dict | None:
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise ExportError(f"{path}: invalid JSON ({error})") from None
    if not isinstance(data, dict):
        raise ExportError(f"{path}: expected a JSON object, got {type(data).__name__}")
    return data


def run_folder(folder: Path) -> Path:
    """The training output folder: ``folder`` itself, or its parent for a ``checkpoint-N`` folder."""
    return folder.parent if re.fullmatch(r"checkpoint-\d+", folder.name) else folder


def read_run_records(folder: Path) -> RunRecords:
    """The records of the run ``folder`` belongs to. The data plan is the run's (one per output folder),
    so a checkpoint-N folder reports its parent's; summary and trainer state must be the folder's own."""
    plan_path = run_folder(folder) / DATA_PLAN
    plan = _read_json(plan_path)
    return RunRecords(train_summary=_read_json(folder / TRAIN_SUMMARY),
                      trainer_state=_read_json(folder / TRAINER_STATE),
                      data_plan=plan, data_plan_path=plan_path if plan is not None else None)


def trainer_state_summary(state: dict) -> dict:
    """steps, losses and loss_first/loss_last (means over the first/last 10% of logged steps) of a
    trainer_state.json, computed as train_summary.json computes them."""
    from ..training.reporting import run_summary

    summary = run_summary(state.get("log_history", []), state.get("global_step", 0), 0.0, 0.0)
    return {key: summary[key] for key in ("steps", "losses", "loss_first", "loss_last")}

"""What the training runs left next to the weights, for the model card: summary, trainer state, data plan,
run arguments; and the chain of runs that led to the exported one (stage 1 -> stage 2).

All are optional: a record that is absent is simply not reported. A record that is present but
unreadable is an error naming the file (a model card must not silently drop what it claims).
"""
from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from pathlib import Path

from ..utils.checkpoint_folders import TRAINER_STATE
from ..utils.run_summary import TRAIN_SUMMARY, run_summary
from .errors import ExportError

# In the run's output folder, written when it starts: its data mixture (fila_train.training.datasets.PLAN_FILE)
# and its arguments (fila_train.training.train.RUN_ARGS_FILE). Named here: export imports no training code.
DATA_PLAN = "data_plan.json"
RUN_ARGS = "run_args.json"
MAX_CHAIN = 8  # runs followed back through --pretrained_connector (a guard against a loop of folders)


@dataclass(frozen=True)
class RunRecords:
    folder: Path | None = None  # the folder the records were read for (a run output or a checkpoint-N folder)
    train_summary: dict | None = None
    trainer_state: dict | None = None
    data_plan: dict | None = None
    data_plan_path: Path | None = None
    run_args: dict | None = None
    run_args_path: Path | None = None

    def tune_parts(self) -> list[str] | None:
        for record in (self.train_summary, self.run_args):
            if record is not None and record.get("tune_parts") is not None:
                return list(record["tune_parts"])
        return None

    def progress(self) -> dict | None:
        """``record`` (file name), ``steps``, ``loss_first``, ``loss_last``: from train_summary.json (a
        finished run) or else trainer_state.json (a checkpoint-N folder); None without either."""
        if self.train_summary is not None:
            return {"record": TRAIN_SUMMARY, **{key: self.train_summary.get(key)
                                                for key in ("steps", "loss_first", "loss_last")}}
        if self.trainer_state is not None:
            return {"record": TRAINER_STATE, **trainer_state_summary(self.trainer_state)}
        return None

    def started_from(self) -> Path | None:
        """The stage-1 artifact this run loaded (--pretrained_connector), resolved as the run resolved it."""
        model = (self.run_args or {}).get("model") or {}
        path = model.get("pretrained_connector")
        if not path:
            return None
        if not isinstance(path, str):
            raise ExportError(f"{self.run_args_path}: model.pretrained_connector is {path!r}, not a path")
        return Path(os.path.normpath(Path(self.run_args.get("cwd") or ".") / path))


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
    """The records of the run ``folder`` belongs to. Data plan and arguments are the run's (one per output
    folder), so a checkpoint-N folder reports its parent's; summary and trainer state must be the folder's own."""
    run = run_folder(folder)
    plan_path, args_path = run / DATA_PLAN, run / RUN_ARGS
    plan, run_args = _read_json(plan_path), _read_json(args_path)
    return RunRecords(folder=folder, train_summary=_read_json(folder / TRAIN_SUMMARY),
                      trainer_state=_read_json(folder / TRAINER_STATE),
                      data_plan=plan, data_plan_path=plan_path if plan is not None else None,
                      run_args=run_args, run_args_path=args_path if run_args is not None else None)


@dataclass(frozen=True)
class StageRun:
    """One run of the chain: its records (None when its folder is gone) and, for every run but the
    exported one, the connector artifact the next run started from."""

    records: RunRecords | None
    artifact: Path | None = None

    def stage(self) -> int | None:
        """1 when only connector-side parts were tuned (alignment), 2 when the LLM or the vision tower
        was too, None when the tuned parts are not recorded."""
        parts = self.records.tune_parts() if self.records is not None else None
        if parts is None:
            return None
        from ..model.contracts import aligned_parts

        return 1 if set(parts) <= set(aligned_parts()) else 2


def artifact_folder(artifact: Path) -> Path:
    """The folder holding a --pretrained_connector value: the value itself when it names a folder."""
    return artifact if artifact.is_dir() or artifact.suffix != ".safetensors" else artifact.parent


def read_stage_chain(folder: Path) -> list[StageRun]:
    """The exported run and, following each run's --pretrained_connector back, the runs it started from;
    earliest first, the exported run last."""
    chain = [StageRun(read_run_records(folder))]
    seen = {run_folder(folder).resolve()}
    while len(chain) < MAX_CHAIN and chain[0].records is not None:
        artifact = chain[0].records.started_from()
        if artifact is None:
            break
        source = artifact_folder(artifact)
        run = run_folder(source).resolve()
        if run in seen:
            break
        seen.add(run)
        chain.insert(0, StageRun(read_run_records(source) if source.is_dir() else None, artifact))
    return chain


def trainer_state_summary(state: dict) -> dict:
    """steps, losses and loss_first/loss_last (means over the first/last 10% of logged steps) of a
    trainer_state.json, computed as train_summary.json computes them."""
    summary = run_summary(state.get("log_history", []), state.get("global_step", 0), 0.0, 0.0)
    return {key: summary[key] for key in ("steps", "losses", "loss_first", "loss_last")}

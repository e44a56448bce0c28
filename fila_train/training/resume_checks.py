"""What a resumed run must share with the run it continues, recorded in each checkpoint's manifest.

A checkpoint's step says how many batches to skip. That lands on the right records only with the same
global batch, the same data and the same order; and ZeRO's optimizer state loads only into as many
processes as wrote it. The optimizer, the learning-rate schedule and the trainer state come back with the
checkpoint's own rates, schedule, length and intervals, whatever the resumed run's flags say. Each
difference is refused in one line. What a manifest does not record (one written by an older version) is
not checked.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..utils.errors import CheckpointError
from .checkpoints import read_manifest


@dataclass(frozen=True)
class BatchLayout:
    """How a run splits its global batch: processes x batch per process x accumulation steps (the batch per
    process is HF's train_batch_size: the per-device batch, times the GPUs of a DataParallel process)."""

    world_size: int
    per_process: int
    accumulation: int

    @property
    def global_batch(self) -> int:
        return self.world_size * self.per_process * self.accumulation

    def __str__(self) -> str:
        return (f"{self.global_batch} ({self.world_size} process(es) x {self.per_process} per process x "
                f"{self.accumulation} accumulation step(s))")

    def manifest_fields(self) -> dict:
        return {"world_size": self.world_size, "train_batch_size": self.per_process,
                "gradient_accumulation_steps": self.accumulation}


def digest(*arrays: np.ndarray) -> str:
    sha = hashlib.sha256()
    for array in arrays:
        sha.update(np.ascontiguousarray(array, dtype=np.int64).tobytes())
    return sha.hexdigest()


@dataclass(frozen=True)
class DataOrder:
    """What decides the records of each step: which record index each position of the mixture plan holds (a
    renamed source draws another random subset; the same counts may hold other records), which records the
    files hold at those indices (a reshuffled file of the same size), the sampler's seed and, with modality
    grouping, the lengths it sorts by. Paths are not part of it: moved data is the same."""

    sources: tuple[tuple[str, int, int], ...]  # (name, records, sampled), for the message
    plan_seed: int
    plan_digest: str
    sampler_seed: int
    lengths_digest: str | None  # None: not grouped by modality length
    records_digest: str | None = None  # MixtureDataset.records_fingerprint; None: not recorded (older checkpoints)
    # How positions are drawn: --train_sampling_strategy ("grouped" with --group_by_modality_length), and whether
    # --dataloader_drop_last shortens the epoch (so its steps). None: not recorded (older checkpoints).
    sampling: str | None = None
    drop_last: bool | None = None

    @classmethod
    def of(cls, plan, sampler_seed: int, grouping_lengths: np.ndarray | None,
           records_digest: str | None = None, sampling: str | None = None, drop_last: bool | None = None) -> DataOrder:
        """From a data.mixture.MixturePlan, the modality lengths when the sampler groups by them, the records'
        fingerprint, and the sampling strategy and drop_last."""
        return cls(tuple((s.name, s.records, s.sampled) for s in plan.sources), plan.seed,
                   digest(plan.source_of, plan.record_of), sampler_seed,
                   None if grouping_lengths is None else digest(grouping_lengths), records_digest, sampling, drop_last)

    def differs_from(self, saved: DataOrder) -> bool:
        records = saved.records_digest is not None and self.records_digest != saved.records_digest
        sampling = saved.sampling is not None and (self.sampling, self.drop_last) != (saved.sampling, saved.drop_last)
        return records or sampling or (self.plan_digest, self.sampler_seed, self.lengths_digest) != (
            saved.plan_digest, saved.sampler_seed, saved.lengths_digest)

    def __str__(self) -> str:
        sources = ", ".join(f"{name}: {sampled} of {records} records" for name, records, sampled in self.sources)
        grouping = ("ungrouped" if self.lengths_digest is None
                    else f"grouped by modality length (lengths {self.lengths_digest[:8]})")
        records = f", records {self.records_digest[:8]}" if self.records_digest else ""
        sampling = f", {self.sampling} order" if self.sampling not in (None, "grouped") else ""
        sampling += ", last partial batch dropped" if self.drop_last else ""
        return (f"{sum(sampled for *_, sampled in self.sources)} samples ({sources}; plan seed {self.plan_seed}, "
                f"selection {self.plan_digest[:8]}{records}), sampler seed {self.sampler_seed}, {grouping}{sampling}")

    def manifest_fields(self) -> dict:
        return {"data_order": {"sources": [list(source) for source in self.sources], "plan_seed": self.plan_seed,
                               "plan_digest": self.plan_digest, "sampler_seed": self.sampler_seed,
                               "lengths_digest": self.lengths_digest, "records_digest": self.records_digest,
                               "sampling": self.sampling, "drop_last": self.drop_last}}

    @classmethod
    def from_manifest(cls, manifest: dict) -> DataOrder | None:
        recorded = manifest.get("data_order")
        try:
            lengths = recorded["lengths_digest"]
            return cls(tuple((str(name), int(records), int(sampled)) for name, records, sampled in recorded["sources"]),
                       int(recorded["plan_seed"]), str(recorded["plan_digest"]), int(recorded["sampler_seed"]),
                       None if lengths is None else str(lengths), recorded.get("records_digest"),
                       recorded.get("sampling"), recorded.get("drop_last"))
        except (KeyError, TypeError, ValueError):
            return None


# A run setting -> the flags that set it, for the message.
SETTING_FLAGS = {"learning_rates": "the learning rate by part (--learning_rate, --part_lr, --<part>_lr)",
                 "lora": "LoRA (--lora_r, --lora_alpha, --lora_dropout, --lora_target, --bits)"}


def run_settings(args, lora: dict | None) -> dict:
    """What a checkpoint's optimizer, scheduler and trainer state carry: transformers reloads them on resume, so
    a resumed run with other flags trained on with the checkpoint's values (while logging its own). ``args``:
    the run's TrainingArguments; ``lora``: its LoRA settings (ModelArguments.lora_settings())."""
    def named(value):  # transformers' enums (SchedulerType, OptimizerNames) as their flag value
        return getattr(value, "value", value)

    length = {"max_steps": args.max_steps} if args.max_steps > 0 else {"num_train_epochs": args.num_train_epochs}
    settings = {"tune_parts": sorted(args.parts()),
                "learning_rates": {part: args.part_learning_rate(part) for part in sorted(args.parts())},
                "lr_scheduler_type": named(args.lr_scheduler_type), "lr_scheduler_kwargs": args.lr_scheduler_kwargs or {},
                "warmup_steps": args.warmup_steps, "weight_decay": args.weight_decay, "optim": named(args.optim),
                "adam_beta1": args.adam_beta1, "adam_beta2": args.adam_beta2, "adam_epsilon": args.adam_epsilon,
                **length, "save_steps": args.save_steps, "logging_steps": args.logging_steps, "lora": lora}
    return {"settings": json.loads(json.dumps(settings))}  # as the manifest holds them (tuples as lists)


def check_resume_settings(checkpoint: Path, settings: dict) -> None:
    """Refuse, before any weights load, a resume from a checkpoint without training state (--save_only_model), or
    one whose flags the checkpoint's state would silently override."""
    manifest = read_manifest(checkpoint)
    if manifest.get("save_only_model") is True:  # transformers would go on with a fresh optimizer and schedule
        raise CheckpointError(
            f"--resume_from_checkpoint {checkpoint} was saved with --save_only_model: it holds the weights but no "
            f"optimizer, learning-rate schedule or random state, so no resume continues the run from it; start a new "
            f"run from its weights (--model_name_or_path {checkpoint})")
    saved, current = manifest.get("settings"), settings["settings"]
    if not isinstance(saved, dict):
        return
    # Only what the checkpoint recorded: a setting added by a later version is not checked against it.
    changed = [name for name in sorted(saved) if saved[name] != current.get(name)]
    if changed:
        differences = "; ".join(f"{SETTING_FLAGS.get(name, '--' + name)}: {saved.get(name)} there, "
                                f"{current.get(name)} here" for name in changed)
        raise CheckpointError(
            f"--resume_from_checkpoint {checkpoint} was trained with other settings than this run's ({differences}): "
            f"a resume continues the checkpoint's optimizer, learning-rate schedule and save/log intervals, which come "
            f"back with the checkpoint's values; resume with its flags, or start a new run from its weights "
            f"(--model_name_or_path {checkpoint}) to train with these")


def check_resume_layout(checkpoint: Path, layout: BatchLayout, partitioned_optimizer: bool,
                        check_batch: bool = True, batch_from_checkpoint: bool = False) -> None:
    """Refuse, before any weights load, a resume that cannot continue the run it comes from.

    ZeRO partitions the optimizer state per process: DeepSpeed loads it only with the same number of
    processes, and says so with a traceback from every rank once the model is built. Steps count global
    batches: with another global batch, the resumed run would skip the wrong number of samples and
    silently start elsewhere in the data. The same global batch split another way resumes exactly.
    ``check_batch`` is off where no data is skipped (--ignore_data_skip); ``batch_from_checkpoint`` where
    the trainer restores the batch per process (--auto_find_batch_size)."""
    manifest = read_manifest(checkpoint)
    saved_world = manifest.get("world_size")
    if partitioned_optimizer and isinstance(saved_world, int) and saved_world != layout.world_size:
        raise CheckpointError(
            f"--resume_from_checkpoint {checkpoint} was written by {saved_world} process(es) and this run "
            f"has {layout.world_size}: ZeRO partitions the optimizer state per process, so DeepSpeed loads it only "
            f"with {saved_world} (or after converting it to a universal checkpoint)")
    try:
        saved = BatchLayout(*(int(manifest[key]) for key in ("world_size", "train_batch_size",
                                                               "gradient_accumulation_steps")))
    except (KeyError, TypeError, ValueError):
        return
    if batch_from_checkpoint:
        layout = BatchLayout(layout.world_size, saved.per_process, layout.accumulation)
    if check_batch and saved.global_batch != layout.global_batch:
        hint = ""
        per_step = layout.world_size * layout.per_process
        if saved.global_batch % per_step == 0:
            hint = f"; with this layout, --gradient_accumulation_steps {saved.global_batch // per_step} keeps it"
        raise CheckpointError(
            f"--resume_from_checkpoint {checkpoint} was trained with a global batch of {saved}, this run's is "
            f"{layout}: steps count global batches, so the run would resume at the wrong place in the data{hint}")


def check_resume_data(checkpoint: Path, orders: list[DataOrder]) -> None:
    """Refuse a resume onto other data or another order (not checked under --ignore_data_skip, which starts
    the checkpoint's epoch from its beginning). ``orders`` holds every rank's: one whose node computed other
    lengths (its own length cache) refuses the run on all ranks, instead of leaving the others waiting.
    Needs the data indexed, so it runs once the dataset is built."""
    saved = DataOrder.from_manifest(read_manifest(checkpoint))
    if saved is None:
        return
    differing = [(index, order) for index, order in enumerate(orders) if order.differs_from(saved)]
    if differing:
        index, order = differing[0]
        where = f" (rank {index}'s)" if len(differing) < len(orders) else ""
        raise CheckpointError(
            f"--resume_from_checkpoint {checkpoint} was trained on {saved}; this run's data{where} is {order}: "
            f"skipping to the checkpoint's step in another order would train some records twice and others never; "
            f"resume with the same data (the same records in the same order in each file), --seed (--data_seed), "
            f"--train_sampling_strategy, --dataloader_drop_last and --group_by_modality_length (grouped: also the "
            f"same template, tokenizer and image settings, which decide the lengths), or pass --ignore_data_skip "
            f"to start the checkpoint's epoch of this data from its beginning")

"""FilaTrainer: HF Trainer with per-part optimizer groups, the stage-1 artifact and throughput logs."""
from __future__ import annotations

import logging
import math
import time
from pathlib import Path

import torch
from transformers import Trainer
from transformers.trainer_callback import ProgressCallback
from transformers.trainer_utils import rotate_checkpoints

from .throughput.step_metrics import TrainingMetrics
from ..data.mixed_dataset import MixtureDataset
from ..data.sampler import ModalityLengthGroupedSampler
from ..utils.distributed import all_ranks, any_rank, barrier, rank, world_size
from ..utils.errors import NonFiniteGradientError, NonFiniteLossError
from ..utils.files import give_files_open_mode
from ..utils.processes import share_temp_folder_with_workers
from .checkpoints import checkpoint_name, clear_staging, publish, staging_root, write_manifest
from .datasets import data_order
from .deepspeed_config import skips_steps_to_scale_the_loss
from .resume_checks import BatchLayout
from .connector_artifact import save_connector_artifact
from .curves import CURVES_FILE, PART_LR_PREFIX, write_curves
from .parts import optimizer_groups
from .progress import ReadableProgress
from .reporting import wandb_run_fields

logger = logging.getLogger(__name__)


def epoch_samplers(loader) -> list:
    """The samplers with ``set_epoch`` below a data loader, through any depth of batch-sampler wrappers."""
    found, seen, pending = [], set(), [loader]
    while pending:
        node = pending.pop()
        for child in (getattr(node, "batch_sampler", None), getattr(node, "sampler", None)):
            if child is not None and id(child) not in seen:
                seen.add(id(child))
                pending.append(child)
                if hasattr(child, "set_epoch"):
                    found.append(child)
    return found


def records_of(ids: list[str] | None, most: int = 8) -> str:
    """A micro-batch's record ids for an error line (a packed batch can hold hundreds)."""
    if not ids:
        return ""
    more = f" and {len(ids) - most} more" if len(ids) > most else ""
    return f" (records {', '.join(ids[:most])}{more})"


# The end of a non-finite loss or gradient error: what it means and what to do.
DIVERGED = "the run diverged, or the model holds non-finite or extreme weights, or these records break it"
RESUME_LOWER = "resume from the last checkpoint with a lower --learning_rate"
OR_CHECK = "or check the weights and these records"


if not hasattr(Trainer, "_run_epoch"):  # FilaTrainer._run_epoch below would silently never run
    raise ImportError("fila_train needs a transformers Trainer with _run_epoch (transformers >= 5.0): "
                      "resume would replay the wrong data order without it")


class FilaTrainer(Trainer):
    def __init__(self, *args, run_settings: dict | None = None, **kwargs):
        """``run_settings``: resume_checks.run_settings of the run, recorded in each checkpoint's manifest."""
        super().__init__(*args, **kwargs)
        self.run_settings = run_settings or {}
        # The data as the run started on it, read once: a file regenerated meanwhile must not be recorded as the
        # run's, and no file is read between a save's barriers. A dataset of one's own: its order is unknown.
        self._data_order = (data_order(self.train_dataset, self.args).manifest_fields()
                            if isinstance(self.train_dataset, MixtureDataset) else {})
        if self.pop_callback(ProgressCallback) is not None:  # present unless --disable_tqdm
            self.add_callback(ReadableProgress)
        self._tokens_since_log = 0
        self._tokens_total = 0
        # Set by the first training batch: the first logged window must not include start-up
        # (DeepSpeed engine, checkpoint loading), which would understate tokens/s and MFU.
        self._last_log_time: float | None = None
        # Model TFLOP/s, MFU and peak memory per logging step (docs/performance.md).
        self._step_metrics = TrainingMetrics(self.model, self.args)
        self._sample_log = None
        self._batch_ids: list[str] | None = None  # the records of the micro-batch in training, for errors
        # The optimizer step's micro-batches so far: their records and losses (detached), for errors.
        self._step_ids: list[str] = []
        self._step_losses: list[torch.Tensor] = []
        self._step_rates: dict[str, float] = {}  # each part's learning rate in the step's update
        self._staging: Path | None = None  # set while a checkpoint is being written
        self.training_started = False  # the loop's first epoch began (after DeepSpeed's set-up and any resume)
        self.skipped: set[tuple[str, str]] = set()  # (kind, record) of the bad/over-long records this rank skipped
        if self.args.log_sample_ids:
            path = Path(self.args.output_dir) / "sample_ids" / f"rank{rank()}.txt"
            path.parent.mkdir(parents=True, exist_ok=True)
            self._sample_log = open(path, "a")

    def train(self, *args, **kwargs):
        try:
            return super().train(*args, **kwargs)
        except BaseException:
            # Closed, the bar ends its line: the error printed next starts a line of its own.
            for callback in self.callback_handler.callbacks:
                if isinstance(callback, ProgressCallback):
                    for bar in (callback.training_bar, callback.prediction_bar):
                        if bar is not None:
                            bar.close()
            raise

    def get_train_dataloader(self):
        share_temp_folder_with_workers(self.args.dataloader_num_workers)  # before the loader builds its workers
        return super().get_train_dataloader()

    def _get_train_sampler(self, train_dataset=None):
        if not self.args.group_by_modality_length:
            return super()._get_train_sampler(train_dataset)
        dataset = self.train_dataset if train_dataset is None else train_dataset
        # Megabatches of world_size x (micro batch x accumulation), as LLaVA groups them.
        return ModalityLengthGroupedSampler(
            dataset.modality_lengths, self.args.train_batch_size * self.args.gradient_accumulation_steps,
            self.args.world_size, seed=self.args.sampler_seed())

    def _run_epoch(self, *args, epoch: int, train_dataloader, **kwargs):
        self.training_started = True
        if self.state.global_step >= self.state.max_steps:
            # Resumed from the run's last checkpoint: the Trainer would train one step past max_steps
            # when that checkpoint falls inside an epoch. Nothing is left to train.
            self.control.should_training_stop = True
            return None
        # On resume, the Trainer wraps the loader's batch sampler once more (accelerate's
        # skip_first_batches), and the epoch it then sets no longer reaches the index sampler: a run
        # resumed in epoch e >= 1 would replay epoch 0's order. Every sampler in the chain hears it here.
        for sampler in epoch_samplers(train_dataloader):
            sampler.set_epoch(epoch)
        return super()._run_epoch(*args, epoch=epoch, train_dataloader=train_dataloader, **kwargs)

    # Per-part learning rates: one optimizer group per (part, weight decay); the scheduler
    # scales each group's own lr, so the cosine schedule applies to every part.
    def create_optimizer(self, model=None):
        if self.optimizer is None:
            model = self.model if model is None else model
            groups = optimizer_groups(model, self.args, set(self.get_decay_parameter_names(model)))
            optimizer_cls, optimizer_kwargs = self.get_optimizer_cls_and_kwargs(self.args, model)
            self.optimizer = optimizer_cls(groups, **optimizer_kwargs)
            for group in groups:
                logger.info("optimizer group: part=%s lr=%g weight_decay=%g tensors=%d", group["part"],
                            group["lr"], group["weight_decay"], len(group["params"]))
        return self.optimizer

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        sample_ids = inputs.pop("sample_ids", None)
        self.skipped.update(tuple(skip) for skip in inputs.pop("skipped", None) or [])
        if self._sample_log is not None and model.training and sample_ids is not None:
            self._sample_log.write("\n".join(sample_ids) + "\n")
            self._sample_log.flush()
        if not model.training:  # evaluation batches go through here too; they are not training throughput
            return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
        self._count_training_batch(inputs)
        self._batch_ids = sample_ids
        result = super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
        loss = result[0] if return_outputs else result
        # Before backward: under DeepSpeed, accelerate's backward also runs the optimizer step.
        self._stop_on_a_nonfinite_loss(loss)
        self._step_ids += sample_ids or []
        self._step_losses.append(loss.detach())
        return result

    def training_step(self, model, inputs, num_items_in_batch=None):
        # The rates this step's update uses: read before it (DeepSpeed steps the scheduler inside the backward).
        self._step_rates = {group["part"]: group["lr"] for group in self.optimizer.param_groups if "part" in group}
        loss = super().training_step(model, inputs, num_items_in_batch)
        if self.accelerator.sync_gradients:  # the step's last micro-batch: DeepSpeed stepped in its backward
            if self.is_deepspeed_enabled and self.accelerator.optimizer_step_was_skipped:
                self._stop_on_a_skipped_step()
            self._step_ids, self._step_losses = [], []
        return loss

    def _stop_on_a_nonfinite_loss(self, loss: torch.Tensor) -> None:
        """Else HF logs a NaN loss as the mean of the earlier ones and trains on; once the weights are NaN,
        DeepSpeed skips every step, and the run "succeeds". Every rank learns of it, and all raise the same
        line (rank 0 prints it): a rank of its own could not report under every launcher."""
        if not any_rank(~torch.isfinite(loss.detach()).to(self.args.device)):
            return
        found = self._every_rank(loss.item(), self._batch_ids, only_nonfinite=True)
        raise NonFiniteLossError(f"the training loss is not finite at step {self.state.global_step + 1}, {found}: "
                                 f"{DIVERGED}; {RESUME_LOWER} (or --max_grad_norm), {OR_CHECK}")

    def _stop_on_a_skipped_step(self) -> None:
        """DeepSpeed skips a step whose gradients are not finite, with a warning, and trains on: in bf16 or fp32 no
        loss scale can help, and where the weights cause it every later step is skipped too, so the run "succeeds"
        untrained. Its overflow flag is reduced over the ranks: all raise the same line. (fp16's dynamic loss scale
        skips steps by design.)"""
        if skips_steps_to_scale_the_loss(self.args.hf_deepspeed_config.config):
            return
        # Each micro-batch's loss is its share of the step's (HF divides by the step's tokens, over all ranks): their
        # sum is this rank's part, and the logged loss the mean of the ranks' parts.
        loss = torch.stack(self._step_losses).float().sum().item() if self._step_losses else float("nan")
        found = self._every_rank(loss, self._step_ids, only_nonfinite=False, what="loss ")
        raise NonFiniteGradientError(
            f"the gradients are not finite at step {self.state.global_step + 1}, {found}: DeepSpeed skipped the step "
            f"and goes on skipping while the cause holds; {DIVERGED}; {RESUME_LOWER} (in fp16: a dynamic "
            f"loss_scale), {OR_CHECK}")

    @staticmethod
    def _every_rank(value: float, ids: list[str] | None, only_nonfinite: bool, what: str = "") -> str:
        """Every rank's ``value`` and records as "rank 0: <what>nan (records a, b); rank 1: ..." (a collective)."""
        return "; ".join(f"rank {index}: {what}{found:g}{records_of(found_ids)}"
                         for index, (found, found_ids) in enumerate(all_ranks((value, ids)))
                         if not (only_nonfinite and math.isfinite(found)))

    def _count_training_batch(self, inputs: dict) -> None:
        if self._last_log_time is None:
            self._last_log_time = time.perf_counter()
        # A packed batch (--packing) has no padding and so no attention mask: every position counts.
        mask = inputs.get("attention_mask")
        tokens = int(mask.sum()) if mask is not None else inputs["input_ids"].numel()
        self._tokens_since_log += tokens
        self._tokens_total += tokens
        self._step_metrics.add_batch(inputs)

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        if "loss" in logs and self._last_log_time is not None:
            now = time.perf_counter()
            elapsed = max(now - self._last_log_time, 1e-9)
            # Tokens (including image-context positions) through the LLM per second, per device.
            logs["tokens_per_second_per_device"] = round(self._tokens_since_log / elapsed, 2)
            logs["tokens_per_second"] = round(self._tokens_since_log * world_size() / elapsed, 2)
            logs.update(self._step_metrics.log_values(elapsed))
            logs.update(self.part_learning_rates())
            self._tokens_since_log = 0
            self._last_log_time = now
        super().log(logs, start_time)

    def part_learning_rates(self) -> dict[str, float]:
        """Each part's rate in the logged step's update, as ``learning_rate/<part>``: read from the optimizer's groups
        themselves (transformers logs one rate, the first group's)."""
        return {f"{PART_LR_PREFIX}{part}": rate for part, rate in self._step_rates.items()}

    def write_curves(self) -> None:
        """OUTPUT_DIR/curves.png from the log history so far (main process)."""
        if not self.args.should_save:
            return
        try:
            write_curves(self.state.log_history, Path(self.args.output_dir) / CURVES_FILE,
                         f"{Path(self.args.output_dir).name}: step {self.state.global_step}")
        except Exception as error:  # a picture must never stop (or, before a barrier, hang) a training run
            logger.warning("curves.png not written (%s: %s)", type(error).__name__, error)

    def _get_output_dir(self, trial) -> str:
        # While a checkpoint is saved, the Trainer writes it under the staging folder (checkpoints.py).
        return str(self._staging) if self._staging is not None else super()._get_output_dir(trial)

    def _save_checkpoint(self, model, trial) -> None:
        """Complete or absent: every rank writes under OUTPUT_DIR/.incomplete, then one process adds the
        manifest and renames it to OUTPUT_DIR/checkpoint-N; older ones are rotated out only after that."""
        run_dir = Path(self._get_output_dir(trial))
        name = checkpoint_name(self.state.global_step)
        staged = staging_root(run_dir) / name
        if self.args.should_save:
            clear_staging(staged)
        barrier()  # nobody writes into a stale folder that is being removed
        self._staging = staging_root(run_dir)
        limit, self.args.save_total_limit = self.args.save_total_limit, None  # no rotation inside the staging
        try:
            super()._save_checkpoint(model, trial)
            # The connector-side weights alone, usable as a stage-1 artifact without consolidating
            # the DeepSpeed shards.
            save_connector_artifact(self.model, staged)
        finally:
            self._staging = None
            self.args.save_total_limit = limit
        barrier()  # every rank's files are written
        if self.args.should_save:
            give_files_open_mode(staged)  # save_pretrained's safetensors shards come out 0600
            write_manifest(staged, self.state.global_step, self.resume_facts() | wandb_run_fields())
            publish(staged, run_dir / name)
            best = self.state.best_model_checkpoint
            if best is not None and Path(best).parent == staging_root(run_dir):
                self.state.best_model_checkpoint = str(run_dir / Path(best).name)
            rotate_checkpoints(output_dir=str(run_dir), save_total_limit=limit,
                               best_model_checkpoint=self.state.best_model_checkpoint, use_mtime=True)
            self.write_curves()
        barrier()

    def resume_facts(self) -> dict:
        """What a run resumed from this run's checkpoints must share with it (resume_checks.py)."""
        return (BatchLayout(world_size(), self._train_batch_size, self.args.gradient_accumulation_steps)
                .manifest_fields() | self.run_settings | {"save_only_model": self.args.save_only_model} | self._data_order)

    @property
    def tokens_seen(self) -> int:
        return self._tokens_total

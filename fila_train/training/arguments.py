"""Command-line arguments, in the HF TrainingArguments style LLaVA users know."""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import transformers
from transformers.integrations import integration_utils

from ..data.images import DEFAULT_MAX_PIXELS
from ..data.lengths import DEFAULT_CACHE_DIR
from ..model.arguments import ModelArguments  # noqa: F401  (the train command's model flags)
from ..model.contracts import encoder_sub_parts, known_parts
from ..utils.errors import ConfigError
from .deepspeed_config import check_deepspeed_config, check_flag_mismatches
from .llava_flags import llava_names
from .process_group import meeting_ranks, start_cpu_process_group


@dataclass
class DataArguments:
    data_path: str = field(metadata={
        "help": "a LLaVA annotation file (JSON list or JSONL) or a mixture spec (.yaml, see data/README.md)"})
    image_folder: str | None = field(default=None, metadata={"help": "image root for a single annotation file"})
    data_root: str | None = field(default=None, metadata={"help": "overrides the mixture's 'root' folder"})
    on_overlong: str = field(default="drop", metadata={
        "help": "over-long samples (after image expansion): 'drop' (counted, logged) or 'error'"})
    on_bad_sample: str = field(default="error", metadata={
        "help": "unusable records (missing/corrupt image, malformed record): 'error' names file, line, id and "
                "field; 'skip' replaces them by other samples and reports how many records were skipped at the end"})
    max_image_pixels: int = field(default=DEFAULT_MAX_PIXELS, metadata={
        "help": "images with more pixels are refused before decoding (decompression-bomb guard)"})
    length_cache_dir: str = field(default=str(DEFAULT_CACHE_DIR), metadata={
        "help": "where token lengths are cached (measured for --group_by_modality_length, and with "
                "--on_bad_sample error to find bad records before the first step)"})

    def is_mixture(self) -> bool:
        return self.data_path.endswith((".yaml", ".yml"))

    def __post_init__(self) -> None:
        # Each mixture source names its own image root; a global one would be silently ignored.
        if self.is_mixture() and self.image_folder:
            raise ConfigError(f"--image_folder does not apply to a mixture ({self.data_path}): set image_root "
                              f"per source in the YAML (and --data_root to move them all)")
        if not self.is_mixture() and self.data_root:
            raise ConfigError("--data_root only applies to a mixture spec (.yaml)")


SHORTHAND_RATE_PARTS = ("connector", "cvfm", "fuser", "vision", "convnext")  # --<part>_lr
# --report_to names whose "is installed" test in transformers' integration_utils is spelled otherwise
INSTALL_CHECKS = {"azure_ml": "azureml", "comet_ml": "comet", "flyte": "flytekit"}


def check_learning_rate(rate: float, flag: str) -> None:
    if not math.isfinite(rate) or rate < 0:
        raise ConfigError(f"{flag}: a learning rate must be a finite number >= 0")


def check_report_to(integrations: list[str]) -> None:
    """Each --report_to integration is one transformers knows, and installed: else its callback raises once the
    model has loaded."""
    known = integration_utils.INTEGRATION_TO_CALLBACK
    for name in integrations:
        if name not in known:
            raise ConfigError(f"--report_to {name}: not an integration transformers knows; choose from "
                              f"{', '.join(known)} (or none)")
        installed = getattr(integration_utils, f"is_{INSTALL_CHECKS.get(name, name)}_available", None)
        if installed is not None and not installed():
            raise ConfigError(f"--report_to {name}: its package is not installed here; install it, or choose "
                              f"another integration (--report_to none: no reporting)")


@dataclass
class TrainingArguments(transformers.TrainingArguments):
    tune_parts: str = field(default="connector", metadata={
        "help": "comma-separated parts to train: vision, connector, llm, and the sub-parts of the registered "
                "encoders and connectors (cvfm, fuser)"})
    part_lr: list[str] = field(default_factory=list, metadata={
        "help": "learning rates by part, e.g. cvfm=1e-4 fuser=2e-5 (any tunable part; default --learning_rate)"})
    # Shorthands of --part_lr, as LLaVA-style scripts spell them.
    connector_lr: float | None = field(default=None, metadata={"help": "learning rate of the connector"})
    cvfm_lr: float | None = field(default=None, metadata={"help": "learning rate of FILA's CVFM"})
    fuser_lr: float | None = field(default=None, metadata={"help": "learning rate of the MMFuser fuser"})
    vision_lr: float | None = field(default=None, metadata={"help": "learning rate of the vision tower"})
    convnext_lr: float | None = field(default=None, metadata={"help": "learning rate of FILA's ConvNeXt branch"})
    model_max_length: int = 2048
    peak_tflops: float | None = field(default=None, metadata={
        "help": "peak TFLOP/s of one device for the logged MFU (default: from the known-GPU table in "
                "fila_train/training/throughput/mfu.py; CPUs and unknown GPUs log no MFU without it)"})
    group_by_modality_length: bool = field(default=False, metadata={
        "help": "batch image and text-only samples separately, similar token lengths together (LLaVA)"})
    log_sample_ids: bool = field(default=False, metadata={
        "help": "write the record ids each rank trains on to OUTPUT_DIR/sample_ids/rank<R>.txt"})
    warmup_ratio: float | None = field(default=None, metadata={
        "help": "LLaVA-style warmup fraction of the total steps (transformers 5 spells it --warmup_steps 0.03); "
                "a --warmup_steps above 0 wins over it, as in transformers 4"})
    packing: bool = field(default=False, metadata={
        "help": "padding-free batches: each batch's samples packed into one row, attention kept per sample "
                "(block-diagonal); pays off with --attn_implementation flash_attention_2"})
    gradient_checkpointing_parts: str | None = field(default=None, metadata={
        "help": "with --activation_checkpointing (--gradient_checkpointing): the parts to checkpoint, of llm, vision and what the encoder "
                "offers (cvfm) "
                "(default: all the model has)"})
    use_liger: bool = field(default=False, metadata={
        "help": "Liger kernels on the LLM (fused linear cross-entropy, RMSNorm, SwiGLU); needs liger-kernel and a GPU"})
    remove_unused_columns: bool = False
    output_dir: str = "output"

    def __post_init__(self) -> None:
        # Without a GPU, HF Trainer + DeepSpeed must be told to use the CPU, or it runs but is
        # silently not data parallel (environment.md).
        if not torch.cuda.is_available():
            self.use_cpu = True
        if self.warmup_ratio is not None:
            if not 0 <= self.warmup_ratio < 1:
                raise ConfigError(f"--warmup_ratio must be in [0, 1), got {self.warmup_ratio}")
            if not self.warmup_steps:  # transformers 4's rule: a --warmup_steps above 0 wins (llava_flags says so)
                self.warmup_steps = self.warmup_ratio
        if self.activation_checkpointing_kwargs is None and self.gradient_checkpointing_kwargs is None:
            # transformers 5 names it activation_checkpointing_kwargs (the old name warns as deprecated).
            self.activation_checkpointing_kwargs = {"use_reentrant": False}
        with meeting_ranks(self.ddp_timeout):  # HF starts the process group in its __post_init__
            if self.use_cpu:
                start_cpu_process_group(self.ddp_backend, self.ddp_timeout)  # HF's CPU branch drops --ddp_timeout
            super().__post_init__()
        unknown = sorted(set(self.parts()) - set(known_parts()))
        if unknown:
            raise ConfigError(f"--tune_parts: unknown part(s) {unknown}; known parts: {list(known_parts())}")
        self.part_learning_rates()  # a bad --part_lr or part rate fails at parse time
        self._check_steps()
        self._check_schedule()
        check_report_to(self.report_to)
        self._check_speed_options()
        self._check_sampling()
        if self.deepspeed:
            self._check_deepspeed_config()

    def _check_deepspeed_config(self) -> None:
        # transformers has read the config and filled its "auto" values from the flags by now.
        source = self.deepspeed if isinstance(self.deepspeed, str) else "(a dict)"
        check_deepspeed_config(self.hf_deepspeed_config.config, source, self.max_grad_norm)
        if not self.auto_find_batch_size:  # then transformers matches the batch sizes later, itself
            check_flag_mismatches(self.hf_deepspeed_config.mismatches, source)

    def _check_steps(self) -> None:
        for flag in ("per_device_train_batch_size", "gradient_accumulation_steps"):
            if getattr(self, flag) < 1:
                raise ConfigError(f"--{flag} {getattr(self, flag)}: must be at least 1")
        check_learning_rate(self.learning_rate, f"--learning_rate {self.learning_rate}")
        if self.eval_strategy.value != "no":  # transformers would ask for an eval dataset after the model loads
            raise ConfigError(f"--eval_strategy {self.eval_strategy.value}: fila-train train has no evaluation set; "
                              f"leave it at 'no' and score a checkpoint with fila-train eval")
        # Without it the run exits 0 after no step, its artifact the random initial connector.
        if self.max_steps <= 0 and self.num_train_epochs <= 0:
            raise ConfigError(f"--num_train_epochs {self.num_train_epochs} with --max_steps {self.max_steps} trains no "
                              f"step: give --num_train_epochs above 0 (EPOCHS in the scripts) or --max_steps above 0 "
                              f"(MAX_STEPS)")

    def _check_schedule(self) -> None:
        """transformers makes a min_lr floor a fraction of --learning_rate and gives every parameter group that
        fraction of its own rate: a part with a rate of its own would end at another floor than the one asked."""
        floor = (self.lr_scheduler_kwargs or {}).get("min_lr")
        own = {part: rate for part, rate in self.part_learning_rates().items()
               if part in self.parts() and rate != self.learning_rate}
        if floor is not None and own:
            fraction = floor / self.learning_rate if self.learning_rate else 0.0
            parts = ", ".join(f"{part} (at {rate:g}) would end at {rate * fraction:g}" for part, rate in own.items())
            raise ConfigError(f"--lr_scheduler_kwargs min_lr {floor:g}: transformers ends every part at the fraction "
                              f"{fraction:g} of its own rate (min_lr / --learning_rate {self.learning_rate:g}), so "
                              f"{parts}, not at {floor:g}: give min_lr_rate (that fraction) to say what is meant")

    def _check_speed_options(self) -> None:
        if self.gradient_checkpointing_parts is not None:
            known = ("llm", "vision", *encoder_sub_parts())  # the encoder's own parts (checkpointing.py)
            unknown = sorted(set(self.checkpointing_parts()) - set(known))
            if unknown:
                raise ConfigError(f"--gradient_checkpointing_parts: unknown part(s) {unknown}; known: {list(known)}")
            if not self.activation_checkpointing:
                raise ConfigError("--gradient_checkpointing_parts needs --gradient_checkpointing True "
                                  "(--activation_checkpointing True)")
        if self.use_liger_kernel:
            # HF's flag patches by the top-level model type, which Liger does not know for the
            # composite: it would silently patch nothing.
            raise ConfigError("--use_liger_kernel cannot patch the fila composite; use --use_liger (patches the LLM)")

    def _check_sampling(self) -> None:
        strategy = self.train_sampling_strategy
        if strategy in ("group_by_length", "batch_rebalance"):
            # transformers measures a sample by len(sample[processor.model_input_names[0]]), which for our
            # processor is "images"; and it builds every sample, every image decoded, on every rank first.
            raise ConfigError(f"--train_sampling_strategy {strategy}: transformers would group by each sample's "
                              f"number of images (the processor's first input), not its tokens, after building every "
                              f"sample on every rank; use --group_by_modality_length True (token lengths measured "
                              f"once and cached, image and text-only samples batched apart)")
        if self.group_by_modality_length and strategy != "random":
            raise ConfigError(f"--train_sampling_strategy {strategy}: --group_by_modality_length decides the order, "
                              f"so this sampler would be ignored; give one of them")

    def sampler_seed(self) -> int:
        """The seed of the sample order: --data_seed, else --seed (as HF seeds its sampler)."""
        return self.data_seed if self.data_seed is not None else self.seed

    def parts(self) -> list[str]:
        return [p.strip() for p in self.tune_parts.split(",") if p.strip()]

    def checkpointing_parts(self) -> tuple[str, ...] | None:
        """--gradient_checkpointing_parts as a tuple; None when unset (every part the model has)."""
        if self.gradient_checkpointing_parts is None:
            return None
        return tuple(p.strip() for p in self.gradient_checkpointing_parts.split(",") if p.strip())

    def part_rates(self) -> dict[str, tuple[float, str]]:
        """part -> (learning rate, the flag that gives it): --part_lr NAME=LR, then the shorthand flags (which win
        where both name a part)."""
        rates: dict[str, tuple[float, str]] = {}
        for item in self.part_lr:
            name, sep, value = item.partition("=")
            if not sep or name not in known_parts():
                raise ConfigError(f"--part_lr {item!r}: expected PART=LR with PART one of {list(known_parts())}")
            try:
                rates[name] = (float(value), f"--part_lr {item}")
            except ValueError:
                raise ConfigError(f"--part_lr {item!r}: {value!r} is not a number") from None
        for part in SHORTHAND_RATE_PARTS:
            rate = getattr(self, f"{part}_lr")
            if rate is not None:
                rates[part] = (rate, f"--{part}_lr {rate}{llava_names(f'{part}_lr')}")
        for rate, flag in rates.values():
            check_learning_rate(rate, flag)
        return rates

    def part_learning_rates(self) -> dict[str, float]:
        return {part: rate for part, (rate, _) in self.part_rates().items()}

    def part_learning_rate(self, part: str) -> float:
        return self.part_learning_rates().get(part, self.learning_rate)

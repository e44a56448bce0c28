"""A timed training run: warm-up steps, then N steps of forward + backward + AdamW on real batches.

One process, no DeepSpeed: what is measured is the model's step on one device, with the
optimizer states and gradients of the trained parts held whole on it (no ZeRO partitioning).
Batches are built before the clock starts by the real dataset and collator from synthetic
records; data loading is measured on its own by ``--data``.
"""
from __future__ import annotations

import math
import statistics
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from ..data.collator import ConversationCollator
from ..data.packing import build_collator
from ..data.dataset import ConversationDataset, DatasetOptions
from ..data.images import load_rgb_image
from ..processing.processor import FilaProcessor
from ..model.builder import load_tokenizer
from ..model.checkpointing import enable_checkpointing, is_checkpointing
from ..model.configuration import DEFAULT_ATTENTION
from ..training.parts import apply_tune_parts, parameter_table
from ..utils.errors import ConfigError
from .configs import BENCH_CONFIGS, BenchConfig
from ..training.throughput.device import (device_name, device_peak_tflops, matmul_precision, peak_memory,
                                          reset_peak_memory, synchronize)
from ..training.throughput.flop_count import ModelFlopCounter
from ..training.throughput.mfu import StepFlops, mfu
from .synthetic import STAGE_TEMPLATES, BenchData, check_seq_len, fit_to_length, make_bench_data, write_records

DTYPES = {"bf16": torch.bfloat16, "fp32": torch.float32}
DISTINCT_BATCHES = 2  # steps cycle through these; every sample has the same image size
PARALLELISM = "single process, no DeepSpeed (no ZeRO partitioning, no offload)"


@dataclass
class BenchOptions:
    config: str
    stage: int = 2
    batch_size: int = 1
    seq_len: int | None = None  # None: the synthetic records as they are (image tokens + their text)
    dtype: str = "bf16"
    gradient_checkpointing: bool = False
    device: str = "cpu"
    steps: int = 10
    warmup: int = 3
    image_size: tuple[int, int] = (1000, 800)
    peak_tflops: float | None = None
    attn_implementation: str = DEFAULT_ATTENTION
    packing: bool = False  # one packed row per batch (padding-free), as --packing in training
    torch_compile_backend: str | None = None  # torch.compile(model, backend=...) when set
    use_liger: bool = False  # Liger kernels on the LLM, as --use_liger in training
    learning_rate: float = 1e-5

    def __post_init__(self) -> None:
        if self.dtype not in DTYPES:
            raise ConfigError(f"--dtype {self.dtype!r}; expected one of {sorted(DTYPES)}")
        if self.steps < 1 or self.warmup < 0 or self.batch_size < 1:
            raise ConfigError("--steps and --batch_size must be >= 1 and --warmup >= 0")


def to_device(value: Any, device: torch.device) -> Any:
    if isinstance(value, torch.Tensor):
        return value.to(device, non_blocking=True)
    if isinstance(value, dict):
        return {key: to_device(item, device) for key, item in value.items()}
    if isinstance(value, list):
        return [to_device(item, device) for item in value]
    return value


def build_dataset(model, tokenizer_path: str, data: BenchData, stage: int, seq_len: int | None,
                  workdir: Path, packing: bool = False,
                  attn_implementation: str = DEFAULT_ATTENTION) -> tuple[ConversationDataset, ConversationCollator]:
    """The training dataset and collator over the stage's synthetic records, lengthened to ``seq_len``."""
    max_length = model.config.text_config.max_position_embeddings
    fila_processor = FilaProcessor.for_model(load_tokenizer(tokenizer_path, model, max_length), model.config)
    conversation_tokenizer = fila_processor.conversations.with_template(STAGE_TEMPLATES[stage])
    processor = fila_processor.image_processor.encoder_processor
    image_tokens = processor.num_image_tokens(processor(load_rgb_image(data.image_paths()[0])))
    check_seq_len(seq_len, image_tokens, max_length)
    records = [fit_to_length(r, stage, conversation_tokenizer, image_tokens, seq_len) for r in data.records[stage]]
    path = write_records(workdir / f"stage{stage}.jsonl", records)
    # "error": a sample longer than the LLM's context is reported, never silently replaced.
    dataset = ConversationDataset(path, data.image_folder, conversation_tokenizer, processor,
                                  DatasetOptions(max_length, on_overlong="error"))
    return dataset, build_collator(packing, attn_implementation, fila_processor.tokenizer.pad_token_id, processor)


def prepare_model(config: BenchConfig, options: BenchOptions, workdir: Path, device: torch.device,
                  num_images: int) -> tuple[Any, str, BenchData]:
    """Synthetic data + the model with the stage's parts trainable."""
    data = make_bench_data(workdir / "data", num_images, options.image_size)
    model, tokenizer_path = config.build(workdir / "models", data.tokenizer_dir, device, DTYPES[options.dtype],
                                         options.attn_implementation)
    model.config.use_cache = False
    apply_tune_parts(model, config.stage_parts(options.stage))
    return model, tokenizer_path, data


def parameter_summary(model) -> dict[str, dict[str, int]]:
    return {part: {"parameters": total, "trainable": trainable} for part, total, trainable in parameter_table(model)}


def _timed_steps(model, batches: list[dict], optimizer, device: torch.device, options: BenchOptions):
    seconds, losses = [], []
    for step in tqdm(range(options.warmup + options.steps), desc=f"bench {options.config}", unit="step"):
        batch = batches[step % len(batches)]
        synchronize(device)
        start = time.perf_counter()
        loss = model(**batch).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        synchronize(device)
        if step >= options.warmup:
            seconds.append(time.perf_counter() - start)
        losses.append(float(loss.detach()))
    if not all(math.isfinite(loss) for loss in losses):
        raise RuntimeError(f"non-finite loss during the benchmark: {losses}")
    return seconds, losses


def run_training_bench(options: BenchOptions, workdir: Path) -> dict[str, Any]:
    config = BENCH_CONFIGS.get(options.config)
    device = torch.device(options.device)
    dtype = DTYPES[options.dtype]
    model, tokenizer_path, data = prepare_model(config, options, workdir, device,
                                                options.batch_size * DISTINCT_BATCHES)
    if options.use_liger:
        from ..model.liger import apply_liger_kernels

        apply_liger_kernels(model.language_model)
    if options.gradient_checkpointing:
        enable_checkpointing(model)
        # Frozen embeddings + checkpointing: inputs must require grad for gradients to flow (as in train.py).
        model.language_model.enable_input_require_grads()
    dataset, collator = build_dataset(model, tokenizer_path, data, options.stage, options.seq_len, workdir,
                                      options.packing, options.attn_implementation)
    size = options.batch_size
    batches = [collator([dataset[i] for i in range(b * size, (b + 1) * size)]) for b in range(DISTINCT_BATCHES)]
    for batch in batches:
        batch.pop("sample_ids")
        batch.pop("skipped", None)
    counter = ModelFlopCounter.for_model(model)
    flops = [counter.batch_flops(batch) for batch in batches]
    # A packed batch has no padding and no attention mask: every position is a token.
    tokens = [int(batch["attention_mask"].sum()) if "attention_mask" in batch else batch["input_ids"].numel()
              for batch in batches]
    image_tokens = [int((batch["input_ids"] == model.config.image_token_id).sum()) for batch in batches]
    padded = [int(batch["input_ids"].numel()) for batch in batches]

    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=options.learning_rate, fused=device.type == "cuda")
    model.train()
    reset_peak_memory(device)
    device_batches = [to_device(batch, device) for batch in batches]
    # Compiled as the HF Trainer compiles it (the whole composite); the warm-up steps absorb compilation.
    step_model = model if options.torch_compile_backend is None else torch.compile(
        model, backend=options.torch_compile_backend)
    seconds, losses = _timed_steps(step_model, device_batches, optimizer, device, options)
    memory, memory_source = peak_memory(device)

    # Per step: the mean over the batches the timed steps cycled through.
    timed = [step % DISTINCT_BATCHES for step in range(options.warmup, options.warmup + options.steps)]
    step_flops = sum((flops[b] for b in timed), StepFlops(0.0, 0.0, 0.0))
    mean_flops = step_flops.total / len(timed)
    mean_tokens = sum(tokens[b] for b in timed) / len(timed)
    median = statistics.median(seconds)
    peak = device_peak_tflops(device, dtype, options.peak_tflops)
    return {
        "config": config.name, "description": config.description, "stage": options.stage,
        "tune_parts": config.stage_parts(options.stage), "device": device_name(device),
        "torch_threads": torch.get_num_threads(),
        "dtype": options.dtype, "matmul_precision": matmul_precision(dtype, device),
        "batch_size": size, "seq_len_target": options.seq_len,
        "tokens_per_sample": mean_tokens / size,
        "image_tokens_per_sample": sum(image_tokens[b] for b in timed) / len(timed) / size,
        "padding_fraction": 1 - sum(tokens[b] for b in timed) / sum(padded[b] for b in timed),
        "image_size": list(options.image_size), "gradient_checkpointing": is_checkpointing(model),
        "attn_implementation": options.attn_implementation,
        "packing": options.packing, "torch_compile_backend": options.torch_compile_backend,
        "use_liger": options.use_liger,
        "optimizer": f"torch.optim.AdamW ({'fused' if device.type == 'cuda' else 'foreach'}), "
                     f"{options.dtype} weights and states",
        "parallelism": PARALLELISM, "warmup_steps": options.warmup, "steps": options.steps,
        "median_step_seconds": median, "step_seconds": seconds,
        "samples_per_second": size / median,
        "tokens_per_second_per_device": mean_tokens / median,
        "model_tflops_per_step": mean_flops / 1e12,
        "model_tflops_per_step_by_part": {part: value / len(timed) / 1e12
                                          for part, value in asdict(step_flops).items()},
        "model_tflops_per_second": mean_flops / median / 1e12,
        "peak_tflops": peak, "mfu": mfu(mean_flops, median, peak),
        "peak_memory_gib": memory, "peak_memory_source": memory_source,
        "parameters": parameter_summary(model), "llm_non_embedding_parameters": counter.llm.params,
        "loss_first": losses[0], "loss_last": losses[-1],
    }

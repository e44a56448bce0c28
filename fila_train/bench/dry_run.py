"""``fila-train bench CONFIG --dry_run``: parameters and model FLOPs per sample, nothing run.

Real sizes are built on the meta device from their configs (no memory, no weights), so a 13B
configuration can be checked on a laptop; tiny ones are small enough to build for real.
"""
from __future__ import annotations

from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch

from ..model.vision.anyres import tile_grid
from ..model.vision.flops import default_canvas
from ..model.vision.hybrid_encoder import HybridImageProcessor
from ..training.parts import apply_tune_parts
from .configs import BENCH_CONFIGS
from ..training.throughput.flop_count import Layout, ModelFlopCounter
from ..training.throughput.mfu import stage_multipliers
from .runner import parameter_summary
from .synthetic import check_seq_len, make_bench_data

TEXT_TOKENS = 128  # text per sample when no --seq_len is given: about a LLaVA caption or short answer


def default_layout(processor) -> tuple[Layout, tuple[int, int], int]:
    """(layout, canvas (W, H), views) of an image at the encoder's default canvas."""
    if isinstance(processor, HybridImageProcessor):
        canvas = default_canvas(processor.anyres)
        rows, cols = tile_grid(canvas, processor.anyres.tile_size)
        return (rows, cols), canvas, 1 + rows * cols
    return None, (processor.image_size, processor.image_size), 1


def dry_run(config_name: str, stage: int, seq_len: int | None, workdir: Path) -> dict[str, Any]:
    config = BENCH_CONFIGS.get(config_name)
    tokenizer_dir = make_bench_data(workdir / "data", 2, (1000, 800)).tokenizer_dir if config.tiny else None
    model, _ = config.build(workdir / "models", tokenizer_dir, torch.device("meta"), torch.float32)
    parts = config.stage_parts(stage)
    apply_tune_parts(model, parts)
    counter = ModelFlopCounter.for_model(model)
    processor = model.image_processor()
    layout, canvas, views = default_layout(processor)
    image_tokens = views * processor.tokens_per_view
    check_seq_len(seq_len, image_tokens, model.config.text_config.max_position_embeddings)
    length = seq_len if seq_len is not None else image_tokens + TEXT_TOKENS
    sample = counter.sample_flops([length], [layout])
    return {
        "config": config.name, "description": config.description, "stage": stage, "tune_parts": parts,
        "parameters": parameter_summary(model),
        "llm": asdict(counter.llm), "canvas": list(canvas), "views_per_image": views,
        "image_tokens": image_tokens, "tokens_per_sample": length,
        "vision_forward_tflops_per_image": {k: v / 1e12 for k, v in asdict(counter.image_forward(layout)).items()},
        "stage_multipliers": stage_multipliers(counter.trained),
        "model_tflops_per_sample": {**{k: v / 1e12 for k, v in asdict(sample).items()}, "total": sample.total / 1e12},
    }

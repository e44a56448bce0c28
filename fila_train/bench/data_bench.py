"""``fila-train bench CONFIG --data``: the data pipeline alone, ours beside the LLaVA-NeXT reference.

Rates are per worker: one process on one torch thread, as a DataLoader worker runs. Ours and
the reference take turns image by image on the same JPEGs, so load from other processes on
the machine hits both alike. Also measured: whole samples (``ConversationDataset[i]``: decode,
process, tokenize) and per-turn tokenization alone.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
from tqdm import tqdm

from ..data.images import load_rgb_image
from .baseline_pipeline import baseline_for, decode
from .configs import BENCH_CONFIGS
from .device import torch_threads
from .runner import build_dataset
from .synthetic import make_bench_data


@dataclass
class PipelineTimes:
    decode: list[float] = field(default_factory=list)
    process: list[float] = field(default_factory=list)

    def run(self, load: Callable, process: Callable, path: Path) -> dict[str, Any]:
        start = time.perf_counter()
        image = load(path)
        decoded = time.perf_counter()
        output = process(image)
        self.decode.append(decoded - start)
        self.process.append(time.perf_counter() - decoded)
        return output

    def summary(self) -> dict[str, float]:
        total = sum(self.decode) + sum(self.process)
        return {"images_per_second": len(self.decode) / total,
                "decode_ms": 1e3 * sum(self.decode) / len(self.decode),
                "preprocess_ms": 1e3 * sum(self.process) / len(self.process)}


def max_difference(ours: dict[str, Any], reference: dict[str, Any]) -> float:
    """Largest absolute difference over the tensors both pipelines return (inf if shapes differ)."""
    worst = 0.0
    for key in ("pixel_values", "hr_pixel_values"):
        if key not in ours:
            continue
        if ours[key].shape != reference[key].shape:
            return float("inf")
        worst = max(worst, float((ours[key] - reference[key]).abs().max()))
    return worst if ours.get("grid") == reference.get("grid") else float("inf")


def _rate(count: int, seconds: float) -> float:
    return count / max(seconds, 1e-12)


def run_data_bench(config_name: str, workdir: Path, num_images: int = 16, image_size: tuple[int, int] = (1000, 800),
                   stage: int = 2, repeats: int = 2) -> dict[str, Any]:
    config = BENCH_CONFIGS.get(config_name)
    data = make_bench_data(workdir / "data", num_images, image_size)
    # Only the processor and tokenizer are needed: real sizes stay on the meta device.
    model, tokenizer_path = config.build(workdir / "models", data.tokenizer_dir, torch.device("meta"), torch.float32)
    processor = model.image_processor()
    reference = baseline_for(processor)
    paths = data.image_paths()
    dataset, _ = build_dataset(model, tokenizer_path, data, stage, None, workdir)
    ours, baseline = PipelineTimes(), PipelineTimes()
    with torch_threads(1):  # as a DataLoader worker runs
        for path in paths:  # warm-up: files in the page cache, code paths run once
            processor(load_rgb_image(path)), reference(decode(path))
        for turn, path in enumerate(tqdm(paths * repeats, desc="images: ours vs reference", unit="image")):
            # Alternating who goes first, so neither always finds the other's work in the CPU caches.
            runs = [(ours, load_rgb_image, processor), (baseline, decode, reference)]
            for times, load, process in runs[::1 if turn % 2 else -1]:
                times.run(load, process, path)
        start = time.perf_counter()
        for index in list(range(len(dataset))) * repeats:
            dataset[index]
        sample_seconds = time.perf_counter() - start
        first = processor(load_rgb_image(paths[0])), reference(decode(paths[0]))
        image_tokens = processor.num_image_tokens(first[0])
        conversations = [record["conversations"] for record in data.records[stage]] * repeats
        start = time.perf_counter()
        encoded = [dataset.tokenizer.encode(conversation, [image_tokens]) for conversation in conversations]
        tokenize_seconds = time.perf_counter() - start
    tokens = sum(len(sample.input_ids) for sample in encoded)
    text_tokens = tokens - image_tokens * len(encoded)
    tile = first[0]["pixel_values"].shape[-1]
    rows, cols = first[0].get("grid", (1, 1))
    result = {
        "config": config.name, "vision_encoder": model.config.vision_encoder,
        "processor": type(processor).__name__, "image_size": list(image_size),
        "canvas": [cols * tile, rows * tile], "views_per_image": int(first[0]["pixel_values"].shape[0]),
        "image_tokens": image_tokens, "images": len(paths), "repeats": repeats, "torch_threads": 1,
        "ours": ours.summary(), "baseline": baseline.summary(),
        "baseline_description": "LLaVA-NeXT process_anyres_image style (fila_train/bench/baseline_pipeline.py)",
        "max_abs_difference": max_difference(first[0], first[1]),
        "samples_per_second": _rate(len(dataset) * repeats, sample_seconds),
        "tokenization": {"samples_per_second": _rate(len(encoded), tokenize_seconds),
                         "text_tokens_per_second": _rate(text_tokens, tokenize_seconds)},
    }
    result["speedup_over_baseline"] = result["ours"]["images_per_second"] / result["baseline"]["images_per_second"]
    return result

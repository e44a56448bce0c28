"""``fila-train bench CONFIG --data``: the data pipeline alone, ours beside the LLaVA-NeXT reference.

Rates are per worker: one process on one torch thread, as a DataLoader worker runs. Ours and
the reference take turns image by image on the same JPEGs, so load from other processes on
the machine hits both alike. Also measured: whole samples (``ConversationDataset[i]``: decode,
process, tokenize) and tokenization alone.
"""
from __future__ import annotations

import functools
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
from tqdm import tqdm

from ..data.images import load_rgb_image
from .baseline_pipeline import baseline_for, decode
from .configs import BENCH_CONFIGS
from ..training.throughput.device import torch_threads
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
        # Medians: on a shared machine a preempted image would otherwise weigh on the whole run.
        per_image = statistics.median(d + p for d, p in zip(self.decode, self.process))
        return {"images_per_second": 1 / per_image,
                "decode_ms": 1e3 * statistics.median(self.decode),
                "preprocess_ms": 1e3 * statistics.median(self.process)}


def difference(ours: dict[str, Any], reference: dict[str, Any]) -> tuple[float, float]:
    """(largest, mean) absolute difference over the tensors both pipelines return; inf where the
    shapes or tile grids differ."""
    if ours.get("grid") != reference.get("grid"):
        return float("inf"), float("inf")
    keys = [key for key in ("pixel_values", "hr_pixel_values") if key in ours]
    if any(ours[key].shape != reference[key].shape for key in keys):
        return float("inf"), float("inf")
    gaps = torch.cat([(ours[key] - reference[key]).abs().flatten() for key in keys])
    return float(gaps.max()), float(gaps.mean())


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
    # As ConversationDataset loads: JPEGs decoded at the reduced size the processor allows.
    load = functools.partial(load_rgb_image, decode_size=processor.decode_size)
    ours, baseline = PipelineTimes(), PipelineTimes()
    with torch_threads(1):  # as a DataLoader worker runs
        # Warm-up (files in the page cache, code paths run once), checking on every image that the
        # reference computes the same tensors as ours.
        differences = [difference(processor(load(path)), reference(decode(path))) for path in paths]
        for turn, path in enumerate(tqdm(paths * repeats, desc="images: ours vs reference", unit="image")):
            # Alternating who goes first, so neither always finds the other's work in the CPU caches.
            runs = [(ours, load, processor), (baseline, decode, reference)]
            for times, load, process in runs[::1 if turn % 2 else -1]:
                times.run(load, process, path)
        sample_seconds = []
        for index in list(range(len(dataset))) * repeats:
            start = time.perf_counter()
            dataset[index]
            sample_seconds.append(time.perf_counter() - start)
        processed = processor(load(paths[0]))
        image_tokens = processor.num_image_tokens(processed)
        conversations = [record["conversations"] for record in data.records[stage]] * repeats
        start = time.perf_counter()
        encoded = [dataset.tokenizer.encode(conversation, [image_tokens]) for conversation in conversations]
        tokenize_seconds = time.perf_counter() - start
    tokens = sum(len(sample.input_ids) for sample in encoded)
    text_tokens = tokens - image_tokens * len(encoded)
    tile = processed["pixel_values"].shape[-1]
    rows, cols = processed.get("grid", (1, 1))
    result = {
        "config": config.name, "vision_encoder": model.config.vision_encoder,
        "processor": type(processor).__name__, "image_size": list(image_size),
        "canvas": [cols * tile, rows * tile], "views_per_image": int(processed["pixel_values"].shape[0]),
        "image_tokens": image_tokens, "images": len(paths), "repeats": repeats, "torch_threads": 1,
        "ours": ours.summary(), "baseline": baseline.summary(),
        "baseline_description": "LLaVA-NeXT process_anyres_image style (fila_train/bench/baseline_pipeline.py)",
        "max_abs_difference": max(largest for largest, _ in differences),
        "mean_abs_difference": sum(mean for _, mean in differences) / len(differences),
        "samples_per_second": 1 / statistics.median(sample_seconds),
        "tokenization": {"samples_per_second": _rate(len(encoded), tokenize_seconds),
                         "text_tokens_per_second": _rate(text_tokens, tokenize_seconds)},
    }
    result["speedup_over_baseline"] = result["ours"]["images_per_second"] / result["baseline"]["images_per_second"]
    return result

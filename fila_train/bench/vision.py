"""The vision side alone: one encoder forward per image at a canvas, in ms and TFLOP/s (``fila-train bench
--vision_only``). The encoder is frozen, as in FILA's recipe (ViT and ConvNeXt; CVFM is measured forward only
too), so the step is a forward without gradients; FLOPs are counted on the real forward, not estimated."""
from __future__ import annotations

import statistics
import time
from pathlib import Path
from typing import Any

import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from ..data.images import load_rgb_image
from ..training.throughput.device import device_name, peak_memory, reset_peak_memory, synchronize
from .configs import BENCH_CONFIGS
from .runner import DTYPES, to_device
from .synthetic import make_bench_data


def run_vision_bench(config_name: str, device: str, dtype: str, image_size: tuple[int, int], steps: int,
                     warmup: int, workdir: Path, channels_last: bool = False,
                     compile_backend: str | None = None) -> dict[str, Any]:
    config = BENCH_CONFIGS.get(config_name)
    target = torch.device(device)
    data = make_bench_data(workdir / "data", 1, image_size)
    reset_peak_memory(target)  # from here: the encoder's weights and forward, not what ran before in this process
    encoder = config.build_vision(workdir / "models", data.tokenizer_dir, target, DTYPES[dtype]).eval()
    encoder.requires_grad_(False)
    convnext = getattr(encoder, "convnext", None)
    if channels_last and convnext is not None:
        convnext.to(memory_format=torch.channels_last)
    processor = encoder.image_processor()
    processed = processor(load_rgb_image(data.image_paths()[0]))
    images = to_device(processor.collate([processed]), target)
    images = {key: value.to(DTYPES[dtype]) if torch.is_tensor(value) and value.is_floating_point() else value
              for key, value in images.items()}
    with torch.no_grad(), sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter:
        encoder(images)  # the math SDPA backend decomposes attention into matmuls the counter sees
    flops = counter.get_total_flops()
    step = encoder if compile_backend is None else torch.compile(encoder, backend=compile_backend)
    seconds = []
    with torch.no_grad():
        for index in range(warmup + steps):
            synchronize(target)
            start = time.perf_counter()
            step(images)
            synchronize(target)
            if index >= warmup:
                seconds.append(time.perf_counter() - start)
    median = statistics.median(seconds)
    memory, _ = peak_memory(target)
    return {"config": config.name, "vision_encoder": config.vision_encoder, "device": device_name(target),
            "dtype": dtype, "image_size": list(image_size), "image_tokens": processor.num_image_tokens(processed),
            "channels_last": channels_last, "torch_compile_backend": compile_backend,
            "torch_threads": torch.get_num_threads(),
            "ms_per_image": 1000 * median, "tflops_per_image": flops / 1e12,
            "tflops_per_second": flops / median / 1e12, "peak_memory_gib": memory, "steps": steps}

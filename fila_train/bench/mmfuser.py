"""Forward+backward timing and peak memory of MMFuser.

Usage: python -m fila_train.bench.mmfuser [--device cuda] [--dtype bf16]
"""

from __future__ import annotations

import argparse
import resource
import statistics
import sys
import time

import torch

from fila_train.model.connector.mmfuser import MMFuser, MMFuserConfig


def _current_rss_bytes() -> int | None:
    try:
        import psutil
    except ImportError:
        return None
    return psutil.Process().memory_info().rss


def _peak_rss_bytes() -> int:
    # ru_maxrss is KiB on Linux, bytes on macOS.
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def bench_mmfuser(
    dim: int = 1024,
    tokens: int = 576,
    batch: int = 8,
    levels: int = 4,
    steps: int = 5,
    device: str = "cpu",
    dtype: torch.dtype = torch.float32,
) -> dict:
    """Median forward+backward time (one warm-up step excluded) and peak memory.

    Memory: on CUDA ``torch.cuda.max_memory_allocated`` minus the allocation
    before the steps; on CPU the rise of the process peak RSS over the RSS
    before the steps (psutil if installed, else the earlier peak RSS), which
    is only meaningful when this benchmark is the largest thing in the process.
    """
    dev = torch.device(device)
    cfg = MMFuserConfig(key_layers=tuple(range(-levels - 3, -3)))
    fuser = MMFuser(dim, cfg).to(device=dev, dtype=dtype)
    with torch.no_grad():  # non-zero scales so backward covers the whole graph
        fuser.gamma1.fill_(0.1)
        fuser.gamma2.fill_(0.1)
    query = torch.randn(batch, tokens, dim, device=dev, dtype=dtype, requires_grad=True)
    keys = [torch.randn(batch, tokens, dim, device=dev, dtype=dtype) for _ in range(levels)]

    def step() -> float:
        fuser.zero_grad(set_to_none=True)
        query.grad = None
        _sync(dev)
        start = time.perf_counter()
        fuser(query, keys).float().square().mean().backward()
        _sync(dev)
        return time.perf_counter() - start

    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats(dev)
        base = torch.cuda.memory_allocated(dev)
    else:
        base = _current_rss_bytes() or _peak_rss_bytes()

    step()  # warm-up (allocator, kernel selection)
    times = [step() for _ in range(steps)]

    if dev.type == "cuda":
        peak_mem = torch.cuda.max_memory_allocated(dev) - base
        mem_kind = "cuda_max_allocated_delta"
    else:
        peak_mem = max(_peak_rss_bytes() - base, 0)
        mem_kind = "peak_rss_delta"

    return {
        "dim": dim,
        "tokens": tokens,
        "batch": batch,
        "levels": levels,
        "device": str(dev),
        "dtype": str(dtype).removeprefix("torch."),
        "threads": torch.get_num_threads(),
        "params": sum(p.numel() for p in fuser.parameters()),
        "fwd_bwd_median_s": statistics.median(times),
        "fwd_bwd_min_s": min(times),
        "peak_mem_mib": peak_mem / 2**20,
        "mem_kind": mem_kind,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dim", type=int, default=1024)
    parser.add_argument("--tokens", type=int, default=576)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--levels", type=int, default=4)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", choices=["fp32", "bf16", "fp16"], default="fp32")
    args = parser.parse_args()
    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[args.dtype]
    result = bench_mmfuser(args.dim, args.tokens, args.batch, args.levels, args.steps, args.device, dtype)
    for key, val in result.items():
        print(f"{key:>18}: {val:.4f}" if isinstance(val, float) else f"{key:>18}: {val}")


if __name__ == "__main__":
    main()

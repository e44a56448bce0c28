"""What the MFU and memory numbers need to know about the device a process runs on."""
from __future__ import annotations

import platform
import resource
import sys
from collections.abc import Iterator
from contextlib import contextmanager

import torch

from .mfu import peak_tflops

GIB = 2**30


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"{device.type} ({platform.processor() or platform.machine()})"


def matmul_precision(dtype: torch.dtype, device: torch.device) -> str:
    """Which peak column applies: bf16 (also fp16), tf32 (fp32 matmuls on tensor cores) or fp32."""
    if dtype in (torch.bfloat16, torch.float16):
        return "bf16"
    return "tf32" if device.type == "cuda" and cuda_matmul_tf32() else "fp32"


def cuda_matmul_tf32() -> bool:
    """Whether fp32 CUDA matmuls run on TF32 tensor cores. torch >= 2.9 keeps the setting in ``fp32_precision``
    (what transformers' --tf32 sets), which follows the legacy ``allow_tf32`` too; reading the legacy flag after
    the new API was used raises RuntimeError."""
    precision = getattr(torch.backends.cuda.matmul, "fp32_precision", None)
    return precision == "tf32" if precision is not None else torch.backends.cuda.matmul.allow_tf32


def device_peak_tflops(device: torch.device, dtype: torch.dtype, override: float | None = None) -> float | None:
    return peak_tflops(device_name(device) if device.type == "cuda" else None,
                       matmul_precision(dtype, device), override)


def peak_memory(device: torch.device) -> tuple[float, str]:
    """(GiB, what was measured): the CUDA allocator's peak on a GPU, else the process's peak RSS."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / GIB, "torch.cuda.max_memory_allocated"
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux, bytes on macOS
    return (peak if sys.platform == "darwin" else peak * 1024) / GIB, "peak RSS of the process"


def reset_peak_memory(device: torch.device) -> None:
    """Start a new peak for ``peak_memory``: the CUDA allocator's, or the process's peak RSS where Linux allows
    (``/proc/self/clear_refs``; it restarts from what the process holds now). The GPU check runs many
    measurements in one process, and each must report its own peak, not the largest so far."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        return
    try:
        with open("/proc/self/clear_refs", "w") as handle:
            handle.write("5")
    except OSError:
        pass  # not Linux: the peak stays the process's since its start


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@contextmanager
def torch_threads(count: int | None) -> Iterator[None]:
    """Run with ``count`` intra-op threads (None: leave as is), restored afterwards."""
    previous = torch.get_num_threads()
    if count is not None:
        torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(previous)

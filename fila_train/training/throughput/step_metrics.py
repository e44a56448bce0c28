"""Per logging step of FilaTrainer: model TFLOP/s, MFU and peak memory of this device.

FLOPs are counted per batch from its real lengths and image layouts (flop_count.py); MFU needs
the device's peak, from the table in mfu.py or ``args.peak_tflops`` when the arguments have it,
and is left out of the logs where neither says (a CPU). Counting is informational: if it fails,
training goes on without it and says so once.
"""
from __future__ import annotations

import logging
from typing import Any

import torch

from .device import device_peak_tflops, peak_memory
from .flop_count import ModelFlopCounter
from .mfu import mfu

logger = logging.getLogger(__name__)


def _significant(value: float) -> float:
    return float(f"{value:.4g}")


class TrainingMetrics:
    def __init__(self, model, args):
        self.device = args.device
        dtype = torch.bfloat16 if args.bf16 else torch.float16 if args.fp16 else torch.float32
        self.peak_tflops = device_peak_tflops(self.device, dtype, getattr(args, "peak_tflops", None))
        self.flops = 0.0
        self.counter: ModelFlopCounter | None = None
        try:
            self.counter = ModelFlopCounter.for_model(model)
        except Exception as error:  # noqa: BLE001 - a missing metric must never stop a run
            logger.warning("model FLOPs not counted, no MFU in the logs (%s: %s)", type(error).__name__, error)

    def add_batch(self, inputs: dict[str, Any]) -> None:
        if self.counter is None:
            return
        try:
            self.flops += self.counter.batch_flops(inputs).total
        except Exception as error:  # noqa: BLE001
            logger.warning("model FLOPs no longer counted (%s: %s)", type(error).__name__, error)
            self.counter = None

    def log_values(self, elapsed: float) -> dict[str, float]:
        """The values for one logging step over ``elapsed`` seconds; the FLOP count restarts."""
        values = {"peak_memory_gib": _significant(peak_memory(self.device)[0])}
        if self.counter is not None:
            values["model_tflops_per_second_per_device"] = _significant(self.flops / elapsed / 1e12)
            fraction = mfu(self.flops, elapsed, self.peak_tflops)
            if fraction is not None:
                values["mfu"] = _significant(fraction)
        self.flops = 0.0
        return values

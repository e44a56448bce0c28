"""Model FLOPs of a training step and MFU: pure arithmetic, shared by ``fila-train bench`` and the
training logs. The formulas are written out in docs/performance.md.

The model is a chain of stages; what a stage costs depends on whether it is trained and whether
a trained stage upstream needs gradients to pass through it:

* trained: forward + backward for inputs and weights = 3x its forward (the usual 6N per token);
* frozen, gradients pass through: forward + backward for inputs = 2x (the LLM in stage 1: 4N);
* frozen, nothing upstream trained: forward only = 1x (a frozen vision tower).

LLM: 2N per token per pass (N = parameters excluding the input embedding) plus attention
4*L*d*T per token forward, T the sample's own length, counted without causal halving
(anchors.md: 12*L*d*T per token in training). Attention scores and values are products of two
activations, so their backward costs 2x the forward whenever any gradient flows through them.
Padding, gradient-checkpointing recomputation and placeholder images of text-only batches are
not model FLOPs.
"""
from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Iterable

from ...utils.errors import ConfigError

# Stages of the forward chain, in order. "vit_after_fusion" is the part of the ViT that runs
# after FILA's first CVFM block (gradients reach it when CVFM or the ConvNeXt trains); for a
# plain CLIP tower the whole ViT is "vit_before_fusion".
VISION_STAGES = ("convnext", "vit_before_fusion", "cvfm", "vit_after_fusion", "fuser", "projector")
# "lora": LoRA adapters inside the LLM; when they train, gradients pass through the frozen base LLM.
STAGES = (*VISION_STAGES, "lora", "llm")
# Which stages feed each stage's input (directly or not): a trained one there sends gradients through it.
UPSTREAM: dict[str, tuple[str, ...]] = {
    "convnext": (),
    "vit_before_fusion": (),
    "cvfm": ("convnext", "vit_before_fusion"),
    "vit_after_fusion": ("convnext", "vit_before_fusion", "cvfm"),
    "fuser": ("convnext", "vit_before_fusion", "cvfm", "vit_after_fusion"),
    "projector": ("convnext", "vit_before_fusion", "cvfm", "vit_after_fusion", "fuser"),
    "lora": VISION_STAGES,
    "llm": (*VISION_STAGES, "lora"),
}
# Tunable part (training/parts.py) -> the stages it trains; the ConvNeXt trains only when its
# branch is configured trainable as well (it runs without grad otherwise).
PART_STAGES: dict[str, tuple[str, ...]] = {
    "vision": ("vit_before_fusion", "vit_after_fusion"),
    "cvfm": ("cvfm",),
    "fuser": ("fuser",),
    "connector": ("projector",),
    "llm": ("llm",),
}
CONNECTOR_STAGES = ("fuser", "projector")


def trained_stages(parts: Iterable[str], convnext_trainable: bool = False, lora: bool = False) -> frozenset[str]:
    """The stages trained by the tunable ``parts`` (names as in --tune_parts); with ``lora``, part
    "llm" trains the adapters only."""
    parts = list(parts)
    stages = {stage for part in parts for stage in PART_STAGES.get(part, ())}
    if convnext_trainable and "vision" in parts:
        stages.add("convnext")
    if lora and "llm" in stages:
        stages = (stages - {"llm"}) | {"lora"}
    return frozenset(stages)


def pass_multiplier(trained: bool, gradient_passes: bool) -> int:
    """Cost of a stage in multiples of its forward: 3 trained, 2 frozen with gradients through it, 1 frozen."""
    return 3 if trained else 2 if gradient_passes else 1


def stage_multipliers(trained: frozenset[str] | set[str]) -> dict[str, int]:
    unknown = set(trained) - set(STAGES)
    if unknown:
        raise ValueError(f"unknown stage(s) {sorted(unknown)}; stages are {STAGES}")
    return {stage: pass_multiplier(stage in trained, any(up in trained for up in UPSTREAM[stage]))
            for stage in STAGES}


@dataclass(frozen=True)
class LLMSize:
    params: int  # N: parameters excluding the input embedding (the LM head counts, tied or not)
    layers: int  # L
    attention_width: int  # d: heads x head dim of the queries (the hidden size for Llama)
    adapter_params: int = 0  # LoRA adapters (not in ``params``)


def llm_flops(size: LLMSize, lengths: Iterable[int], multiplier: int, adapter_multiplier: int = 1) -> float:
    """LLM FLOPs of one batch: per sample of T tokens,
    T * (2N * multiplier + 2 N_adapters * adapter_multiplier + attention * L * d * T)."""
    attention = 12 if multiplier > 1 else 4
    per_token = 2 * multiplier * size.params + 2 * adapter_multiplier * size.adapter_params
    return float(sum(t * (per_token + attention * size.layers * size.attention_width * t) for t in lengths))


@dataclass(frozen=True)
class ImageForward:
    """Forward FLOPs of one image's vision side (all its views), by stage."""

    convnext: float = 0.0
    vit_before_fusion: float = 0.0
    cvfm: float = 0.0
    vit_after_fusion: float = 0.0
    fuser: float = 0.0
    projector: float = 0.0

    def cost(self, multipliers: dict[str, int]) -> tuple[float, float]:
        """(vision, connector) FLOPs of this image in training with these stage multipliers."""
        vision = connector = 0.0
        for item in fields(self):
            flops = getattr(self, item.name) * multipliers[item.name]
            if item.name in CONNECTOR_STAGES:
                connector += flops
            else:
                vision += flops
        return vision, connector


@dataclass(frozen=True)
class StepFlops:
    llm: float
    vision: float
    connector: float  # projector + MMFuser fuser

    @property
    def total(self) -> float:
        return self.llm + self.vision + self.connector

    def __add__(self, other: StepFlops) -> StepFlops:
        return StepFlops(self.llm + other.llm, self.vision + other.vision, self.connector + other.connector)


def step_flops(size: LLMSize, lengths: Iterable[int], images: Iterable[ImageForward],
               trained: frozenset[str] | set[str]) -> StepFlops:
    """Model FLOPs of one training step on one device: samples of ``lengths`` tokens (image
    positions included, padding not) and the forward FLOPs of each of their images."""
    multipliers = stage_multipliers(trained)
    vision = connector = 0.0
    for image in images:
        image_vision, image_connector = image.cost(multipliers)
        vision += image_vision
        connector += image_connector
    return StepFlops(llm_flops(size, lengths, multipliers["llm"], multipliers["lora"]), vision, connector)


def mfu(flops: float, seconds: float, peak_tflops: float | None) -> float | None:
    """Model FLOPs utilisation (a fraction), or None where the device's peak is unknown."""
    if peak_tflops is None or seconds <= 0:
        return None
    return flops / seconds / (peak_tflops * 1e12)


# Dense (no sparsity) peak TFLOP/s from NVIDIA's datasheets, keyed by the exact name
# torch.cuda.get_device_name returns: (bf16/fp16 tensor cores, tf32 tensor cores, fp32 no tensor cores).
PEAK_TFLOPS: dict[str, tuple[float, float, float]] = {
    "NVIDIA H100 80GB HBM3": (989.4, 494.7, 66.9),  # H100 SXM5
    "NVIDIA H100 PCIe": (756.5, 378.0, 51.2),
    "NVIDIA H100 NVL": (835.5, 417.5, 60.0),
    "NVIDIA H800": (989.4, 494.7, 66.9),
    "NVIDIA H200": (989.4, 494.7, 66.9),  # H200 SXM: H100 SXM compute, more and faster memory
    "NVIDIA H200 NVL": (835.5, 417.5, 60.0),
    "NVIDIA A100-SXM4-80GB": (312.0, 156.0, 19.5),
    "NVIDIA A100-SXM4-40GB": (312.0, 156.0, 19.5),
    "NVIDIA A100 80GB PCIe": (312.0, 156.0, 19.5),
    "NVIDIA A100-PCIE-40GB": (312.0, 156.0, 19.5),
    "NVIDIA A800-SXM4-80GB": (312.0, 156.0, 19.5),
    "NVIDIA L40S": (362.05, 183.0, 91.6),
    "NVIDIA L40": (181.05, 90.5, 90.5),
    "NVIDIA L4": (121.0, 60.0, 30.3),
    "NVIDIA A10": (125.0, 62.5, 31.2),
    "NVIDIA RTX A6000": (154.8, 77.4, 38.7),
    "NVIDIA GeForce RTX 4090": (165.2, 82.6, 82.6),
}
PRECISIONS = ("bf16", "tf32", "fp32")  # fp16 uses the bf16 column


def peak_tflops(device_name: str | None, precision: str, override: float | None = None) -> float | None:
    """The device's dense peak for ``precision`` (``override`` wins); None for an unknown device or a CPU."""
    if override is not None:
        if override <= 0:
            raise ConfigError(f"--peak_tflops must be positive, got {override}")
        return override
    if precision not in PRECISIONS:
        raise ConfigError(f"precision {precision!r}; expected one of {PRECISIONS}")
    peaks = PEAK_TFLOPS.get(device_name or "")
    return None if peaks is None else peaks[PRECISIONS.index(precision)]

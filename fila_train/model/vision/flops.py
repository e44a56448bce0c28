"""Forward FLOPs per image of a FilaConfig's vision encoder, for the start-of-run summary.

Counted on a meta-device copy built from the config alone: no weights are read, nothing is
computed for real, and a model already partitioned by DeepSpeed ZeRO-3 is never touched.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
from transformers import CLIPVisionModel

from .anyres import AnyresConfig
from .registry import build_vision_encoder


@dataclass
class VisionFlops:
    """TFLOPs of one image's forward: ``parts`` has "vit" always, plus "convnext", "cvfm" and
    "total" for the hybrid encoder (where "vit" is the ViT alone on the same views)."""

    canvas: tuple[int, int]  # (W, H) the image is encoded at
    views: int
    parts: dict[str, float]


def default_canvas(anyres: AnyresConfig) -> tuple[int, int]:
    """2x2 tiles (672x672 at the 336 tile) when configured, else the largest canvas."""
    square = (2 * anyres.tile_size, 2 * anyres.tile_size)
    return square if square in anyres.canvases else max(anyres.canvases, key=lambda c: (c[0] * c[1], c))


def _meta_encoder(config) -> torch.nn.Module:
    config = copy.deepcopy(config)
    if config.vision_options and config.vision_options.get("convnext"):
        config.vision_options["convnext"]["checkpoint"] = None  # architecture only: no weights on meta
    with torch.device("meta"):
        # The tower is built directly: _from_config would enter DeepSpeed's zero.Init under ZeRO-3,
        # a collective, and this runs on rank 0 alone.
        return build_vision_encoder(config, tower=CLIPVisionModel(config.vision_config))


def vision_flops(config) -> VisionFlops:
    encoder = _meta_encoder(config)
    if hasattr(encoder, "vision_flops_per_image"):  # views vary with the image (FILA): count a typical canvas
        anyres = encoder.image_processor().anyres
        canvas = default_canvas(anyres)
        views = 1 + (canvas[0] // anyres.tile_size) * (canvas[1] // anyres.tile_size)
        return VisionFlops(canvas, views, encoder.vision_flops_per_image(canvas))
    from torch.nn.attention import SDPBackend, sdpa_kernel
    from torch.utils.flop_counter import FlopCounterMode

    size = encoder.config.image_size
    # The math SDPA backend decomposes attention into matmuls the counter sees.
    with sdpa_kernel(SDPBackend.MATH), torch.no_grad(), FlopCounterMode(display=False) as counter:
        encoder({"pixel_values": torch.empty(1, 3, size, size, device="meta")})
    return VisionFlops((size, size), 1, {"vit": counter.get_total_flops() / 1e12})

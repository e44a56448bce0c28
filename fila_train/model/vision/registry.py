"""Vision encoder registry: name -> factory(config, tower) building the encoder module.

``config`` is the FilaConfig; a factory may complete ``config.vision_options`` so that the
saved config rebuilds exactly the same encoder with no training code and no downloads.
"""
from __future__ import annotations

from dataclasses import replace
from typing import Callable

from torch import nn
from transformers import CLIPVisionConfig, CLIPVisionModel

from ...utils.registry import Registry
from .anyres import AnyresConfig
from .clip_encoder import ClipImageProcessor, ClipVisionEncoder
from .hybrid_encoder import HybridEncoderConfig, HybridImageProcessor, HybridVisionEncoder

VisionEncoderFactory = Callable[..., nn.Module]
VISION_ENCODERS: Registry[VisionEncoderFactory] = Registry("vision encoder")


@VISION_ENCODERS.register("clip")
def _clip(config, tower: CLIPVisionModel | None = None) -> nn.Module:
    return ClipVisionEncoder(config.vision_config, config.vision_feature_layer, tower=tower)


def hybrid_config_for(vision_config: CLIPVisionConfig, options: dict | None) -> HybridEncoderConfig:
    """HybridEncoderConfig from (possibly partial) options; the tile defaults to the ViT's input size
    and the canvases to the spec's 336-tile set scaled to that tile (672x672 -> 2x2 tiles at any size)."""
    options = dict(options or {})
    anyres = dict(options.get("anyres", {}))
    tile = anyres.setdefault("tile_size", vision_config.image_size)
    default = AnyresConfig()
    anyres.setdefault("canvases", [(w * tile // default.tile_size, h * tile // default.tile_size)
                                   for w, h in default.canvases])
    return HybridEncoderConfig.from_dict({**options, "anyres": anyres})


@VISION_ENCODERS.register("fila_hybrid")
def _fila_hybrid(config, tower: CLIPVisionModel | None = None) -> nn.Module:
    hybrid = hybrid_config_for(config.vision_config, config.vision_options)
    encoder = HybridVisionEncoder(config.vision_config, hybrid, config.vision_feature_layer, tower=tower)
    # The ConvNeXt weights are now part of the model's state dict: store the architecture and the
    # normalisation it was checked against, not the checkpoint path (which a reload may not have).
    branch = encoder.convnext
    stored = replace(hybrid, convnext=replace(hybrid.convnext, checkpoint=None, mean=branch.mean, std=branch.std))
    config.vision_options = stored.to_dict()
    return encoder


def build_vision_encoder(config, tower: CLIPVisionModel | None = None) -> nn.Module:
    """Build the encoder named by ``config.vision_encoder`` (a FilaConfig), around ``tower`` if given."""
    return VISION_ENCODERS.get(config.vision_encoder)(config, tower=tower)


def build_image_processor(vision_encoder: str, vision_config: CLIPVisionConfig, vision_options: dict | None = None):
    """The image processor an encoder would use, from configs alone (no weights: for data tools)."""
    VISION_ENCODERS.get(vision_encoder)  # an unknown name fails here, listing the known ones
    if vision_encoder == "fila_hybrid":
        return HybridImageProcessor(hybrid_config_for(vision_config, vision_options).anyres, vision_config.patch_size)
    return ClipImageProcessor(vision_config.image_size, vision_config.patch_size)

"""Vision encoder registry: name -> factory(config, tower) building the encoder module."""
from __future__ import annotations

from typing import Callable

from torch import nn
from transformers import CLIPVisionModel

from ...registry import Registry
from .clip_encoder import ClipVisionEncoder

VisionEncoderFactory = Callable[..., nn.Module]
VISION_ENCODERS: Registry[VisionEncoderFactory] = Registry("vision encoder")


@VISION_ENCODERS.register("clip")
def _clip(config, tower: CLIPVisionModel | None = None) -> nn.Module:
    return ClipVisionEncoder(config.vision_config, config.vision_feature_layer, tower=tower)


def build_vision_encoder(config, tower: CLIPVisionModel | None = None) -> nn.Module:
    """Build the encoder named by ``config.vision_encoder`` (a FilaConfig), around ``tower`` if given."""
    return VISION_ENCODERS.get(config.vision_encoder)(config, tower=tower)

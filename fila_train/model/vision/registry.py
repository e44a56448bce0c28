"""Building a registered vision encoder (model/contracts.py) and its image processor by exact name."""
from __future__ import annotations

from torch import nn
from transformers import CLIPVisionConfig, CLIPVisionModel

from ..contracts import VISION_ENCODERS


def build_vision_encoder(config, tower: CLIPVisionModel | None = None) -> nn.Module:
    """The encoder named by ``config.vision_encoder`` (a FilaConfig), around ``tower`` if given. Its build may
    complete ``config.vision_options`` so the saved config rebuilds the same encoder with no downloads."""
    return VISION_ENCODERS.get(config.vision_encoder).build(config, tower=tower)


def build_image_processor(vision_encoder: str, vision_config: CLIPVisionConfig, vision_options: dict | None = None):
    """The image processor an encoder would use, from configs alone (no weights: for data tools)."""
    return VISION_ENCODERS.get(vision_encoder).image_processor(vision_config, vision_options)

"""The crop-only ``anyres`` encoder (LLaVA-NeXT style): FILA's ViT side without the ConvNeXt branch and CVFM.

The same processor views as FILA's hybrid encoder (a global view + the canvas tiles), the same tokens per
view and the same feature layer; nothing is fused into the ViT. It is FILA's ablation baseline: with its
CVFM gates at zero, FILA gives exactly these features, and the two share the ViT and connector weights.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from torch import nn
from transformers import CLIPVisionConfig, CLIPVisionModel

from ..checkpointing import Switch, checkpointing_layers, set_layer_flags
from ..contracts import VisionEncoderContract
from .anyres import AnyresConfig
from .base import VisionOutput
from .clip_encoder import ClipTowerMixin
from .hybrid_encoder import HybridImageProcessor, checked_grids, hybrid_config_for


@dataclass
class AnyresEncoderConfig:
    anyres: AnyresConfig = field(default_factory=AnyresConfig)

    def to_dict(self) -> dict[str, Any]:
        return {"anyres": self.anyres.to_dict()}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> AnyresEncoderConfig:
        # Reads only its anyres part: it is also handed a FILA model's whole options (the same views, no ConvNeXt).
        return cls(anyres=AnyresConfig.from_dict(data.get("anyres", {})))


def anyres_config_for(vision_config: CLIPVisionConfig, options: dict | None) -> AnyresEncoderConfig:
    """Complete options: the tile and canvases default exactly as FILA's (hybrid_config_for)."""
    return AnyresEncoderConfig(hybrid_config_for(vision_config, {"anyres": (options or {}).get("anyres", {})}).anyres)


class AnyresVisionEncoder(ClipTowerMixin, nn.Module):
    def __init__(self, vision_config: CLIPVisionConfig, config: AnyresEncoderConfig, feature_layer: int = -2,
                 tower: CLIPVisionModel | None = None):
        super().__init__()
        self.anyres_config = config
        self._attach_tower(vision_config, feature_layer, tower, config.anyres.tile_size)

    def image_processor(self) -> HybridImageProcessor:
        return HybridImageProcessor(self.anyres_config.anyres, self.clip.config.patch_size, high_res=False)

    def checkpoint_switches(self) -> dict[str, Switch]:
        layers = checkpointing_layers(self.clip)
        return {"vision": lambda enable, func: set_layer_flags(layers, enable, func)}

    def forward(self, images: dict[str, Any], output_hidden_states: bool = False) -> VisionOutput:
        pixel_values = images["pixel_values"].to(device=self.clip.device, dtype=self.clip.dtype)
        if "grids" in images:  # absent only in FLOP probes of one view
            checked_grids(images["grids"], pixel_values.shape[0])
        out = self.clip(pixel_values=pixel_values, output_hidden_states=True)
        states = tuple(hidden[:, 1:] for hidden in out.hidden_states)
        return VisionOutput(features=states[self.feature_layer],
                            hidden_states=states if output_hidden_states else None)


def build_anyres_encoder(config, tower: CLIPVisionModel | None = None) -> AnyresVisionEncoder:
    options = anyres_config_for(config.vision_config, config.vision_options)
    config.vision_options = options.to_dict()  # complete: the saved config rebuilds the same encoder
    return AnyresVisionEncoder(config.vision_config, options, config.vision_feature_layer, tower=tower)


ANYRES_ENCODER = VisionEncoderContract(
    name="anyres", options=AnyresEncoderConfig, build=build_anyres_encoder,
    image_processor=lambda vision_config, options=None: HybridImageProcessor(
        anyres_config_for(vision_config, options).anyres, vision_config.patch_size, high_res=False),
    check_fresh_options=lambda vision_config, options: anyres_config_for(vision_config, options).to_dict(),
    card_rows=lambda options: [("anyres (crop only)", f"canvases {options['anyres']['canvases']} in "
                                                      f"{options['anyres']['tile_size']}px tiles")],
    views_per_image="global view + tiles",
)

"""The LLaVA baseline vision side: one CLIP-ViT view per image, patch tokens of one layer."""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from PIL import Image
from torch import nn
from transformers import CLIPVisionConfig, CLIPVisionModel

from ...utils.errors import ConfigError
from ..checkpointing import Switch, checkpointing_layers, set_layer_flags
from ..contracts import VisionEncoderContract
from .base import VisionOutput

# OpenAI CLIP normalisation (CLIPImageProcessor's defaults); FILA's ConvNeXt must match it.
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


def same_normalization(mean, std, other_mean, other_std, atol: float = 1e-6) -> bool:
    """Two (mean, std) pairs that normalise pixels alike, to float precision."""
    ours, theirs = tuple(mean) + tuple(std), tuple(other_mean) + tuple(other_std)
    return len(ours) == len(theirs) and all(abs(a - b) <= atol for a, b in zip(ours, theirs))


def check_tower_normalization(tower: str) -> None:
    """A tower folder's (or hub id's) preprocessor_config.json, if it has one, normalises as the OpenAI CLIP
    constants every image processor here uses: a tower trained with others would silently see wrong pixels."""
    import json

    from ..llava_layout import local_file

    file = local_file(tower, "preprocessor_config.json")
    raw = json.loads(file.read_text()) if file is not None else {}
    mean, std = raw.get("image_mean"), raw.get("image_std")
    if mean is None or std is None:
        return
    if not same_normalization(mean, std, CLIP_MEAN, CLIP_STD):
        raise ConfigError(f"{tower}/preprocessor_config.json normalises with mean {tuple(mean)} std {tuple(std)}, "
                          f"but fila-train's image processors use OpenAI CLIP's (mean {CLIP_MEAN} std {CLIP_STD}): "
                          "use a tower trained with those")


def padding_fill(mean: tuple[float, float, float]) -> tuple[int, int, int]:
    """The pad colour: the mean colour truncated to 8 bits, exactly as LLaVA-1.5 and transformers'
    LlavaImageProcessor compute it, so exported LLaVA folders see identical pixels."""
    return tuple(int(255 * m) for m in mean)


# A padded square above this side is not built whole: a 1080x40000 scroll of a web page (43 Mpx, under the pixel
# limit) padded to 40000x40000 asked for 4.5 GiB. Such an image is first reduced by box averaging (an integer
# factor) to this side at most; every other image takes LLaVA's exact pad-then-resize path.
MAX_SQUARE_SIDE = 8192


def within_square_budget(image: Image.Image) -> Image.Image:
    side = max(image.size)
    return image if side <= MAX_SQUARE_SIDE else image.reduce(math.ceil(side / MAX_SQUARE_SIDE))


def expand_to_square(image: Image.Image, fill: tuple[int, int, int]) -> Image.Image:
    """Pad to a centred square (LLaVA-1.5 ``image_aspect_ratio pad``), so nothing is cropped away."""
    width, height = image.size
    if width == height:
        return image
    side = max(width, height)
    canvas = Image.new(image.mode, (side, side), fill)
    canvas.paste(image, ((side - width) // 2, (side - height) // 2))
    return canvas


def to_normalized_tensor(image: Image.Image, mean=CLIP_MEAN, std=CLIP_STD) -> torch.Tensor:
    """RGB PIL image -> float tensor [3, H, W] normalised with the CLIP constants."""
    data = torch.frombuffer(bytearray(image.tobytes()), dtype=torch.uint8)
    pixels = data.view(image.size[1], image.size[0], 3).permute(2, 0, 1).float().div_(255.0)
    mean_t = torch.tensor(mean).view(3, 1, 1)
    std_t = torch.tensor(std).view(3, 1, 1)
    return (pixels - mean_t) / std_t


@dataclass(frozen=True)
class ClipImageProcessor:
    """Pad to square, resize to the ViT's input size, normalise: one view per image."""

    image_size: int
    patch_size: int
    mean: tuple[float, float, float] = CLIP_MEAN
    std: tuple[float, float, float] = CLIP_STD

    def __call__(self, image: Image.Image) -> dict[str, Any]:
        fill = padding_fill(self.mean)
        square = expand_to_square(within_square_budget(image.convert("RGB")), fill)
        resized = square.resize((self.image_size, self.image_size), Image.Resampling.BICUBIC)
        return {"pixel_values": to_normalized_tensor(resized, self.mean, self.std).unsqueeze(0)}

    def decode_size(self, width: int, height: int) -> tuple[int, int]:
        """The image at the scale its padded square is resized to: all a reduced decode may drop."""
        scale = self.image_size / max(width, height)
        return max(1, math.ceil(width * scale)), max(1, math.ceil(height * scale))

    @property
    def tokens_per_view(self) -> int:
        return (self.image_size // self.patch_size) ** 2

    def num_image_tokens(self, processed: dict[str, Any]) -> int:
        return processed["pixel_values"].shape[0] * self.tokens_per_view

    # One view whatever the image's size: token counts need no image header.
    image_size_matters = False

    def num_image_tokens_for_size(self, width: int, height: int) -> int:
        return self.tokens_per_view

    def image_token_counts(self) -> dict[str, int]:
        return {f"{self.image_size}x{self.image_size}": self.tokens_per_view}

    def collate(self, processed: list[dict[str, Any]]) -> dict[str, Any]:
        return {"pixel_values": torch.cat([p["pixel_values"] for p in processed], dim=0)}


def check_feature_layer(layer: int, num_layers: int) -> None:
    """``layer`` names one of the ViT's ``num_layers + 1`` hidden states (0 = embeddings, -1 = last layer).
    Python indexing would wrap or fail only at the first forward, after every weight has loaded."""
    states = num_layers + 1
    if not -states <= layer < states:
        raise ConfigError(f"--vision_feature_layer {layer} is out of range for a ViT with {num_layers} layers "
                          f"(valid {-states}..{states - 1}: 0 = embeddings, -1 = last layer)")


class ClipTowerMixin:
    """What every encoder built around a CLIP tower (``self.clip``) exposes to the model."""

    clip: CLIPVisionModel

    def _attach_tower(self, vision_config: CLIPVisionConfig, feature_layer: int, tower: CLIPVisionModel | None,
                      tile_size: int | None = None) -> None:
        """The given tower or a fresh one from ``vision_config``; an anyres tile must be the ViT's input size."""
        self.feature_layer = feature_layer
        check_feature_layer(feature_layer, (tower.config if tower is not None else vision_config).num_hidden_layers)
        self.clip = tower if tower is not None else CLIPVisionModel._from_config(vision_config)
        if tile_size is not None and tile_size != self.clip.config.image_size:
            raise ConfigError(f"anyres tile_size {tile_size} != ViT image_size {self.clip.config.image_size}")

    @property
    def config(self) -> CLIPVisionConfig:
        return self.clip.config

    @property
    def hidden_size(self) -> int:
        return self.clip.config.hidden_size


class ClipVisionEncoder(ClipTowerMixin, nn.Module):
    """CLIP-ViT through transformers; returns patch tokens (CLS dropped) of ``feature_layer``."""

    def __init__(self, vision_config: CLIPVisionConfig, feature_layer: int = -2,
                 tower: CLIPVisionModel | None = None):
        super().__init__()
        self._attach_tower(vision_config, feature_layer, tower)

    def image_processor(self) -> ClipImageProcessor:
        return ClipImageProcessor(self.config.image_size, self.config.patch_size)

    def checkpoint_switches(self) -> dict[str, Switch]:
        layers = checkpointing_layers(self.clip)
        return {"vision": lambda enable, func: set_layer_flags(layers, enable, func)}

    def forward(self, images: dict[str, Any], output_hidden_states: bool = False) -> VisionOutput:
        pixel_values = images["pixel_values"].to(dtype=self.clip.dtype)
        out = self.clip(pixel_values=pixel_values, output_hidden_states=True)
        patch_states = tuple(h[:, 1:] for h in out.hidden_states)
        return VisionOutput(
            features=patch_states[self.feature_layer],
            hidden_states=patch_states if output_hidden_states else None,
        )


CLIP_ENCODER = VisionEncoderContract(
    name="clip",
    build=lambda config, tower=None: ClipVisionEncoder(config.vision_config, config.vision_feature_layer, tower=tower),
    image_processor=lambda vision_config, options=None: ClipImageProcessor(vision_config.image_size,
                                                                           vision_config.patch_size),
)

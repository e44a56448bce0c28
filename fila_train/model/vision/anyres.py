"""Dynamic cropping ("anyres"): pick a canvas, fit the image into it, cut it into ViT-sized tiles.

Canvases are (W, H) pairs, as in LLaVA-NeXT. The ViT sees a global view (the whole
image squeezed to one tile) first, then the canvas tiles in row-major order.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import torch
from PIL import Image

from ...utils.errors import ConfigError
from ..options import stored_options

Size = tuple[int, int]  # (W, H)

GLOBAL_VIEW_MODES = ("image", "canvas")


@dataclass(frozen=True)
class AnyresConfig:
    """Tile size and the predefined canvases (W x H, multiples of the tile)."""

    tile_size: int = 336
    canvases: tuple[Size, ...] = ((336, 672), (672, 336), (672, 672), (1008, 336), (336, 1008))
    # "image": the whole image squashed to tile x tile (LLaVA-NeXT, the spec's default).
    # "canvas" [ours]: the padded canvas squashed to tile x tile, so the global view has exactly
    # the geometry of the whole ConvNeXt map it is fused with.
    global_view: str = "image"

    def __post_init__(self) -> None:
        # JSON round trips turn tuples into lists; normalise so configs compare and hash.
        object.__setattr__(self, "canvases", tuple((int(w), int(h)) for w, h in self.canvases))
        if not self.canvases:
            raise ConfigError("AnyresConfig.canvases is empty")
        for width, height in self.canvases:
            if width <= 0 or height <= 0 or width % self.tile_size or height % self.tile_size:
                raise ConfigError(f"canvas {width}x{height} is not a positive multiple of tile_size={self.tile_size}")
        if self.global_view not in GLOBAL_VIEW_MODES:
            raise ConfigError(f"global_view={self.global_view!r}; expected one of {GLOBAL_VIEW_MODES}")

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["canvases"] = [list(c) for c in self.canvases]
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> AnyresConfig:
        return stored_options(cls, data)


def select_canvas(image_w: int, image_h: int, canvases: tuple[Size, ...]) -> Size:
    """The canvas with the largest effective resolution; ties go to the least wasted area, then list order."""
    best: Size | None = None
    best_effective, best_wasted = -1, math.inf
    for width, height in canvases:
        scale = min(width / image_w, height / image_h)
        effective = min(int(image_w * scale) * int(image_h * scale), image_w * image_h)
        wasted = width * height - effective
        if effective > best_effective or (effective == best_effective and wasted < best_wasted):
            best, best_effective, best_wasted = (width, height), effective, wasted
    assert best is not None
    return best


def fitted_size(image_w: int, image_h: int, canvas: Size) -> Size:
    """Aspect-preserving size of the image inside ``canvas`` (LLaVA-NeXT's rounding: ceil, clamped)."""
    width, height = canvas
    scale_w, scale_h = width / image_w, height / image_h
    if scale_w < scale_h:
        return width, max(1, min(math.ceil(image_h * scale_w), height))
    return max(1, min(math.ceil(image_w * scale_h), width)), height


def fit_to_canvas(image: Image.Image, canvas: Size, fill: tuple[int, int, int],
                  source: Size | None = None) -> Image.Image:
    """Resize keeping the aspect ratio, then pad centred to exactly ``canvas`` with ``fill``.

    ``source``: the file's (W, H) when ``image`` was decoded at reduced size, so the fitted size
    (and the padding) is exactly that of the full image, not off by a rounding pixel.
    """
    new_w, new_h = fitted_size(*(source or image.size), canvas)
    resized = image.resize((new_w, new_h), Image.Resampling.BICUBIC)
    padded = Image.new(image.mode, canvas, fill)
    padded.paste(resized, ((canvas[0] - new_w) // 2, (canvas[1] - new_h) // 2))
    return padded


def tile_grid(canvas: Size, tile: int) -> tuple[int, int]:
    """(rows, cols) of tiles covering a (W, H) canvas."""
    width, height = canvas
    if width % tile or height % tile:
        raise ValueError(f"canvas {width}x{height} is not a multiple of tile {tile}")
    return height // tile, width // tile


def cut_tiles(canvas: torch.Tensor, tile: int) -> torch.Tensor:
    """[C, H, W] canvas -> [rows * cols, C, tile, tile], row-major, from one tensor (no per-tile resampling)."""
    channels, height, width = canvas.shape
    rows, cols = tile_grid((width, height), tile)
    grid = canvas.reshape(channels, rows, tile, cols, tile).permute(1, 3, 0, 2, 4)
    return grid.reshape(rows * cols, channels, tile, tile)


def global_view(image: Image.Image, canvas_image: Image.Image, config: AnyresConfig) -> Image.Image:
    """The first view: the whole image (or the whole padded canvas) resized to one tile."""
    source = image if config.global_view == "image" else canvas_image
    return source.resize((config.tile_size, config.tile_size), Image.Resampling.BICUBIC)

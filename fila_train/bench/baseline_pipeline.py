"""REFERENCE ONLY, never used for training: the straightforward image pipeline of LLaVA-NeXT.

``fila-train bench --data`` times it beside our processors on the same JPEGs, in the same run.
It follows LLaVA-NeXT's ``process_anyres_image`` (llava/mm_utils.py) step by step: PIL decode,
``select_best_resolution``, ``resize_and_pad_image``, ``divide_to_patches`` cutting the tiles with
one PIL ``crop`` each, the global view as the whole image resized to one tile, then every view
rescaled and normalised on its own in numpy (what ``CLIPImageProcessor.preprocess`` does per
patch) and stacked. For FILA the ConvNeXt's high-resolution canvas is one more
resize-and-pad + normalise. LLaVA-1.5 (``image_aspect_ratio pad``) is ``expand2square`` + resize
+ normalise.

Written from the published algorithm, not copied. It decodes every JPEG at full size, as LLaVA
does; padding uses our fill colour (LLaVA-NeXT pads anyres canvases with black), so both
pipelines produce the same tensors up to resampling noise and the comparison is of cost alone.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from ..model.vision.clip_encoder import ClipImageProcessor, padding_fill
from ..model.vision.hybrid_encoder import HybridImageProcessor


def decode(path: Path) -> Image.Image:
    """LLaVA's loader: ``Image.open(path).convert("RGB")``."""
    return Image.open(path).convert("RGB")


def select_best_resolution(original_size: tuple[int, int], resolutions: list[tuple[int, int]]) -> tuple[int, int]:
    original_width, original_height = original_size
    best_fit, max_effective, min_wasted = None, 0, float("inf")
    for width, height in resolutions:
        scale = min(width / original_width, height / original_height)
        downscaled = int(original_width * scale) * int(original_height * scale)
        effective = min(downscaled, original_width * original_height)
        wasted = width * height - effective
        if effective > max_effective or (effective == max_effective and wasted < min_wasted):
            best_fit, max_effective, min_wasted = (width, height), effective, wasted
    return best_fit


def resize_and_pad_image(image: Image.Image, target: tuple[int, int], fill: tuple[int, int, int]) -> Image.Image:
    original_width, original_height = image.size
    target_width, target_height = target
    scale_w, scale_h = target_width / original_width, target_height / original_height
    if scale_w < scale_h:
        new_width, new_height = target_width, min(math.ceil(original_height * scale_w), target_height)
    else:
        new_width, new_height = min(math.ceil(original_width * scale_h), target_width), target_height
    resized = image.resize((new_width, new_height), Image.Resampling.BICUBIC)
    padded = Image.new("RGB", (target_width, target_height), fill)
    padded.paste(resized, ((target_width - new_width) // 2, (target_height - new_height) // 2))
    return padded


def divide_to_patches(image: Image.Image, patch_size: int) -> list[Image.Image]:
    width, height = image.size
    return [image.crop((x, y, x + patch_size, y + patch_size))
            for y in range(0, height, patch_size) for x in range(0, width, patch_size)]


def normalize(image: Image.Image, mean, std) -> np.ndarray:
    """One view: uint8 HWC -> rescaled, normalised float32 CHW (CLIPImageProcessor's rescale + normalize)."""
    pixels = np.asarray(image, dtype=np.float32) * (1 / 255)
    pixels = (pixels - np.asarray(mean, dtype=np.float32)) / np.asarray(std, dtype=np.float32)
    return pixels.transpose(2, 0, 1)


def llava_next_anyres(image: Image.Image, processor: HybridImageProcessor) -> dict[str, Any]:
    """LLaVA-NeXT's anyres views (global first, then tiles row-major), plus FILA's high-res canvas."""
    anyres, fill = processor.anyres, padding_fill(processor.mean)
    tile = anyres.tile_size
    canvas = select_best_resolution(image.size, list(anyres.canvases))
    padded = resize_and_pad_image(image, canvas, fill)
    source = image if anyres.global_view == "image" else padded
    views = [source.resize((tile, tile), Image.Resampling.BICUBIC)] + divide_to_patches(padded, tile)
    pixel_values = np.stack([normalize(view, processor.mean, processor.std) for view in views])
    high_res = resize_and_pad_image(image, processor.high_res_size(canvas), fill)
    return {"pixel_values": torch.from_numpy(pixel_values),
            "hr_pixel_values": torch.from_numpy(normalize(high_res, processor.mean, processor.std)[None]),
            "grid": (canvas[1] // tile, canvas[0] // tile)}


def llava_pad(image: Image.Image, processor: ClipImageProcessor) -> dict[str, Any]:
    """LLaVA-1.5 ``image_aspect_ratio pad``: expand2square with the mean colour, resize, normalise."""
    width, height = image.size
    side = max(width, height)
    square = Image.new("RGB", (side, side), padding_fill(processor.mean))
    square.paste(image, ((side - width) // 2, (side - height) // 2))
    resized = square.resize((processor.image_size, processor.image_size), Image.Resampling.BICUBIC)
    return {"pixel_values": torch.from_numpy(normalize(resized, processor.mean, processor.std)[None])}


def baseline_for(processor) -> Any:
    """The reference pipeline producing what ``processor`` produces."""
    if isinstance(processor, HybridImageProcessor):
        return lambda image: llava_next_anyres(image, processor)
    if isinstance(processor, ClipImageProcessor):
        return lambda image: llava_pad(image, processor)
    raise ValueError(f"no reference pipeline for {type(processor).__name__}")

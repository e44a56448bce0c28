"""Opening record images safely: paths stay inside the image root; errors name the record."""
from __future__ import annotations

import os
from pathlib import Path

from PIL import Image


class ImageLoadError(ValueError):
    """An image that cannot be used (missing, unreadable, outside the root)."""


def resolve_image_path(image_root: Path, relative: str) -> Path:
    """``image_root / relative``, refusing absolute paths and ``..`` that leave the folder.

    The check is lexical on purpose: symlinks *inside* the image folder (the usual way
    datasets stored elsewhere are put under one root) are followed, not rejected.
    """
    if Path(relative).is_absolute():
        raise ImageLoadError(f"absolute image path {relative!r} is not allowed (paths are relative "
                             f"to the image folder {image_root})")
    normalized = os.path.normpath(relative)
    if normalized == os.pardir or normalized.startswith(os.pardir + os.sep):
        raise ImageLoadError(f"image path {relative!r} escapes the image folder {image_root}")
    return Path(image_root) / normalized


def load_rgb_image(path: Path) -> Image.Image:
    """Decode fully (so truncated files fail here, not in a worker later) and convert to RGB."""
    if not path.is_file():
        raise ImageLoadError(f"image file not found: {path}")
    try:
        with Image.open(path) as image:
            image.load()
            if image.mode == "RGB":
                return image.copy()
            # Palette/alpha/CMYK/16-bit: composite alpha on white, then RGB.
            if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
                rgba = image.convert("RGBA")
                background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
                return Image.alpha_composite(background, rgba).convert("RGB")
            if image.mode in ("I;16", "I;16B", "I;16L", "I"):
                return image.point(lambda value: value / 256).convert("L").convert("RGB")
            return image.convert("RGB")
    except ImageLoadError:
        raise
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as error:
        raise ImageLoadError(f"unreadable image {path}: {error}") from None

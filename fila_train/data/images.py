"""Opening record images safely: paths stay inside the image root; errors name the record."""
from __future__ import annotations

import os
import struct
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO

from PIL import Image, ImageFile, UnidentifiedImageError


# PIL's default limit (about 89.5 Mpixels); beyond it a record's image is refused, not decoded.
# Our max_pixels is the only limit applied: PIL's own check is bypassed (see open_image).
DEFAULT_MAX_PIXELS = Image.MAX_IMAGE_PIXELS
# image.info key: the file's full (W, H). An image decoded at reduced size keeps deciding what
# depends on the source size (FILA's anyres canvas, hence its token count) by this size.
SOURCE_SIZE = "source_size"
# (W, H) of the file -> the smallest (W, H) every output of an image processor can be made from.
DecodeSize = Callable[[int, int], tuple[int, int]]


class ImageLoadError(ValueError):
    """An image that cannot be used (missing, unreadable, outside the root)."""

    kind = "bad_image_path"


class MissingImageError(ImageLoadError):
    kind = "missing_image"


class UnreadableImageError(ImageLoadError):
    kind = "unreadable_image"


class ImageTooLargeError(ImageLoadError):
    kind = "image_too_large"


def check_relative_image_path(relative: str, allow_absolute: bool = False) -> str:
    """The normalised path, refusing absolute paths (unless allowed) and ``..`` that leave the root.

    The check is lexical on purpose: symlinks *inside* the image folder (the usual way
    datasets stored elsewhere are put under one root) are followed, not rejected.
    """
    if Path(relative).is_absolute():
        if allow_absolute:
            return os.path.normpath(relative)
        raise ImageLoadError(f"absolute image path {relative!r} is not allowed (paths are relative "
                             f"to the image folder; a mixture source may set allow_absolute_paths)")
    normalized = os.path.normpath(relative)
    if normalized == os.pardir or normalized.startswith(os.pardir + os.sep):
        raise ImageLoadError(f"image path {relative!r} escapes the image folder")
    return normalized


def resolve_image_path(image_root: Path, relative: str, allow_absolute: bool = False) -> Path:
    """``image_root / relative`` after check_relative_image_path (absolute paths stay as they are)."""
    try:
        return Path(image_root) / check_relative_image_path(relative, allow_absolute)
    except ImageLoadError as error:
        raise ImageLoadError(f"{error} (image folder {image_root})") from None


def require_file(path: Path) -> None:
    if not path.is_file():
        raise MissingImageError(f"image file not found: {path}")


def identify(handle: BinaryIO, path: Path) -> ImageFile.ImageFile:
    """The image in ``handle``, header read, pixels not: what Image.open does, minus its
    decompression-bomb check. That check reads PIL's process-wide MAX_IMAGE_PIXELS, refuses at twice
    it and only warns below, so no limit of ours could be raised past it or hold below it without
    changing PIL's global state."""
    prefix = handle.read(16)
    for register_plugins in (Image.preinit, Image.init):  # common formats first, as Image.open
        register_plugins()
        for format_id in Image.ID:
            factory, accept = Image.OPEN[format_id]
            accepted = not accept or accept(prefix)
            if isinstance(accepted, str) or not accepted:  # a str is PIL's "almost" warning
                continue
            handle.seek(0)
            try:
                return factory(handle, str(path))
            except (SyntaxError, IndexError, TypeError, struct.error):
                continue  # not this format after all (Image.open's rule)
    raise UnidentifiedImageError(f"cannot identify image file {str(path)!r}")


@contextmanager
def open_image(path: Path) -> Iterator[ImageFile.ImageFile]:
    """The image at ``path`` (lazily decoded, file closed on exit); callers apply their max_pixels."""
    require_file(path)
    with open(path, "rb") as handle:
        yield identify(handle, path)


def check_pixels(image: Image.Image, path: Path, max_pixels: int | None) -> None:
    width, height = image.size
    if max_pixels is not None and width * height > max_pixels:
        raise ImageTooLargeError(f"image {path} has {width}x{height} = {width * height} pixels, over the limit "
                                 f"of {max_pixels} (a decompression bomb guard; raise --max_image_pixels "
                                 f"if intended)")


def unreadable(path: Path, error: BaseException) -> ImageLoadError:
    if isinstance(error, Image.DecompressionBombError):
        # PIL checks some parts on its own while decoding (TIFF tiles, MPO frames).
        return ImageTooLargeError(f"image {path}: PIL refuses to decode it: {error}")
    return UnreadableImageError(f"unreadable image {path}: {error}")


# What PIL raises for files it cannot identify or decode.
PIL_ERRORS = (OSError, SyntaxError, ValueError, Image.DecompressionBombError)


def image_size(path: Path, max_pixels: int | None = DEFAULT_MAX_PIXELS) -> tuple[int, int]:
    """(W, H) from the file header, without decoding pixels; the same limit as load_rgb_image."""
    try:
        with open_image(path) as image:
            check_pixels(image, path, max_pixels)
            return image.size
    except ImageLoadError:
        raise
    except PIL_ERRORS as error:
        raise unreadable(path, error) from None


def load_rgb_image(path: Path, max_pixels: int | None = DEFAULT_MAX_PIXELS,
                   decode_size: DecodeSize | None = None) -> Image.Image:
    """Decode fully (so truncated files fail here, not in a worker later) and convert to RGB.

    ``max_pixels`` is checked from the header, before decoding: a decompression bomb must not
    reach a dataloader worker's memory. ``decode_size`` (the image processor's) allows a
    reduced-size JPEG decode (see draft_for).
    """
    try:
        with open_image(path) as image:
            check_pixels(image, path, max_pixels)
            size = image.size
            draft_for(image, decode_size)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # ours was checked above
                image.load()
            rgb = to_rgb(image)
            rgb.info[SOURCE_SIZE] = size
            return rgb
    except ImageLoadError:
        raise
    except PIL_ERRORS as error:
        raise unreadable(path, error) from None


def draft_for(image: Image.Image, decode_size: DecodeSize | None) -> bool:
    """Ask the JPEG decoder for a 1/2, 1/4 or 1/8 scale (DCT scaling: 2-3x faster, far less memory)
    when the processor needs at most half the file's size on both axes. PIL picks the smallest
    scale still at least the requested size, so nothing is upsampled later. Not JPEG: no-op."""
    if decode_size is None or image.format != "JPEG":
        return False
    need_w, need_h = decode_size(*image.size)
    if image.width < 2 * need_w or image.height < 2 * need_h:
        return False
    image.draft("RGB", (need_w, need_h))
    return True


def source_size(image: Image.Image) -> tuple[int, int]:
    """The (W, H) of the image's file, also after a reduced-size decode."""
    return tuple(image.info.get(SOURCE_SIZE, image.size))


def to_rgb(image: Image.Image) -> Image.Image:
    """Any PIL mode -> 8-bit RGB: alpha composited on white, 16-bit scaled, palette/CMYK converted."""
    if image.mode == "RGB":
        return image.copy()
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    if image.mode == "I" or image.mode.startswith("I;16"):
        # convert("L") would clip 16-bit values at 255 (a white image); scale them instead. point()
        # takes no big-endian I;16B (16-bit TIFF), so every 16-bit order goes through 32-bit "I" first.
        return image.convert("I").point(lambda value: value / 256).convert("L").convert("RGB")
    return image.convert("RGB")

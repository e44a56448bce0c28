"""Opening record images safely: paths stay inside the image root; errors name the record."""
from __future__ import annotations

import errno
import os
import stat
import threading
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO

import numpy as np
from PIL import Image, ImageFile, UnidentifiedImageError

from ..utils.image_size import SOURCE_SIZE
from ..utils.errors import DataRecordError


# PIL's default limit (about 89.5 Mpixels); beyond it a record's image is refused, not decoded.
# Our max_pixels is the only limit applied: PIL's own check is kept out of the way (see identify).
DEFAULT_MAX_PIXELS = Image.MAX_IMAGE_PIXELS
# (W, H) of the file -> the smallest (W, H) every output of an image processor can be made from.
DecodeSize = Callable[[int, int], tuple[int, int]]


class ImageLoadError(DataRecordError):
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


def file_error(path: Path, error: OSError) -> ImageLoadError:
    """An OSError from reaching the file at ``path``, said in words (one line, no errno)."""
    if error.errno in (errno.ENOENT, errno.ENOTDIR):
        return MissingImageError(f"image file not found: {path}")
    if error.errno == errno.EISDIR:
        return MissingImageError(f"image path {path} is a directory, not an image file")
    if error.errno == errno.ELOOP:
        return UnreadableImageError(f"unreadable image {path}: symlink loop (too many levels of symbolic links)")
    if error.errno in (errno.EACCES, errno.EPERM):
        return UnreadableImageError(f"unreadable image {path}: permission denied")
    return UnreadableImageError(f"unreadable image {path}: {(error.strerror or str(error)).lower()}")


def require_file(path: Path) -> None:
    """A regular file (symlinks followed); else why not: missing, a directory, a loop, unreachable."""
    try:
        mode = path.stat().st_mode
    except OSError as error:
        raise file_error(path, error) from None
    if stat.S_ISDIR(mode):
        raise file_error(path, IsADirectoryError(errno.EISDIR, "is a directory"))
    if not stat.S_ISREG(mode):  # opening a FIFO would block forever
        raise UnreadableImageError(f"unreadable image {path}: not a regular file (a FIFO, socket or device)")


# Held while PIL's process-wide MAX_IMAGE_PIXELS is lifted (see identify): two threads doing it at
# once could restore each other's lifted value and leave PIL's limit off.
_PIL_LIMIT_LOCK = threading.Lock()


def identify(handle: BinaryIO) -> ImageFile.ImageFile:
    """``Image.open`` on ``handle`` (header read, pixels not), with our max_pixels the only limit.

    PIL warns between 1x and 2x its MAX_IMAGE_PIXELS (silenced: check_header decides there) and
    refuses above 2x before our check could name the size; such a file is opened again with PIL's
    limit lifted for that one call, so a limit of ours above PIL's still holds, and PIL's global is
    left as it was.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        try:
            return Image.open(handle)
        except Image.DecompressionBombError:
            pass
        handle.seek(0)
        with _PIL_LIMIT_LOCK:
            pil_limit = Image.MAX_IMAGE_PIXELS
            Image.MAX_IMAGE_PIXELS = None
            try:
                return Image.open(handle)
            finally:
                Image.MAX_IMAGE_PIXELS = pil_limit


@contextmanager
def open_image(path: Path) -> Iterator[ImageFile.ImageFile]:
    """The image at ``path`` (lazily decoded, file closed on exit); callers apply their max_pixels."""
    require_file(path)
    try:
        handle = open(path, "rb")
    except OSError as error:  # changed since require_file, or not readable by us
        raise file_error(path, error) from None
    with handle:
        if os.fstat(handle.fileno()).st_size == 0:  # PIL would only say it cannot identify it
            raise UnreadableImageError(f"unreadable image {path}: empty file (0 bytes)")
        yield identify(handle)


def check_header(image: Image.Image, path: Path, max_pixels: int | None) -> None:
    """What the header already tells: too many pixels, or float pixels (mode F), which have no defined range of
    brightness (a 0-1 float TIFF became black, a 0-65535 one white). Both are refused before decoding, so the
    up-front checks (training's length pass, eval's prompt check) find them too."""
    if image.mode == "F":
        raise UnreadableImageError(f"unreadable image {path}: 32-bit floating-point pixels (mode F) have no defined "
                                   f"range of brightness; save the image with 8- or 16-bit pixels")
    width, height = image.size
    if max_pixels is not None and width * height > max_pixels:
        raise ImageTooLargeError(f"image {path} has {width}x{height} = {width * height} pixels, over the limit "
                                 f"of {max_pixels} (a decompression bomb guard; raise --max_image_pixels "
                                 f"if intended)")


def unreadable(path: Path, error: BaseException) -> ImageLoadError:
    if isinstance(error, Image.DecompressionBombError):
        # PIL checks some parts on its own while decoding (TIFF tiles, MPO frames).
        return ImageTooLargeError(f"image {path}: PIL refuses to decode it: {error}")
    if isinstance(error, UnidentifiedImageError):  # PIL's message names the file handle, not the path
        return UnreadableImageError(f"unreadable image {path}: cannot identify image file (no format PIL reads)")
    return UnreadableImageError(f"unreadable image {path}: {error}")


# What PIL raises for files it cannot identify or decode.
PIL_ERRORS = (OSError, SyntaxError, ValueError, Image.DecompressionBombError)


def image_size(path: Path, max_pixels: int | None = DEFAULT_MAX_PIXELS) -> tuple[int, int]:
    """(W, H) from the file header, without decoding pixels; the same limit as load_rgb_image."""
    try:
        with open_image(path) as image:
            check_header(image, path, max_pixels)
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
            check_header(image, path, max_pixels)
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


def to_rgb(image: Image.Image) -> Image.Image:
    """Any PIL mode -> 8-bit RGB: alpha and transparent colours composited on white, 16-bit scaled, palette/CMYK
    converted (float pixels never get here: check_header)."""
    # A transparent colour key (tRNS) is transparency too, in RGB and grayscale PNGs as in palette ones.
    if image.mode in ("RGBA", "LA", "PA") or (image.mode in ("P", "L", "RGB") and "transparency" in image.info):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    if image.mode == "RGB":
        return image.copy()
    if image.mode == "I" or image.mode.startswith("I;16"):
        return sixteen_bit_to_rgb(image)
    return image.convert("RGB")


def sixteen_bit_to_rgb(image: Image.Image) -> Image.Image:
    """16-bit grayscale scaled to 8 bits (convert("L") would clip at 255: a white image), its tRNS key value
    white. Every byte order goes through 32-bit "I" first: numpy and point() take no big-endian I;16B."""
    values = np.asarray(image.convert("I"))
    gray = (values >> 8).clip(0, 255).astype(np.uint8)
    key = image.info.get("transparency")
    if isinstance(key, int):
        gray[values == key] = 255
    return Image.fromarray(gray).convert("RGB")

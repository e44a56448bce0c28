"""An image's file size, kept across a reduced-size decode.

The loader (data/images.py) may decode a JPEG at 1/2..1/8 scale when the processor needs no more. What
depends on the file's size (FILA's anyres canvas, hence its token count) must still follow the file, so
the loader records it in the image's ``info`` and the image processors read it back here.
"""
from __future__ import annotations

from PIL import Image

SOURCE_SIZE = "source_size"  # image.info key: the file's full (W, H)


def source_size(image: Image.Image) -> tuple[int, int]:
    """The (W, H) of the image's file, also after a reduced-size decode."""
    return tuple(image.info.get(SOURCE_SIZE, image.size))

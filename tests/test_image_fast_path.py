"""Reduced-size JPEG decoding (PIL draft) in the image loader, driven by the processor's decode_size.

A draft decode keeps every processed tensor within a small tolerance of the full decode (same
shapes, same anyres canvas and token count), and happens only for JPEGs at least 2x larger than
the processor needs on both axes. Pure CPU image work; ~3 s.
"""
from __future__ import annotations

import pytest
import torch
from PIL import Image, ImageDraw

from fila_train.data.images import load_rgb_image
from fila_train.utils.image_size import SOURCE_SIZE, source_size
from fila_train.model.vision.anyres import AnyresConfig
from fila_train.model.vision.clip_encoder import ClipImageProcessor
from fila_train.model.vision.hybrid_encoder import HybridImageProcessor

PROCESSORS = {
    "clip_336": ClipImageProcessor(336, 14),
    "fila_336": HybridImageProcessor(AnyresConfig()),
    "fila_tiny": HybridImageProcessor(AnyresConfig(tile_size=56, canvases=((112, 112), (56, 112), (112, 56)))),
}


def photo_like(width: int, height: int) -> Image.Image:
    """Smooth gradients plus sharp shapes and lines: both kinds of content a decoder can get wrong."""
    x = torch.linspace(0, 1, width).view(1, -1).expand(height, -1)
    y = torch.linspace(0, 1, height).view(-1, 1).expand(-1, width)
    pixels = torch.stack([x, y, (x + y) / 2]).mul(255).byte().permute(1, 2, 0).contiguous()
    image = Image.fromarray(pixels.numpy())
    draw = ImageDraw.Draw(image)
    for k in range(12):
        box = (k * width // 13, k * height // 17, k * width // 13 + width // 9, k * height // 17 + height // 7)
        draw.ellipse(box, fill=(40 * k % 256, 255 - 20 * k, 90))
        draw.line((0, k * height // 12, width, height - k * height // 12), fill=(250, 250, 250), width=3)
    return image


def save_jpeg(tmp_path, width: int, height: int):
    path = tmp_path / f"photo_{width}x{height}.jpg"
    photo_like(width, height).save(path, quality=95)
    return path


@pytest.mark.parametrize("name", PROCESSORS)
def test_draft_decode_stays_close_to_full_decode(tmp_path, name):
    processor = PROCESSORS[name]
    path = save_jpeg(tmp_path, 3600, 2400)  # >= 2x what each processor needs, FILA's 1536 canvas included
    full_image = load_rgb_image(path)
    draft_image = load_rgb_image(path, decode_size=processor.decode_size)
    assert full_image.size == (3600, 2400) and draft_image.width < 3600  # the draft was used...
    need = processor.decode_size(3600, 2400)
    assert draft_image.width >= need[0] and draft_image.height >= need[1]  # ...and nothing gets upsampled
    assert source_size(draft_image) == (3600, 2400)

    full, draft = processor(full_image), processor(draft_image)
    assert full.keys() == draft.keys()
    assert full.get("grid") == draft.get("grid")  # same canvas from the file's size: same token count
    assert processor.num_image_tokens(full) == processor.num_image_tokens(draft)
    for key, value in full.items():
        if isinstance(value, torch.Tensor):
            assert value.shape == draft[key].shape, key
            difference = (value - draft[key]).abs()
            # CLIP-normalised units (1/255 of intensity is ~0.015): resampling noise, not a shift.
            assert difference.mean() < 0.02, (key, difference.mean())
            assert difference.quantile(0.99) < 0.2, (key, difference.quantile(0.99))


def test_draft_only_when_at_least_twice_the_needed_size(tmp_path):
    processor = PROCESSORS["clip_336"]  # a square image needs 336 x 336
    assert processor.decode_size(671, 671) == (336, 336)
    just_below = load_rgb_image(save_jpeg(tmp_path, 671, 671), decode_size=processor.decode_size)
    assert just_below.size == (671, 671)
    at_twice = load_rgb_image(save_jpeg(tmp_path, 672, 672), decode_size=processor.decode_size)
    assert at_twice.size == (336, 336) and at_twice.info[SOURCE_SIZE] == (672, 672)
    # FILA's high-resolution canvas needs far more: the same file is decoded in full.
    fila = PROCESSORS["fila_336"]
    assert load_rgb_image(save_jpeg(tmp_path, 672, 672), decode_size=fila.decode_size).size == (672, 672)


def test_no_draft_without_decode_size_or_for_other_formats(tmp_path):
    processor = PROCESSORS["clip_336"]
    jpeg = save_jpeg(tmp_path, 1600, 1600)
    assert load_rgb_image(jpeg).size == (1600, 1600)
    png = tmp_path / "photo.png"
    photo_like(1600, 1600).save(png)
    image = load_rgb_image(png, decode_size=processor.decode_size)
    assert image.size == (1600, 1600) and source_size(image) == (1600, 1600)


def test_a_very_long_image_is_padded_to_square_within_a_bounded_canvas(tmp_path):
    """LLaVA's pad-to-square built the whole padded square before resizing it: a 40x60000 strip (a PNG of a few
    KB, 2.4 Mpx) asked for a 60000x60000 canvas, 10 GiB, and a dataloader worker died of it naming no record.
    In a fresh process, processing it stays within a small fraction of that; and an image just over the bound,
    whose exact square can be built, comes out as the exact path gives it, to resampling noise."""
    import subprocess
    import sys

    from fila_train.model.vision.clip_encoder import MAX_SQUARE_SIDE, expand_to_square, padding_fill, \
        to_normalized_tensor

    strip = tmp_path / "strip.png"
    photo_like(40, 60000).save(strip)
    code = ("import resource; from PIL import Image; from fila_train.model.vision.clip_encoder import "
            "ClipImageProcessor; image = Image.open(r'%s'); image.load(); "
            "shape = ClipImageProcessor(336, 14)(image)['pixel_values'].shape; "
            "print(tuple(shape), resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)" % strip)
    shape, peak_kib = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                                     check=True).stdout.rsplit(" ", 1)
    assert shape == "(1, 3, 336, 336)"
    assert int(peak_kib) < 2 * 1024 ** 2, f"peak {int(peak_kib) / 1024 ** 2:.1f} GiB"  # the square alone: 10 GiB

    processor = PROCESSORS["clip_336"]
    image = photo_like(300, MAX_SQUARE_SIDE + 800)
    exact = expand_to_square(image, padding_fill(processor.mean)).resize((336, 336), Image.Resampling.BICUBIC)
    difference = (processor(image)["pixel_values"][0] - to_normalized_tensor(exact)).abs()
    assert difference.mean() < 0.02 and difference.quantile(0.99) < 0.2, (difference.mean(), difference.max())

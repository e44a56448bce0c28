"""Every class of bad input from issue #5: an error naming file, line, record id and field by
default; with on_bad_sample="skip" the sample is replaced by the next one and counted by kind."""
from __future__ import annotations

import json
import struct
import warnings
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from fila_train.data.collator import ConversationCollator
from fila_train.data.dataset import DatasetOptions, SampleError
from fila_train.data.images import (DEFAULT_MAX_PIXELS, ImageTooLargeError, UnreadableImageError, image_size,
                                    load_rgb_image)
from fila_train.data.mixed_dataset import MixtureDataset
from fila_train.data.mixture import single_source
from fila_train.model.configuration import IMAGE_TOKEN_ID
from test_dataset import PROCESSOR, record, tokenizer  # noqa: F401  (tokenizer is a fixture)

GOOD = record("good", images="ok.png")


def human(value: str) -> dict:
    return {"from": "human", "value": value}


def gpt(value: str) -> dict:
    return {"from": "gpt", "value": value}


def write_truncated_png(path: Path) -> None:
    Image.new("RGB", (64, 64), (10, 200, 10)).save(path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


# kind -> (bad record as a JSONL line, expected error fragments, expected skip kind)
BAD_LINES = {
    "missing_image": (json.dumps(record("r-missing", images="nowhere.png")), ["field 'image'", "not found"],
                      "missing_image"),
    "corrupt_image": (json.dumps(record("r-corrupt", images="corrupt.png")), ["field 'image'", "unreadable"],
                      "unreadable_image"),
    "truncated_image": (json.dumps(record("r-trunc", images="truncated.png")), ["field 'image'", "unreadable"],
                        "unreadable_image"),
    "bomb": (json.dumps(record("r-bomb", images="huge.png")), ["field 'image'", "over the limit"],
             "image_too_large"),
    "malformed_json": ('{"id": "r-json", "conversations": [', ["malformed JSON"], "malformed_json"),
    "no_conversations": (json.dumps({"id": "r-noconv", "image": "ok.png"}), ["no field 'conversations'"],
                         "invalid_record"),
    "placeholder_count": (json.dumps({"id": "r-count", "image": ["ok.png", "ok.png"],
                                      "conversations": [human("<image>\nq"), gpt("a")]}),
                          ["1 '<image>' placeholder(s)", "2 image(s) in field 'image'"], "invalid_record"),
    "not_alternating": (json.dumps({"id": "r-alt", "conversations": [human("a"), human("b"), gpt("c")]}),
                        ["conversations[1]", "alternate"], "invalid_record"),
    "assistant_first": (json.dumps({"id": "r-first", "conversations": [gpt("a"), human("b")]}),
                        ["conversations[0]", "starting with the human"], "invalid_record"),
    "empty_answer": (json.dumps({"id": "r-empty", "conversations": [human("q"), gpt("  ")]}),
                     ["conversations[1]", "empty assistant answer"], "invalid_record"),
    "escaping_path": (json.dumps(record("r-escape", images="../secret.png")), ["escapes the image folder"],
                      "invalid_record"),
    "absolute_path": (json.dumps(record("r-abs", images="/etc/passwd")), ["absolute image path"],
                      "invalid_record"),
}


@pytest.fixture
def image_root(tmp_path: Path) -> Path:
    root = tmp_path / "images"
    root.mkdir()
    Image.new("RGB", (40, 30), (200, 30, 30)).save(root / "ok.png")
    (root / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n this is not a png")
    write_truncated_png(root / "truncated.png")
    Image.new("L", (300, 300)).save(root / "huge.png")  # over the tiny pixel limit used below
    Image.new("RGB", (8, 8)).save(tmp_path / "secret.png")
    return root


def dataset_for(tmp_path: Path, image_root: Path, tokenizer, lines: list[str], policy: str) -> MixtureDataset:
    path = tmp_path / "data.jsonl"
    path.write_text("\n".join(lines) + "\n")
    options = DatasetOptions(max_length=1024, on_bad_sample=policy, max_image_pixels=200 * 200)
    return MixtureDataset(single_source(path, image_root), tokenizer, "vicuna_v1", IMAGE_TOKEN_ID, PROCESSOR,
                          options)


@pytest.mark.parametrize("case", sorted(BAD_LINES))
def test_bad_record_is_an_error_naming_file_line_and_record(case: str, tmp_path: Path, image_root: Path,
                                                            tokenizer) -> None:
    line, fragments, _ = BAD_LINES[case]
    dataset = dataset_for(tmp_path, image_root, tokenizer, [json.dumps(GOOD), line], "error")
    assert dataset[0]["id"] == "good"
    with pytest.raises(SampleError) as error:
        dataset[1]
    message = str(error.value)
    assert f"{tmp_path / 'data.jsonl'}:2" in message, message
    record_id = json.loads(line)["id"] if case != "malformed_json" else None
    if record_id:
        assert repr(record_id) in message, message
    for fragment in fragments:
        assert fragment in message, (fragment, message)


@pytest.mark.parametrize("case", sorted(BAD_LINES))
def test_bad_record_is_skipped_and_counted_when_asked(case: str, tmp_path: Path, image_root: Path,
                                                      tokenizer) -> None:
    line, _, kind = BAD_LINES[case]
    dataset = dataset_for(tmp_path, image_root, tokenizer, [json.dumps(GOOD), line, json.dumps(GOOD)], "skip")
    sample = dataset[1]  # replaced by the next usable record
    assert sample["id"] == "good" and sample["skipped"] == [kind]
    assert (sample["labels"] != -100).any()  # never a sample with loss 0
    assert dict(dataset.skip_counts) == {kind: 1}
    # The kinds travel with the batch, so counts made in dataloader workers reach the trainer.
    batch = ConversationCollator(0, PROCESSOR)([dataset[0], sample])
    assert batch["skipped"] == [kind]


def test_a_dataset_of_only_bad_records_fails_even_when_skipping(tmp_path: Path, image_root: Path,
                                                                tokenizer) -> None:
    lines = [BAD_LINES["missing_image"][0], BAD_LINES["empty_answer"][0]]
    dataset = dataset_for(tmp_path, image_root, tokenizer, lines, "skip")
    with pytest.raises(SampleError, match="no usable sample"):
        dataset[0]


def test_absolute_paths_are_allowed_only_when_the_source_says_so(tmp_path: Path, image_root: Path) -> None:
    from fila_train.data.validation import RecordError, check_record

    absolute = record("abs", images=str(image_root / "ok.png"))
    with pytest.raises(RecordError, match="absolute image path"):
        check_record(absolute, "here")
    assert check_record(absolute, "here", allow_absolute_images=True) == [str(image_root / "ok.png")]


# ------------------------------------------------------------------------------------------------
# unusual image modes are converted correctly, not errors
# ------------------------------------------------------------------------------------------------
def test_cmyk_converts_to_the_same_rgb(tmp_path: Path) -> None:
    Image.new("CMYK", (16, 16), (0, 255, 255, 0)).save(tmp_path / "cmyk.jpg", quality=100)
    pixels = np.asarray(load_rgb_image(tmp_path / "cmyk.jpg"))
    assert pixels.shape == (16, 16, 3)
    assert pixels[..., 0].min() > 240 and pixels[..., 1:].max() < 15  # pure red


def test_palette_image_converts_through_its_palette(tmp_path: Path) -> None:
    image = Image.new("P", (8, 8))
    image.putpalette([0, 0, 0, 10, 20, 250] + [0] * 762)
    image.putdata([1] * 64)
    image.save(tmp_path / "palette.png")
    assert np.asarray(load_rgb_image(tmp_path / "palette.png"))[0, 0].tolist() == [10, 20, 250]


def test_alpha_is_composited_on_white(tmp_path: Path) -> None:
    Image.new("RGBA", (8, 8), (255, 0, 0, 0)).save(tmp_path / "clear.png")  # fully transparent red
    Image.new("LA", (8, 8), (0, 255)).save(tmp_path / "black.png")  # opaque black
    assert np.asarray(load_rgb_image(tmp_path / "clear.png"))[0, 0].tolist() == [255, 255, 255]
    assert np.asarray(load_rgb_image(tmp_path / "black.png"))[0, 0].tolist() == [0, 0, 0]


def test_16_bit_grayscale_is_scaled_not_clipped(tmp_path: Path) -> None:
    values = np.array([[0, 32768, 65535, 1024]], dtype=np.uint16)
    Image.fromarray(values).save(tmp_path / "deep.png")
    pixels = np.asarray(load_rgb_image(tmp_path / "deep.png"))
    assert pixels[0, :, 0].tolist() == [0, 128, 255, 4]  # convert("L") would clip all but 0 to 255
    assert (pixels[..., 0] == pixels[..., 2]).all()


def test_16_bit_big_endian_tiff_is_scaled_like_little_endian(tmp_path: Path) -> None:
    values = np.array([[0, 32768, 65535, 1024]], dtype=">u2")
    Image.fromarray(values).save(tmp_path / "deep.tif")
    with Image.open(tmp_path / "deep.tif") as written:
        assert written.mode == "I;16B"  # the mode PIL cannot point() directly
    pixels = np.asarray(load_rgb_image(tmp_path / "deep.tif"))
    assert pixels[0, :, 0].tolist() == [0, 128, 255, 4] and (pixels[..., 0] == pixels[..., 1]).all()


def header_only_png(path: Path, width: int, height: int) -> Path:
    """A valid PNG header claiming ``width`` x ``height`` with (almost) no pixel data: a cheap bomb."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)  # 8-bit grayscale
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 16))
                     + chunk(b"IEND", b""))
    return path


# PIL alone refuses over 2x its limit (DecompressionBombError) and only warns between 1x and 2x.
@pytest.mark.parametrize("width,height", [(20_000, 10_000), (10_000, 10_000)], ids=["over_2x_pil", "1x_to_2x_pil"])
def test_the_pixel_limit_is_ours_alone(tmp_path: Path, width: int, height: int) -> None:
    path = header_only_png(tmp_path / "bomb.png", width, height)
    pil_limit = Image.MAX_IMAGE_PIXELS
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for read in (image_size, load_rgb_image):
            with pytest.raises(ImageTooLargeError, match=f"{width}x{height} = {width * height} pixels, over the "
                                                         f"limit of {DEFAULT_MAX_PIXELS}") as error:
                read(path)
            assert error.value.kind == "image_too_large"
        # Raised above PIL's hard limit, ours decides: the header is accepted (the pixels are not
        # there, so a decode would fail as unreadable, not as too large).
        assert image_size(path, max_pixels=width * height) == (width, height)
        assert image_size(path, max_pixels=None) == (width, height)
    assert not [w for w in caught if issubclass(w.category, Image.DecompressionBombWarning)]
    assert Image.MAX_IMAGE_PIXELS == pil_limit  # PIL's global state is left alone


def test_a_file_that_is_no_image_is_unreadable_from_its_header(tmp_path: Path) -> None:
    (tmp_path / "notes.png").write_text("not an image")
    with pytest.raises(UnreadableImageError, match="cannot identify image file"):
        image_size(tmp_path / "notes.png")


def test_image_just_under_the_pixel_limit_loads(tmp_path: Path) -> None:
    Image.new("RGB", (100, 100)).save(tmp_path / "fits.png")
    assert load_rgb_image(tmp_path / "fits.png", max_pixels=100 * 100).size == (100, 100)

"""Every class of bad input from issue #5: an error naming file, line, record id and field by
default; with on_bad_sample="skip" the sample is replaced by another one and the record counted by kind."""
from __future__ import annotations

import json
import os
import pickle
import shutil
import struct
import tempfile
import warnings
import zlib
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from distributed_utils import written_later
from fila_train.data.collator import ConversationCollator
from fila_train.data.dataset import DatasetOptions, SampleError
from fila_train.data.images import (DEFAULT_MAX_PIXELS, ImageTooLargeError, UnreadableImageError, image_size,
                                    load_rgb_image)
from fila_train.data.mixed_dataset import MixtureDataset
from fila_train.data.mixture import single_source
from fila_train.model.configuration import IMAGE_TOKEN_ID
from fila_train.processing.tokenization import ConversationTokenizer
from fila_train.processing.chat_templates import get_template
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
    "invisible_answer": (json.dumps({"id": "r-invisible", "conversations": [human("q"), gpt("\u200b\ufeff ")]}),
                         ["conversations[1]", "empty assistant answer"], "invalid_record"),
    # Valid JSON (an escaped lone surrogate), as text cut in the middle of an emoji comes out of scrapers.
    "cut_emoji": ('{"id": "r-emoji", "conversations": [{"from": "human", "value": "q"}, '
                  '{"from": "gpt", "value": "Fine \\ud83d"}]}',
                  ["conversations[1].value", "lone surrogate", "'\\ud83d'"], "invalid_record"),
    "escaping_path": (json.dumps(record("r-escape", images="../secret.png")), ["escapes the image folder"],
                      "invalid_record"),
    "absolute_path": (json.dumps(record("r-abs", images="/etc/passwd")), ["absolute image path"],
                      "invalid_record"),
    "empty_image": (json.dumps(record("r-zero", images="empty.png")), ["field 'image'", "empty file (0 bytes)"],
                    "unreadable_image"),
    "directory_image": (json.dumps(record("r-dir", images="folder.png")), ["field 'image'", "is a directory"],
                        "missing_image"),
    "symlink_loop": (json.dumps(record("r-loop", images="loop_a.png")), ["field 'image'", "symlink loop"],
                     "unreadable_image"),
    "unreadable_file": (json.dumps(record("r-locked", images="locked.png")), ["field 'image'", "permission denied"],
                        "unreadable_image"),
}
# Cases whose file is refused by its permissions: root ignores those (see as_unprivileged).
PERMISSION_CASES = {"unreadable_file"}
NOBODY = 65534  # the unprivileged uid and gid a root test switches to


@pytest.fixture
def folder(tmp_path: Path) -> Iterator[Path]:
    """Where a test's data and images go. As root, a world-readable folder outside pytest's private
    (0700) tmp tree, so an unprivileged child can reach everything but the file it must not read."""
    if os.geteuid() != 0:
        yield tmp_path
        return
    path = Path(tempfile.mkdtemp(prefix="fila-bad-samples-"))
    path.chmod(0o755)
    umask = os.umask(0o022)  # files written for the test are readable by the child
    try:
        yield path
    finally:
        os.umask(umask)
        shutil.rmtree(path)


def call(function: Callable[[], object]) -> object:
    return function()


def as_unprivileged(function: Callable[[], object]) -> object:
    """``function()`` where file permissions apply. Root ignores them, so as root it runs in a forked
    child switched to the 'nobody' user; its result, or its exception (type, message, kind), comes
    back through a pipe. The child may not be allowed to read the interpreter's own files (a private
    home), so what it runs must be imported before: the caller warms its code path up, and PIL's
    plugins are loaded here."""
    if os.geteuid() != 0:
        return function()
    Image.init()
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: never returns into pytest
        try:
            os.close(read_end)
            os.setgroups([])
            os.setgid(NOBODY)
            os.setuid(NOBODY)
            try:
                outcome = ("returned", function())
            except BaseException as error:  # noqa: BLE001 (every outcome goes back to the test)
                outcome = ("raised", type(error), str(error), getattr(error, "kind", None))
            with os.fdopen(write_end, "wb") as pipe:
                pipe.write(pickle.dumps(outcome))
        finally:
            os._exit(0)
    os.close(write_end)
    with os.fdopen(read_end, "rb") as pipe:
        data = pipe.read()
    _, status = os.waitpid(pid, 0)
    assert data, f"the unprivileged child died without an answer (wait status {status})"
    outcome = pickle.loads(data)
    if outcome[0] == "returned":
        return outcome[1]
    _, error_type, message, kind = outcome
    error = error_type(message)
    if kind is not None:
        error.kind = kind
    raise error


@pytest.fixture
def image_root(folder: Path) -> Path:
    root = folder / "images"
    root.mkdir()
    Image.new("RGB", (40, 30), (200, 30, 30)).save(root / "ok.png")
    (root / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n this is not a png")
    write_truncated_png(root / "truncated.png")
    Image.new("L", (300, 300)).save(root / "huge.png")  # over the tiny pixel limit used below
    Image.new("RGB", (8, 8)).save(folder / "secret.png")
    (root / "empty.png").touch()
    (root / "folder.png").mkdir()
    (root / "loop_a.png").symlink_to("loop_b.png")
    (root / "loop_b.png").symlink_to("loop_a.png")
    Image.new("RGB", (8, 8)).save(root / "locked.png")
    (root / "locked.png").chmod(0)
    return root


def dataset_for(tmp_path: Path, image_root: Path, tokenizer, lines: list[str], policy: str) -> MixtureDataset:
    path = tmp_path / "data.jsonl"
    path.write_text("\n".join(lines) + "\n")
    options = DatasetOptions(max_length=1024, on_bad_sample=policy, max_image_pixels=200 * 200)
    conversations = ConversationTokenizer(tokenizer, get_template("vicuna_v1"), IMAGE_TOKEN_ID)
    return MixtureDataset(single_source(path, image_root), conversations, PROCESSOR, options)


@pytest.mark.parametrize("case", sorted(BAD_LINES))
def test_bad_record_is_an_error_naming_file_line_and_record(case: str, folder: Path, image_root: Path,
                                                            tokenizer) -> None:
    line, fragments, kind = BAD_LINES[case]
    dataset = dataset_for(folder, image_root, tokenizer, [json.dumps(GOOD), line], "error")
    assert dataset[0]["id"] == "good"
    run = as_unprivileged if case in PERMISSION_CASES else call
    with pytest.raises(SampleError) as error:
        run(lambda: dataset[1])
    message = str(error.value)
    assert error.value.kind == kind and "\n" not in message, message
    assert f"{folder / 'data.jsonl'}:2" in message, message
    record_id = json.loads(line)["id"] if case != "malformed_json" else None
    if record_id:
        assert repr(record_id) in message, message
    for fragment in fragments:
        assert fragment in message, (fragment, message)


@pytest.mark.parametrize("case", sorted(BAD_LINES))
def test_bad_record_is_skipped_and_counted_when_asked(case: str, folder: Path, image_root: Path,
                                                      tokenizer) -> None:
    line, _, kind = BAD_LINES[case]
    dataset = dataset_for(folder, image_root, tokenizer, [json.dumps(GOOD), line, json.dumps(GOOD)], "skip")
    first = dataset[0]  # also imports what drawing a sample needs (see as_unprivileged)

    def draw() -> dict:
        sample = dataset[1]  # replaced by a usable record
        # The skipped records travel with the batch, so skips made in dataloader workers reach the trainer.
        batch = ConversationCollator(0, PROCESSOR)([first, sample])
        return {"id": sample["id"], "skipped": sample["skipped"], "trains": bool((sample["labels"] != -100).any()),
                "counts": dict(dataset.skip_counts), "batch_skipped": batch["skipped"]}

    drawn = (as_unprivileged if case in PERMISSION_CASES else call)(draw)
    assert drawn["id"] == "good" and drawn["skipped"] == [(kind, "data#1")]
    assert drawn["trains"]  # never a sample with loss 0
    assert drawn["counts"] == {kind: 1}
    assert drawn["batch_skipped"] == [(kind, "data#1")]


def test_a_dataset_of_only_bad_records_fails_even_when_skipping(folder: Path, image_root: Path,
                                                                tokenizer) -> None:
    lines = [BAD_LINES["missing_image"][0], BAD_LINES["empty_answer"][0]]
    dataset = dataset_for(folder, image_root, tokenizer, lines, "skip")
    with pytest.raises(SampleError, match="no usable sample"):
        dataset[0]


def test_under_modality_grouping_the_error_names_the_side_with_no_usable_record(folder: Path, image_root: Path,
                                                                               tokenizer) -> None:
    """Grouped by modality, a bad image sample is replaced only by another image sample. When the image side has
    none left, the text-only records are still fine: before, the error said "every record was skipped"."""
    lines = [json.dumps(record("text", images=None)), BAD_LINES["truncated_image"][0]]
    dataset = dataset_for(folder, image_root, tokenizer, lines, "skip")
    dataset.modality_lengths = np.array([-20, 90])  # the truncated image's header is fine, so it measures
    assert dataset[0]["id"] == "text"
    with pytest.raises(SampleError, match="no usable sample with an image") as error:
        dataset[1]
    assert "every record with an image was skipped" in str(error.value)
    assert "--group_by_modality_length" in str(error.value)


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


TEXT_A, TEXT_D, IMAGE = record("text-a"), record("text-d"), record("image-c", images="ok.png")


# The sampler's signed lengths: + image, - text-only, 0 unusable (grouped with the text-only side).
@pytest.mark.parametrize("records,lengths,expected,kind", [
    ([TEXT_A, record("r-missing", images="nowhere.png"), IMAGE, TEXT_D], [-5, 0, 9, -6], {"text-a", "text-d"},
     "missing_image"),
    ([IMAGE, record("r-trunc", images="truncated.png"), TEXT_A, IMAGE], [9, 9, -5, 8], {"image-c"},
     "unreadable_image"),
], ids=["text_batch", "image_batch"])
def test_a_replacement_keeps_the_modality_the_sampler_grouped_it_by(tmp_path: Path, image_root: Path, tokenizer,
                                                                    records, lengths, expected, kind) -> None:
    """With --group_by_modality_length image and text-only samples never share a batch: a bad record is
    replaced by a usable one of its side, not by any record."""
    dataset = dataset_for(tmp_path, image_root, tokenizer, [json.dumps(r) for r in records], "skip")
    dataset.modality_lengths = np.array(lengths)
    sample = dataset[1]
    assert sample["id"] in expected and sample["skipped"] == [(kind, "data#1")]
    assert bool(sample["images"]) == (expected == {"image-c"})


def test_a_run_of_bad_records_spreads_over_the_good_ones_and_each_counts_once(folder: Path, image_root: Path,
                                                                             tokenizer, caplog) -> None:
    """A source whose images are all missing (a wrong image_root), ahead of 20 good records, under skip. Before,
    each bad position was replaced by the next one: all 200 became the first good record (201 copies of it in an
    epoch), each draw rebuilt every bad record before it (work quadratic in the bad records) and the count
    said 20100."""
    bad = [json.dumps(record(f"bad-{k}", images="nowhere.png")) for k in range(200)]
    good = [json.dumps(record(f"good-{k}", images="ok.png")) for k in range(20)]
    dataset = dataset_for(folder, image_root, tokenizer, bad + good, "skip")
    with caplog.at_level("DEBUG", logger="fila_train.data.dataset"):
        ids = [dataset[index]["id"] for index in range(len(dataset))]
    copies = Counter(ids)
    assert set(copies) == {f"good-{k}" for k in range(20)}  # each good record once, plus its share of the bad ones
    assert max(copies.values()) <= 3 * len(ids) / 20, copies  # ~11 each; binomial spread, not a pile
    assert dataset.skip_counts == {"missing_image": 200}
    built_bad = [r for r in caplog.records if "skipped sample" in r.getMessage()]
    assert len(built_bad) == 200  # each bad record was tried once, not once per draw that passed it


def test_skips_are_logged_a_few_times_then_only_counted(folder: Path, image_root: Path, tokenizer, caplog) -> None:
    """A mixture with 1% bad records skips thousands over a run: before, each skip was a warning of its own, on the
    progress bar of every rank and worker, every epoch. The first few name their record; the run's end counts all."""
    missing = [json.dumps(record(f"r-{k}", images="nowhere.png")) for k in range(40)]
    dataset = dataset_for(folder, image_root, tokenizer, [*missing, json.dumps(GOOD)], "skip")
    with caplog.at_level("DEBUG", logger="fila_train.data.dataset"):
        samples = [dataset[index] for index in range(len(missing))]
    assert all(sample["id"] == "good" for sample in samples)
    assert dataset.skip_counts["missing_image"] == 40  # each bad record once, though later draws pass it again
    warnings_ = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert len(warnings_) == 5, warnings_
    assert all("r-" in message for message in warnings_)
    assert warnings_[-1].endswith("; further missing_image skips in this process are counted, and logged at debug "
                                  "level)"), warnings_[-1]
    assert len([r for r in caplog.records if r.levelname == "DEBUG" and "skipped sample" in r.getMessage()]) == \
        dataset.skip_counts["missing_image"] - 5


def test_a_bad_record_in_data_with_no_text_only_record_is_replaced_under_modality_grouping(folder: Path,
                                                                                           image_root: Path,
                                                                                           tokenizer) -> None:
    """LLaVA's captions (every record has an image), one image missing, --on_bad_sample skip
    --group_by_modality_length. The unusable record (length 0) was batched and replaced as text-only, a side with no
    record at all: the run stopped when it was drawn, saying "every record without an image was skipped"."""
    from fila_train.data.sampler import ModalityLengthGroupedSampler

    good = [json.dumps(record(f"good-{k}", images="ok.png")) for k in range(7)]
    dataset = dataset_for(folder, image_root, tokenizer, [*good, BAD_LINES["missing_image"][0]], "skip")
    dataset.modality_lengths = dataset.lengths(None)
    assert dataset.modality_lengths.tolist()[-1] == 0
    batch, world = 2, 2
    order = ModalityLengthGroupedSampler(dataset.modality_lengths, batch, world, seed=0).order()
    samples = [dataset[index] for index in order]
    assert all(sample["images"] for sample in samples)  # every batch holds image samples only
    assert dataset.skip_counts == {"missing_image": 1}


def test_an_annotation_file_rewritten_during_the_run_is_not_skipped_record_by_record(folder: Path, image_root: Path,
                                                                                    tokenizer) -> None:
    """Under --on_bad_sample skip, every record of a file rewritten after indexing was skipped as malformed_json
    (then "no usable sample"): the file changed, no record is bad."""
    from fila_train.data.annotations import AnnotationChangedError

    lines = [json.dumps(record(f"good-{k}", images="ok.png", answer="A red square." * (k + 1))) for k in range(3)]
    dataset = dataset_for(folder, image_root, tokenizer, lines, "skip")
    (folder / "data.jsonl").write_text("\n".join(lines[::-1]) + "\n")
    written_later(folder / "data.jsonl")
    with pytest.raises(AnnotationChangedError, match="data.jsonl changed since the run indexed its records"):
        dataset[0]
    assert not dataset.skip_counts

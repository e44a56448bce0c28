"""ConversationDataset + ConversationCollator with the demo tokenizer and a tiny CLIP processor."""
from __future__ import annotations

import json
import logging
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from fila_train.data.collator import ConversationCollator
from fila_train.data.dataset import ConversationDataset, DatasetOptions, SampleError
from fila_train.data.images import UnreadableImageError, image_size, load_rgb_image
from fila_train.processing.chat_templates import get_template
from fila_train.processing.conversations import IGNORE_INDEX, TokenizedSample
from fila_train.processing.tokenization import ConversationTokenizer
from fila_train.demo.tokenizer import build_demo_tokenizer
from fila_train.model.configuration import IMAGE_TOKEN_ID
from fila_train.model.vision.clip_encoder import ClipImageProcessor

PROCESSOR = ClipImageProcessor(image_size=28, patch_size=14)
TOKENS_PER_IMAGE = PROCESSOR.tokens_per_view  # (28 // 14) ** 2 = 4
COLORS = {"red.png": (200, 30, 30), "green.png": (30, 200, 30), "blue.jpg": (30, 30, 200)}


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory: pytest.TempPathFactory):
    root = tmp_path_factory.mktemp("demo_tok")
    corpus = root / "corpus.txt"
    corpus.write_text("What is in the image? A red square. USER: ASSISTANT: a long answer.\n" * 50)
    return build_demo_tokenizer([corpus], root / "tokenizer", vocab_size=300)


@pytest.fixture
def image_folder(tmp_path: Path) -> Path:
    folder = tmp_path / "images"
    (folder / "sub").mkdir(parents=True)
    for name, color in COLORS.items():
        Image.new("RGB", (40, 30), color).save(folder / name)
    Image.new("RGB", (30, 40), (90, 90, 90)).save(folder / "sub" / "gray.png")
    return folder


def record(record_id: str, answer: str = "A red square.", images: str | list[str] | None = None,
           question: str = "What is in the image?") -> dict:
    n_images = 0 if images is None else 1 if isinstance(images, str) else len(images)
    out = {"id": record_id, "conversations": [
        {"from": "human", "value": "<image>\n" * n_images + question}, {"from": "gpt", "value": answer}]}
    if images is not None:
        out["image"] = images
    return out


def write_annotations(path: Path, records: list[dict]) -> Path:
    if path.suffix == ".jsonl":
        path.write_text("".join(json.dumps(r) + "\n" for r in records))
    else:
        path.write_text(json.dumps(records, indent=1))
    return path


def make_dataset(tmp_path: Path, tokenizer, records: list[dict], image_folder: Path | None, *,
                 max_length: int = 1024, on_overlong: str = "drop", name: str = "data.jsonl",
                 template: str = "vicuna_v1") -> ConversationDataset:
    conversation_tokenizer = ConversationTokenizer(tokenizer, get_template(template), IMAGE_TOKEN_ID)
    return ConversationDataset(write_annotations(tmp_path / name, records), image_folder, conversation_tokenizer,
                               PROCESSOR, DatasetOptions(max_length, on_overlong))


def image_runs(input_ids: torch.Tensor) -> list[int]:
    """Lengths of the runs of image-context ids, in order."""
    flags = (input_ids == IMAGE_TOKEN_ID).tolist() + [False]
    lengths, current = [], 0
    for flag in flags:
        if flag:
            current += 1
        elif current:
            lengths.append(current)
            current = 0
    return lengths


def assert_final_labels(sample: dict, tokenizer, answer: str) -> None:
    ids, labels = sample["input_ids"], sample["labels"]
    assert ids.dtype == labels.dtype == torch.long and ids.shape == labels.shape
    trained = labels != IGNORE_INDEX
    assert torch.equal(labels[trained], ids[trained])
    assert not (labels == IMAGE_TOKEN_ID).any()
    assert tokenizer.decode(labels[trained].tolist(), skip_special_tokens=False) == f" {answer}</s>"


# ------------------------------------------------------------------------------------------------
# image tokens and labels
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["data.jsonl", "data.json"])
def test_image_tokens_match_the_processor(tmp_path: Path, tokenizer, image_folder: Path, name: str) -> None:
    records = [record("one", images="red.png"), record("text", answer="Just text."),
               record("two", images=["green.png", "sub/gray.png"]),
               record("three", images=["blue.jpg", "red.png", "green.png"])]
    dataset = make_dataset(tmp_path, tokenizer, records, image_folder, name=name)
    assert len(dataset) == 4
    for index, source in enumerate(records):
        sample = dataset[index]
        n_images = len(source.get("image", [])) if isinstance(source.get("image"), list) else int("image" in source)
        assert sample["id"] == source["id"]
        assert len(sample["images"]) == n_images
        assert all(p["pixel_values"].shape == (1, 3, 28, 28) for p in sample["images"])
        assert image_runs(sample["input_ids"]) == [TOKENS_PER_IMAGE] * n_images
        assert_final_labels(sample, tokenizer, source["conversations"][1]["value"])
    # Images are processed in record order (green then gray: the pixel means differ).
    green, gray = (p["pixel_values"] for p in dataset[2]["images"])
    assert torch.equal(green, PROCESSOR(Image.open(image_folder / "green.png"))["pixel_values"])
    assert torch.equal(gray, PROCESSOR(Image.open(image_folder / "sub" / "gray.png"))["pixel_values"])


def test_symlinked_subfolder_inside_image_folder_is_followed(tmp_path: Path, tokenizer, image_folder: Path) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    Image.new("RGB", (8, 8), (1, 2, 3)).save(elsewhere / "x.png")
    (image_folder / "linked").symlink_to(elsewhere, target_is_directory=True)
    dataset = make_dataset(tmp_path, tokenizer, [record("link", images="linked/x.png")], image_folder)
    assert image_runs(dataset[0]["input_ids"]) == [TOKENS_PER_IMAGE]


# ------------------------------------------------------------------------------------------------
# over-long samples
# ------------------------------------------------------------------------------------------------
LONG_ANSWER = " ".join(["a long answer"] * 40)


def overlong_records() -> list[dict]:
    return [record("short-0", images="red.png"), record("long-1", answer=LONG_ANSWER, images="red.png"),
            record("short-2", answer="Green.", images="green.png"), record("long-3", answer=LONG_ANSWER)]


def max_length_between(tmp_path: Path, tokenizer, image_folder: Path) -> int:
    """A model_max_length that the short samples fit and the long ones exceed."""
    probe = make_dataset(tmp_path, tokenizer, overlong_records(), image_folder, name="probe.jsonl")
    lengths = [len(probe.build(i)["input_ids"]) for i in range(len(probe))]
    short, long = max(lengths[0], lengths[2]), min(lengths[1], lengths[3])
    assert short < long
    return short


def test_overlong_sample_is_replaced_by_a_whole_short_one_and_counted(tmp_path: Path, tokenizer, image_folder: Path,
                                                                     caplog: pytest.LogCaptureFixture) -> None:
    max_length = max_length_between(tmp_path, tokenizer, image_folder)
    dataset = make_dataset(tmp_path, tokenizer, overlong_records(), image_folder, max_length=max_length)
    assert dataset[0]["id"] == "short-0" and dataset.dropped_overlong == 0
    with caplog.at_level(logging.WARNING):
        replaced = dataset[1]
    assert replaced["id"] in ("short-0", "short-2") and dataset.dropped_overlong >= 1
    answer = {"short-0": overlong_records()[0], "short-2": overlong_records()[2]}[replaced["id"]]
    assert_final_labels(replaced, tokenizer, answer["conversations"][-1]["value"])  # a whole sample, not a cut one
    assert f"{dataset.annotations.paths[0]}:2" in caplog.text and "'long-1'" in caplog.text
    samples = [dataset[i] for i in range(len(dataset))]
    assert [s["id"] for s in samples[::2]] == ["short-0", "short-2"] and samples[1]["id"] == replaced["id"]
    assert all(len(s["input_ids"]) <= max_length for s in samples)
    assert dataset.dropped_overlong == 2  # each long record once, however often it was drawn


def test_overlong_sample_with_error_policy_names_file_line_and_id(tmp_path: Path, tokenizer,
                                                                 image_folder: Path) -> None:
    max_length = max_length_between(tmp_path, tokenizer, image_folder)
    dataset = make_dataset(tmp_path, tokenizer, overlong_records(), image_folder, max_length=max_length,
                           on_overlong="error")
    assert dataset[0]["id"] == "short-0"
    with pytest.raises(SampleError, match=re.escape(f"{tmp_path / 'data.jsonl'}:2 (id 'long-1')")) as error:
        dataset[1]
    assert f"exceed model_max_length {max_length}" in str(error.value)


def test_all_samples_overlong_is_an_error(tmp_path: Path, tokenizer, image_folder: Path) -> None:
    dataset = make_dataset(tmp_path, tokenizer, overlong_records(), image_folder, max_length=4)
    with pytest.raises(SampleError, match="every sample exceeds model_max_length 4"):
        dataset[0]


def test_unknown_overlong_policy_is_rejected() -> None:
    with pytest.raises(ValueError, match="on_overlong"):
        DatasetOptions(128, on_overlong="truncate")


# ------------------------------------------------------------------------------------------------
# bad records
# ------------------------------------------------------------------------------------------------
def assert_sample_error(dataset: ConversationDataset, index: int, *fragments: str) -> None:
    with pytest.raises(SampleError) as error:
        dataset[index]
    for fragment in fragments:
        assert fragment in str(error.value), (fragment, str(error.value))


def test_missing_image_names_file_record_and_field(tmp_path: Path, tokenizer, image_folder: Path) -> None:
    records = [record("ok", images="red.png"), record("lost-7", images=["red.png", "missing.png"])]
    dataset = make_dataset(tmp_path, tokenizer, records, image_folder)
    assert_sample_error(dataset, 1, f"{tmp_path / 'data.jsonl'}:2", "'lost-7'", "field 'image'",
                        str(image_folder / "missing.png"))


@pytest.mark.parametrize(("path", "reason"), [
    ("../outside.png", "escapes the image folder"),
    ("sub/../../outside.png", "escapes the image folder"),
    ("ABSOLUTE", "absolute image path"),
])
def test_image_path_outside_the_folder_is_an_error(tmp_path: Path, tokenizer, image_folder: Path, path: str,
                                                   reason: str) -> None:
    outside = tmp_path / "outside.png"
    Image.new("RGB", (8, 8)).save(outside)  # it exists: the path itself is refused
    path = str(outside) if path == "ABSOLUTE" else path
    dataset = make_dataset(tmp_path, tokenizer, [record("escape", images=path)], image_folder)
    assert_sample_error(dataset, 0, "'escape'", "field 'image'", reason, repr(path))


def test_image_without_image_folder_is_an_error(tmp_path: Path, tokenizer) -> None:
    dataset = make_dataset(tmp_path, tokenizer, [record("needs-folder", images="red.png")], None)
    assert_sample_error(dataset, 0, "'needs-folder'", "no --image_folder")


@pytest.mark.parametrize("conversations", [
    [{"from": "human", "value": "Only a question?"}],
    [{"from": "human", "value": "q"}, {"from": "gpt", "value": "   "}],
])
def test_sample_without_an_answer_is_an_error(tmp_path: Path, tokenizer, image_folder: Path,
                                              conversations: list[dict]) -> None:
    records = [{"id": "no-answer", "conversations": conversations}]
    dataset = make_dataset(tmp_path, tokenizer, records, image_folder)
    assert_sample_error(dataset, 0, f"{tmp_path / 'data.jsonl'}:1", "'no-answer'", "conversations[")


class _NothingTrained:
    """A conversation tokenizer whose samples have no trained position."""

    template = get_template("vicuna_v1")

    def encode(self, conversations, image_token_counts=None, add_generation_prompt=False) -> TokenizedSample:
        return TokenizedSample([5, 6, 7], [IGNORE_INDEX] * 3)


def test_sample_with_no_trained_tokens_is_an_error(tmp_path: Path, image_folder: Path) -> None:
    path = write_annotations(tmp_path / "data.jsonl", [record("silent")])
    dataset = ConversationDataset(path, image_folder, _NothingTrained(), PROCESSOR, DatasetOptions(64))
    assert_sample_error(dataset, 0, f"{path}:1", "'silent'", "no token is trained")


def test_a_sample_whose_only_trained_label_is_its_first_token_is_an_error(tmp_path: Path, image_folder: Path) -> None:
    """The first position is never predicted (nothing comes before it), padded or packed. Before, a text-only
    caption of one token under plain with a tokenizer that writes no BOS (Qwen2's) counted as trained and
    trained with loss 0."""
    from test_token_parity import qwen2_style

    tokenizer = qwen2_style(tmp_path / "qwen2")
    assert tokenizer.bos_token is None
    path = write_annotations(tmp_path / "data.jsonl", [{"id": "dot", "conversations": [
        {"from": "human", "value": "Say something."}, {"from": "gpt", "value": "."}]}])
    conversations = ConversationTokenizer(tokenizer, get_template("plain"), IMAGE_TOKEN_ID)
    sample = conversations.encode(json.loads(path.read_text())["conversations"])
    assert len(sample.input_ids) == 1 and sample.labels == sample.input_ids  # the caption's one token, at 0
    assert sample.num_trained == 0
    # The dataset refuses the record earlier: under plain a record without an image trains from nothing.
    dataset = ConversationDataset(path, image_folder, conversations, PROCESSOR, DatasetOptions(64))
    assert_sample_error(dataset, 0, f"{path}:1", "'dot'", "no field 'image'", "trained from nothing")


def test_a_multi_turn_record_under_the_plain_template_is_an_error(tmp_path: Path, tokenizer,
                                                                  image_folder: Path) -> None:
    """plain (stage 1) drops the prompt's text. A multi-turn instruction record (stage-2 data given to stage 1)
    trained its later answers with no question before them ("<image>Red.\\nSquare.\\n") with exit 0; LLaVA's
    preprocess_plain asserts one exchange. A caption record still trains."""
    chat = {"id": "chat-3", "image": "red.png", "conversations": [
        {"from": "human", "value": "<image>\\nWhat color is it?"}, {"from": "gpt", "value": "Red."},
        {"from": "human", "value": "What shape is it?"}, {"from": "gpt", "value": "A square."}]}
    dataset = make_dataset(tmp_path, tokenizer, [record("caption", images="red.png"), chat], image_folder,
                           template="plain")
    assert dataset[0]["id"] == "caption"
    assert_sample_error(dataset, 1, "data.jsonl:2", "'chat-3'", "plain", "2 human/gpt exchanges")
    with pytest.raises(SampleError) as error:  # the record's own error: skippable with --on_bad_sample skip
        dataset.build(1)
    assert error.value.kind == "invalid_record"
    # A text-only record: its answer was trained from nothing (LLaVA's preprocess_plain asserts an image).
    text_only = make_dataset(tmp_path, tokenizer, [record("text")], image_folder, template="plain", name="text.jsonl")
    assert_sample_error(text_only, 0, "text.jsonl:1", "'text'", "no field 'image'", "trained from nothing")


def test_placeholder_and_image_count_mismatch_is_a_sample_error(tmp_path: Path, tokenizer,
                                                                image_folder: Path) -> None:
    bad = record("mismatch", images=["red.png", "green.png"])
    bad["conversations"][0]["value"] = "<image>\nOnly one placeholder."
    dataset = make_dataset(tmp_path, tokenizer, [bad], image_folder)
    assert_sample_error(dataset, 0, "'mismatch'", "conversations[0]", "2 image(s) in field 'image'")


# ------------------------------------------------------------------------------------------------
# image modes
# ------------------------------------------------------------------------------------------------
def rgba(alpha: int) -> Image.Image:
    return Image.new("RGBA", (6, 4), (200, 100, 50, alpha))


def palette(transparent: bool) -> Image.Image:
    image = Image.new("P", (6, 4), 1)
    image.putpalette([0, 0, 0, 200, 100, 50] + [0, 0, 0] * 254)
    if transparent:
        image.info["transparency"] = 1
    return image


def colour_keyed(mode: str, colour) -> Image.Image:
    """An RGB or grayscale PNG whose one colour is transparent (tRNS): before, it stayed that colour (black,
    for the usual key), where alpha and palette transparency became white."""
    image = Image.new(mode, (6, 4), colour)
    image.info["transparency"] = colour
    return image


def sixteen_bit_keyed() -> Image.Image:
    """A 16-bit grayscale PNG with a tRNS key: before, it loaded black (the key was not looked at)."""
    image = Image.fromarray(np.full((4, 6), 5, dtype=np.uint16))
    image.info["transparency"] = 5
    return image


def cmyk() -> Image.Image:
    image = Image.new("RGB", (6, 4), (200, 100, 50)).convert("CMYK")
    assert image.getpixel((0, 0)) != (200, 100, 50, 0)  # really ink values, not RGB in a CMYK box
    return image


# name -> (image, file name, expected RGB of every pixel, tolerance)
MODES = {
    "RGBA_opaque": (lambda: rgba(255), "x.png", (200, 100, 50), 0),
    "RGBA_transparent": (lambda: rgba(0), "x.png", (255, 255, 255), 0),  # composited on white
    "P": (lambda: palette(False), "x.png", (200, 100, 50), 0),
    "P_transparent": (lambda: palette(True), "x.png", (255, 255, 255), 0),
    "L": (lambda: Image.new("L", (6, 4), 77), "x.png", (77, 77, 77), 0),
    "LA_transparent": (lambda: Image.new("LA", (6, 4), (77, 0)), "x.png", (255, 255, 255), 0),
    "RGB_colour_key": (lambda: colour_keyed("RGB", (0, 0, 0)), "x.png", (255, 255, 255), 0),
    "L_colour_key": (lambda: colour_keyed("L", 0), "x.png", (255, 255, 255), 0),
    "1": (lambda: Image.new("1", (6, 4), 1), "x.png", (255, 255, 255), 0),
    "CMYK_jpeg": (lambda: cmyk(), "x.jpg", (200, 100, 50), 4),
    "CMYK_tiff": (lambda: cmyk(), "x.tiff", (200, 100, 50), 0),
    "I;16": (lambda: Image.fromarray(np.full((4, 6), 100 * 256 + 200, dtype=np.uint16)), "x.png", (100, 100, 100), 0),
    "I;16_colour_key": (lambda: sixteen_bit_keyed(), "x.png", (255, 255, 255), 0),
}


@pytest.mark.parametrize("mode", sorted(MODES))
def test_image_modes_load_as_rgb(tmp_path: Path, mode: str) -> None:
    make, file_name, expected, tolerance = MODES[mode]
    path = tmp_path / file_name
    make().save(path)
    image = load_rgb_image(path)
    assert image.mode == "RGB" and image.size == (6, 4)
    pixels = np.asarray(image).reshape(-1, 3).astype(int)
    assert np.abs(pixels - np.array(expected)).max() <= tolerance, (pixels[0], expected)


@pytest.mark.parametrize("peak", [1.0, 65535.0], ids=["unit_range", "16_bit_range"])
def test_float_pixels_are_refused_not_guessed(tmp_path: Path, peak: float) -> None:
    """A 32-bit float TIFF (mode F) says nothing of its range: before, one in 0-1 loaded black and one in
    0-65535 white, as a valid training image."""
    path = tmp_path / "depth.tiff"
    Image.fromarray(np.linspace(0, peak, 24, dtype=np.float32).reshape(4, 6)).save(path)
    for read in (image_size, load_rgb_image):  # from the header: the up-front checks find it too
        with pytest.raises(UnreadableImageError, match=rf"unreadable image {re.escape(str(path))}: 32-bit "
                                                        rf"floating-point pixels \(mode F\)"):
            read(path)


def test_unreadable_image_is_an_error(tmp_path: Path, tokenizer, image_folder: Path) -> None:
    (image_folder / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    full = image_folder / "cut.jpg"
    Image.new("RGB", (64, 64), (1, 2, 3)).save(full)
    full.write_bytes(full.read_bytes()[:200])  # truncated: must fail here, not in a worker later
    dataset = make_dataset(tmp_path, tokenizer, [record("broken", images="broken.png"),
                                                 record("cut", images="cut.jpg")], image_folder)
    assert_sample_error(dataset, 0, "'broken'", "unreadable image", str(image_folder / "broken.png"))
    assert_sample_error(dataset, 1, "'cut'", "unreadable image", str(full))


# ------------------------------------------------------------------------------------------------
# collator
# ------------------------------------------------------------------------------------------------
def collate(tokenizer, samples: list[dict]) -> dict:
    return ConversationCollator(tokenizer.pad_token_id, PROCESSOR)(samples)


def test_collator_pads_and_keeps_image_order(tmp_path: Path, tokenizer, image_folder: Path) -> None:
    records = [record("img", images="red.png"), record("text", answer=LONG_ANSWER),
               record("two", answer="Two.", images=["blue.jpg", "green.png"])]
    dataset = make_dataset(tmp_path, tokenizer, records, image_folder)
    samples = [dataset[i] for i in range(3)]
    batch = collate(tokenizer, samples)
    lengths = [len(s["input_ids"]) for s in samples]
    assert batch["input_ids"].shape == batch["labels"].shape == batch["attention_mask"].shape == (3, max(lengths))
    for row, (sample, n) in enumerate(zip(samples, lengths)):
        assert torch.equal(batch["input_ids"][row, :n], sample["input_ids"])
        assert torch.equal(batch["labels"][row, :n], sample["labels"])
        assert (batch["input_ids"][row, n:] == tokenizer.pad_token_id).all()
        assert (batch["labels"][row, n:] == IGNORE_INDEX).all()
        assert batch["attention_mask"][row, :n].eq(1).all() and batch["attention_mask"][row, n:].eq(0).all()
    assert min(lengths) < max(lengths)  # some row really is padded
    expected = torch.cat([p["pixel_values"] for s in samples for p in s["images"]])
    assert expected.shape[0] == 3 and torch.equal(batch["images"]["pixel_values"], expected)
    assert batch["images_are_placeholders"] is False
    assert batch["sample_ids"] == ["img", "text", "two"]
    assert int((batch["input_ids"] == IMAGE_TOKEN_ID).sum()) == 3 * TOKENS_PER_IMAGE


def test_text_only_batch_gets_a_placeholder_image(tmp_path: Path, tokenizer, image_folder: Path) -> None:
    dataset = make_dataset(tmp_path, tokenizer, [record("a"), record("b", answer="Other.")], image_folder)
    batch = collate(tokenizer, [dataset[0], dataset[1]])
    assert batch["images_are_placeholders"] is True
    assert batch["images"]["pixel_values"].shape == (1, 3, 28, 28)
    assert not (batch["input_ids"] == IMAGE_TOKEN_ID).any()


def test_collator_needs_a_pad_token() -> None:
    with pytest.raises(ValueError, match="pad token"):
        ConversationCollator(None, PROCESSOR)

"""The shipped mixtures work on the layout playground/README.md documents, end to end.

Tiny copies of every public release (the converter fixtures of test_converters.py, with their
images where each release puts them) are laid out under a temporary ``playground/data``; every
file must be one the README's layout lists. The README's own convert commands run through the real
``fila-train`` CLI, then data/stage1_captions.yaml and data/stage2_doc_ocr.yaml are loaded with
that folder as data_root and inspected: every record's images must resolve and decode. <1 s.
"""
from __future__ import annotations

import json
import re
import shlex
from pathlib import Path

import pytest
from PIL import Image

from fila_train.cli import main as cli_main
from fila_train.data.dataset import DatasetOptions
from fila_train.data.inspect import inspect_mixture
from fila_train.data.mixed_dataset import MixtureDataset
from fila_train.data.mixture import load_mixture
from fila_train.model.configuration import IMAGE_TOKEN_ID
from fila_train.processing.tokenization import ConversationTokenizer
from fila_train.processing.chat_templates import get_template
from test_converters import (ai2d_release, chartqa_release, docvqa_release, dvqa_file, infographicvqa_file,
                             llava_record, ocrvqa_file, stvqa_file, textcaps_file, textvqa_file, write_json)
from test_dataset import PROCESSOR, tokenizer  # noqa: F401  (tokenizer is a fixture)

REPO = Path(__file__).resolve().parents[1]
README = REPO / "playground" / "README.md"
MIXTURES = {"stage1_captions.yaml": "plain", "stage2_doc_ocr.yaml": "vicuna_v1"}  # mixture -> template


# ---------------------------------------------------------------- what the README says

def code_block_after(heading: str) -> list[str]:
    """The lines of the first fenced code block after ``heading`` in playground/README.md."""
    text = README.read_text()
    start = text.index("```", text.index(heading))
    body = text[text.index("\n", start) + 1:text.index("```", start + 3)]
    return [line for line in body.splitlines() if line.strip()]


def layout_patterns() -> dict[str, re.Pattern]:
    """README layout line -> a pattern for the files it stands for (``<name>``: one path segment)."""
    return {line: re.compile("".join("[^/]+" if part.startswith("<") else re.escape(part)
                                     for part in re.split(r"(<[^>]+>)", line)))
            for line in code_block_after("The same layout file by file")}


def convert_commands() -> list[list[str]]:
    lines = code_block_after("## Converting")
    assert lines[0] == "cd playground/data", lines[0]  # the commands' paths are relative to it
    commands = [shlex.split(line, comments=True) for line in lines[1:]]
    assert commands and all(command[:3] == ["fila-train", "data", "convert"] for command in commands)
    return commands


def option(command: list[str], name: str) -> str:
    return command[command.index(name) + 1]


# ---------------------------------------------------------------- the releases, as published

def image(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (20, 16), (40, 120, 200)).save(path)  # format from the extension (.jpg, .jpeg, .png)


def data(path: Path) -> list[dict]:
    return json.loads(path.read_text())["data"]


def llava_files(root: Path) -> None:
    """LLaVA's own files, hand-made: a 558K caption record and 665K records on each image folder."""
    write_json(root / "LLaVA-Pretrain" / "blip_laion_cc_sbu_558k.json", [llava_record(
        "004539375", "00453/004539375.jpg", "Render a clear and concise summary of the photo.\n<image>",
        "select luxury furniture 3 - inch gel memory foam mattress topper")])
    image(root / "LLaVA-Pretrain" / "images" / "00453" / "004539375.jpg")
    images = ["coco/train2017/000000033471.jpg", "gqa/images/2354786.jpg", "ocr_vqa/images/140031996.jpg",
              "textvqa/train_images/0a0bc91825468c45.jpg", "vg/VG_100K/2356347.jpg", "vg/VG_100K_2/1.jpg"]
    records = [llava_record(f"r{i}", path, "<image>\nWhat is shown?", "A picture.") for i, path in enumerate(images)]
    write_json(root / "llava_v1_5_mix665k.json", records + [llava_record("i6IyJda_0", None, "Hi?", "Hello.")])
    for path in images:
        image(root / path)


def document_releases(root: Path) -> None:
    """Each release's annotation files with its images where the release (or its download
    script) puts them, relative to the release's own files."""
    docvqa = docvqa_release(root / "docvqa")
    for entry in data(docvqa):
        image(docvqa.parent / entry["image"])  # "documents/<page>.png"

    infographics = infographicvqa_file(root / "infographicvqa")
    for entry in data(infographics):
        image(infographics.parent / "infographicsvqa_images" / entry["image_local_name"])

    split = chartqa_release(root / "chartqa" / "ChartQA Dataset")
    for questions in split.glob("*.json"):
        for entry in json.loads(questions.read_text()):
            image(split / "png" / entry["imgname"])

    textvqa = textvqa_file(root / "textvqa")
    textcaps_file(root / "textvqa")
    for entry in data(textvqa) + data(textvqa.parent / "TextCaps_0.1_train.json"):
        image(textvqa.parent / "train_images" / f"{entry['image_id']}.jpg")  # train_val_images.zip

    ocrvqa = ocrvqa_file(root / "ocrvqa")
    for image_id, entry in json.loads(ocrvqa.read_text()).items():  # as loadDataset.py names them
        image(ocrvqa.parent / "images" / f"{image_id}{Path(entry['imageURL']).suffix}")

    ai2d = ai2d_release(root / "ai2d")
    for questions in (ai2d / "questions").glob("*.json"):
        image(ai2d / "images" / json.loads(questions.read_text())["imageName"])

    dvqa = dvqa_file(root / "dvqa")
    for entry in json.loads(dvqa.read_text()):
        image(root / "dvqa" / "images" / entry["image"])

    stvqa = stvqa_file(root / "stvqa")
    for entry in data(stvqa):
        image(stvqa.parent / "train" / entry["file_path"])  # the training images archive


def assert_documented(root: Path, patterns: dict[str, re.Pattern]) -> set[str]:
    """Every file under ``root`` is one the README's layout lists; returns the lines used."""
    used = set()
    for path in sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file()):
        lines = [line for line, pattern in patterns.items() if pattern.fullmatch(path)]
        assert lines, f"{path} is not in playground/README.md's layout"
        used.update(lines)
    return used


# ---------------------------------------------------------------- the test

@pytest.fixture(scope="module")
def playground_data(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("playground") / "data"
    llava_files(root)
    document_releases(root)
    return root


def test_readme_layout_and_commands_feed_the_shipped_mixtures(playground_data: Path, tokenizer, capsys,
                                                              monkeypatch) -> None:
    root = playground_data
    patterns = layout_patterns()
    released = assert_documented(root, patterns)

    commands = convert_commands()
    monkeypatch.chdir(root)
    for command in commands:
        assert cli_main(command[1:]) == 0, (command, capsys.readouterr().err)  # --image_root: images exist
    used = released | assert_documented(root, patterns)
    assert used == set(patterns), f"README layout lines no release file matches: {set(patterns) - used}"

    converted = {option(command, "--output"): command for command in commands}
    for mixture, template in MIXTURES.items():
        spec = load_mixture(REPO / "data" / mixture, data_root=root)
        for source in spec.sources:
            annotation = source.annotations[0].relative_to(root).as_posix()
            if annotation.startswith("converted/"):
                # The README's existence check looked where the mixture will look.
                assert option(converted[annotation], "--image_root") == source.image_root.relative_to(root).as_posix()
        conversations = ConversationTokenizer(tokenizer, get_template(template), IMAGE_TOKEN_ID)
        dataset = MixtureDataset(spec, conversations, PROCESSOR, DatasetOptions(2048))
        reports = inspect_mixture(dataset, 2048, decode=True)
        assert {report.name: report.errors for report in reports if report.errors} == {}, mixture
        for report in reports:
            text_only = 1 if report.name == "llava_v1_5_mix665k" else 0
            assert report.records > 0 and report.sampled > 0, report.name
            assert (report.with_images, report.text_only) == (report.records - text_only, text_only), report.name
    # AI2D's converted file holds only its train split (ai2d_test_ids.csv lists image 1).
    ai2d = [json.loads(line) for line in (root / "converted" / "ai2d_train.jsonl").read_text().splitlines()]
    assert [record["image"] for record in ai2d] == ["0.png"]

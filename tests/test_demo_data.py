"""Tests for the demo's synthetic document dataset and local tokenizer (fast, CPU only)."""

from __future__ import annotations

import itertools
import json
import re
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from fila_train.demo.synthetic_docs import MONTHS, WEEKDAYS, SyntheticDataset, make_synthetic_dataset
from fila_train.demo.tokenizer import CHAT_SPECIAL_TOKENS, SPECIAL_TOKENS, build_demo_tokenizer

NUM_IMAGES, NUM_EVAL = 60, 12


def _read_jsonl(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> SyntheticDataset:
    return make_synthetic_dataset(tmp_path_factory.mktemp("docs"), num_images=NUM_IMAGES, num_eval=NUM_EVAL, seed=3)


@pytest.fixture(scope="module")
def specs(dataset: SyntheticDataset) -> dict[str, dict[str, Any]]:
    return {s["doc_id"] + ".png": s for s in _read_jsonl(dataset.specs_path)}


@pytest.fixture(scope="module")
def tokenizer(dataset: SyntheticDataset, tmp_path_factory: pytest.TempPathFactory):
    return build_demo_tokenizer([dataset.corpus_path], tmp_path_factory.mktemp("tok"), vocab_size=1024)


# ----------------------------------------------------------------------------------------------
# Dataset
# ----------------------------------------------------------------------------------------------
def _all_files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_deterministic_for_seed(tmp_path: Path) -> None:
    a = make_synthetic_dataset(tmp_path / "a", num_images=20, num_eval=5, seed=7)
    b = make_synthetic_dataset(tmp_path / "b", num_images=20, num_eval=5, seed=7)
    c = make_synthetic_dataset(tmp_path / "c", num_images=20, num_eval=5, seed=8)
    files_a, files_b = _all_files(a.root), _all_files(b.root)
    assert files_a == files_b  # JSONL, corpus and PNG bytes alike
    assert a.stage2_path.read_bytes() != c.stage2_path.read_bytes()


def test_record_formats(dataset: SyntheticDataset) -> None:
    stage1 = _read_jsonl(dataset.stage1_path)
    assert len(stage1) == NUM_IMAGES
    for rec in stage1:
        assert set(rec) == {"id", "image", "conversations"}
        human, gpt = rec["conversations"]
        assert human == {"from": "human", "value": "<image>\n"}
        assert gpt["from"] == "gpt" and gpt["value"]

    for rec in _read_jsonl(dataset.stage2_path):
        conv = rec["conversations"]
        assert 2 <= len(conv) <= 6 and len(conv) % 2 == 0
        assert [t["from"] for t in conv] == ["human", "gpt"] * (len(conv) // 2)
        image_tags = sum(t["value"].count("<image>") for t in conv)
        if "image" in rec:
            assert conv[0]["value"].startswith("<image>\n") and image_tags == 1
        else:
            assert image_tags == 0

    for rec in _read_jsonl(dataset.eval_path):
        assert set(rec) == {"id", "image", "question", "answers"}
        assert "<image>" not in rec["question"] and len(rec["answers"]) == 1


def test_images_exist_and_match_specs(dataset: SyntheticDataset, specs: dict[str, dict[str, Any]]) -> None:
    records = [*_read_jsonl(dataset.stage1_path), *_read_jsonl(dataset.stage2_path), *_read_jsonl(dataset.eval_path)]
    sizes = set()
    for rec in records:
        if "image" not in rec:
            continue
        with Image.open(dataset.image_dir / rec["image"]) as img:
            assert img.mode == "RGB"
            spec = specs[rec["image"]]
            assert img.size == (spec["width"], spec["height"])
            assert img.convert("L").getextrema()[0] < 100  # something dark (text) was drawn
            sizes.add(img.size)
    ratios = [w / h for w, h in sizes]
    assert min(ratios) < 0.6 and max(ratios) > 2.0  # some tall and some wide pages


def test_ids_unique_and_eval_disjoint(dataset: SyntheticDataset) -> None:
    stage1, stage2, evals = (_read_jsonl(p) for p in (dataset.stage1_path, dataset.stage2_path, dataset.eval_path))
    for records in (stage1, stage2, evals):
        ids = [r["id"] for r in records]
        assert len(ids) == len(set(ids))
    train_images = {r["image"] for r in stage1} | {r["image"] for r in stage2 if "image" in r}
    eval_images = {r["image"] for r in evals}
    assert len(eval_images) == NUM_EVAL
    assert not train_images & eval_images


def test_text_only_fraction(dataset: SyntheticDataset) -> None:
    stage2 = _read_jsonl(dataset.stage2_path)
    text_only = [r for r in stage2 if "image" not in r]
    assert 0.07 <= len(text_only) / len(stage2) <= 0.13
    # Spread through the file, so even an unshuffled loader produces mixed batches.
    positions = [i for i, r in enumerate(stage2) if "image" not in r]
    assert max(b - a for a, b in itertools.pairwise(positions)) <= 12


def _expected_image_answer(spec: dict[str, Any], question: str) -> str:
    """Re-derive an answer from the spec, independently of the generator's QA code."""
    kind = spec["kind"]
    if question == "What is the title of this document?":
        return spec["title"]
    if kind in ("receipt", "form"):
        fields = dict(spec["fields"])
        if m := re.fullmatch(r"What is the value of (\w+)\?", question):
            return fields[m[1]]
        if question == "What is the total?":
            assert kind == "receipt"
            assert int(fields["total"]) == sum(int(v) for k, v in spec["fields"][:-1])
            return fields["total"]
        if question == "How many items are listed?":
            return str(len(fields) - 1)
        if question == "How many fields does the form have?":
            return str(len(fields))
    if kind == "table":
        rows, header = spec["rows"], spec["header"]
        if question == "How many rows does the table have?":
            return str(len(rows))
        if question == "How many columns does the table have?":
            return str(len(header))
        if m := re.fullmatch(r"What is in row (\d+), column (\d+)\?", question):
            return rows[int(m[1]) - 1][int(m[2]) - 1]
        if m := re.fullmatch(r"What is the (\w+) of (\w+)\?", question):
            (row,) = [r for r in rows if r[0] == m[2]]
            return row[header.index(m[1])]
    if kind == "chart":
        bars = {label: value for label, value in spec["bars"]}
        if question == "Which bar is the tallest?":
            return max(bars, key=bars.__getitem__)
        if question == "Which bar is the shortest?":
            return min(bars, key=bars.__getitem__)
        if question == "How many bars are in the chart?":
            return str(len(bars))
        if m := re.fullmatch(r"What is the value of the (\w+) bar\?", question):
            return str(bars[m[1]])
    raise AssertionError(f"unexpected {kind} question: {question!r}")


def _expected_text_answer(question: str) -> str:
    if m := re.fullmatch(r"What comes after (\w+)\?", question):
        return MONTHS[(MONTHS.index(m[1]) + 1) % 12]
    if m := re.fullmatch(r"What day comes after (\w+)\?", question):
        return WEEKDAYS[(WEEKDAYS.index(m[1]) + 1) % 7]
    if m := re.fullmatch(r"What is (\d+) plus (\d+)\?", question):
        return str(int(m[1]) + int(m[2]))
    if m := re.fullmatch(r"What is (\d+) minus (\d+)\?", question):
        return str(int(m[1]) - int(m[2]))
    if m := re.fullmatch(r"How many letters are in the word (\w+)\?", question):
        return str(len(m[1]))
    raise AssertionError(f"unexpected text-only question: {question!r}")


def test_answers_consistent_with_specs(dataset: SyntheticDataset, specs: dict[str, dict[str, Any]]) -> None:
    checked = 0
    for rec in _read_jsonl(dataset.stage2_path):
        conv = rec["conversations"]
        for human, gpt in zip(conv[::2], conv[1::2], strict=True):
            question = human["value"].removeprefix("<image>\n")
            if "image" in rec:
                expected = _expected_image_answer(specs[rec["image"]], question)
            else:
                expected = _expected_text_answer(question)
            assert gpt["value"] == expected, (rec["id"], question)
            checked += 1
    for rec in _read_jsonl(dataset.eval_path):
        assert rec["answers"] == [_expected_image_answer(specs[rec["image"]], rec["question"])]
        checked += 1
    assert checked > NUM_IMAGES


def test_captions_mention_title_and_kind(dataset: SyntheticDataset, specs: dict[str, dict[str, Any]]) -> None:
    words = {"receipt": "a receipt", "form": "a form", "table": "a table", "chart": "a bar chart"}
    for rec in _read_jsonl(dataset.stage1_path):
        spec = specs[rec["image"]]
        caption = rec["conversations"][1]["value"]
        assert caption.startswith(words[spec["kind"]]) and f"titled {spec['title']}" in caption


# ----------------------------------------------------------------------------------------------
# Tokenizer
# ----------------------------------------------------------------------------------------------
def test_tokenizer_special_tokens(tokenizer) -> None:
    assert len(tokenizer) <= 1024
    assert (tokenizer.bos_token, tokenizer.eos_token) == ("<s>", "</s>")
    assert (tokenizer.unk_token, tokenizer.pad_token) == ("<unk>", "<pad>")
    ids = [tokenizer.convert_tokens_to_ids(t) for t in SPECIAL_TOKENS]
    assert len(set(ids)) == len(SPECIAL_TOKENS)
    for token, token_id in zip(SPECIAL_TOKENS, ids, strict=True):
        for text in (f"a{token}b", f"what is {token} 12", f"{token}{token}"):
            pieces = tokenizer(text).input_ids
            assert pieces.count(token_id) == text.count(token), (token, text)
            assert tokenizer.decode(pieces) == text
    assert set(CHAT_SPECIAL_TOKENS) <= set(tokenizer.all_special_tokens)


def test_tokenizer_adds_no_bos_eos(tokenizer) -> None:
    ids = tokenizer("the total is 12").input_ids
    assert ids == tokenizer("the total is 12", add_special_tokens=False).input_ids
    assert tokenizer.bos_token_id not in ids and tokenizer.eos_token_id not in ids


def test_tokenizer_roundtrips_corpus(tokenizer, dataset: SyntheticDataset) -> None:
    lines = dataset.corpus_path.read_text(encoding="utf-8").splitlines()
    for text in [*lines, "Ünïcode → bytes ✓", "  double  spaces\nand\ttabs  "]:
        assert tokenizer.decode(tokenizer(text).input_ids) == text
    assert tokenizer.unk_token_id not in tokenizer("Ünïcode ✓ 日本").input_ids  # byte-level: no unk


def test_tokenizer_word_after_space_is_consistent(tokenizer) -> None:
    for word in ("apple", "paris", "september", "total", "42", "rainfall"):
        expected = tokenizer(f" {word}").input_ids
        for prefix in ("the", "What is the value of", "12", "<|im_start|>user\nhi"):
            prefix_ids = tokenizer(prefix).input_ids
            assert tokenizer(f"{prefix} {word}").input_ids == prefix_ids + expected, (prefix, word)


def test_tokenizer_learned_domain_words(tokenizer) -> None:
    # Chat role names and the most frequent question words should be single tokens (the exact
    # merges for rarer vocabulary words depend on corpus size, so they are not pinned here).
    for text in ("system", "user", "assistant", "What", " is", " the"):
        assert len(tokenizer(text).input_ids) == 1, text

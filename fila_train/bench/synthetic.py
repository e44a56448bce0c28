"""Benchmark inputs on disk: rendered documents as fixed-size JPEGs, LLaVA records, a tokenizer.

Everything the timed steps see goes through the real annotation reader, image loader, processor,
conversation tokenizer and collator, so the benchmark also exercises the data code paths.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from PIL import Image

from ..processing.tokenization import ConversationTokenizer
from ..demo.synthetic_docs import make_synthetic_dataset
from ..demo.tokenizer import build_demo_tokenizer
from ..utils.errors import ConfigError

STAGE_TEMPLATES = {1: "plain", 2: "vicuna_v1"}  # captions for stage 1, instructions for stage 2
JPEG_QUALITY = 90


@dataclass(frozen=True)
class BenchData:
    image_folder: Path
    records: dict[int, list[dict]]  # stage -> records with one image each, as written by synthetic_docs
    tokenizer_dir: Path

    def image_paths(self) -> list[Path]:
        return [self.image_folder / record["image"] for record in self.records[1]]


def _read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def make_bench_data(root: Path, num_images: int, image_size: tuple[int, int]) -> BenchData:
    """``num_images`` synthetic documents resized to ``image_size`` (W, H) and saved as JPEGs, their
    caption (stage 1) and question (stage 2) records, and a tokenizer trained on their text."""
    docs = make_synthetic_dataset(root / "docs", num_images=num_images, num_eval=0)
    folder = root / "images"
    folder.mkdir(parents=True, exist_ok=True)
    records: dict[int, list[dict]] = {}
    for stage, path in ((1, docs.stage1_path), (2, docs.stage2_path)):
        # Text-only records are left out: every sample of a benchmark batch has the same image shape.
        records[stage] = [r for r in _read_jsonl(path) if "image" in r]
        for record in records[stage]:
            name = Path(record["image"]).with_suffix(".jpg").name
            if not (folder / name).exists():
                with Image.open(docs.image_dir / record["image"]) as page:
                    page.convert("RGB").resize(image_size, Image.Resampling.BICUBIC).save(
                        folder / name, quality=JPEG_QUALITY)
            record["image"] = name
    build_demo_tokenizer([docs.corpus_path], root / "tokenizer")
    return BenchData(folder, records, root / "tokenizer")


def _with_rounds(conversations: list[dict], stage: int, rounds: int) -> list[dict]:
    """``rounds`` more rounds of text: stage 1 repeats the caption, stage 2 asks its questions again."""
    if stage == 1:
        caption = conversations[1]["value"]
        return [conversations[0], {"from": "gpt", "value": " ".join([caption] * (rounds + 1))}]
    pairs = [(conversations[i]["value"].replace("<image>\n", ""), conversations[i + 1]["value"])
             for i in range(0, len(conversations) - 1, 2)]
    extra = [pairs[k % len(pairs)] for k in range(rounds)]
    return conversations + [{"from": role, "value": text}
                            for question, answer in extra for role, text in (("human", question), ("gpt", answer))]


def check_seq_len(target: int | None, image_tokens: int, context: int | None = None) -> None:
    """A one-line error for a --seq_len no sample can have: one image alone fills it, or the LLM cannot hold it."""
    if target is None:
        return
    if context is not None and target > context:
        raise ConfigError(f"--seq_len {target} exceeds the LLM's context of {context} tokens")
    if target <= image_tokens:
        raise ConfigError(f"--seq_len {target} leaves no room for text: one image alone is {image_tokens} "
                          f"tokens with this configuration (give --seq_len above {image_tokens})")


def fit_to_length(record: dict, stage: int, tokenizer: ConversationTokenizer, image_tokens: int,
                  target: int | None) -> dict:
    """The record lengthened towards ``target`` tokens (image positions included) and never over it: a target at
    the LLM's context must fit in it. Rounds of text are added until the target is reached, then the last message
    is cut by words; a round whose last message cannot keep one word is left out, so a sample can fall short by one
    short round (the synthetic answers are a few words). None keeps the record as it is. The caller has checked
    the target (``check_seq_len``)."""
    if target is None:
        return record

    def length(conversations: list[dict]) -> int:
        return len(tokenizer.encode(conversations, [image_tokens]).input_ids)

    rounds = 0
    conversations = _with_rounds(record["conversations"], stage, rounds)
    while length(conversations) < target:
        rounds += 1
        conversations = _with_rounds(record["conversations"], stage, rounds)
    *earlier, last = conversations
    words = last["value"].split(" ")
    # The most words of the last message that keep the record within the target (the length grows with them).
    low, high = 0, len(words)
    while low < high:
        middle = (low + high + 1) // 2
        if length([*earlier, {**last, "value": " ".join(words[:middle])}]) <= target:
            low = middle
        else:
            high = middle - 1
    if low == 0:
        if rounds == 0:
            raise ConfigError(f"--seq_len {target} is shorter than record {record.get('id')!r} with one word of "
                              f"text ({length(earlier + [{**last, 'value': words[0]}])} tokens)")
        return {**record, "conversations": _with_rounds(record["conversations"], stage, rounds - 1)}
    return {**record, "conversations": [*earlier, {**last, "value": " ".join(words[:low])}]}


def write_records(path: Path, records: list[dict]) -> Path:
    path.write_text("".join(json.dumps(record) + "\n" for record in records))
    return path

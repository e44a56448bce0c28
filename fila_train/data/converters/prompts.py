"""Samples -> LLaVA conversation records (one per sample, or one multi-turn record per image)."""
from __future__ import annotations

from typing import Iterable, Iterator

from ...processing.conversations import IMAGE_PLACEHOLDER
from .sample import Sample

Located = tuple[str, Sample]  # (where the sample came from, the sample)


def human_turn(question: str, instruction: str, first: bool) -> str:
    parts = ([IMAGE_PLACEHOLDER] if first else []) + [question] + ([instruction] if instruction else [])
    return "\n".join(parts)


def qa_record(record_id: str, samples: list[Sample], instruction: str) -> dict:
    """LLaVA-1.5 layout: ``<image>`` once, at the start of the first question; every question
    carries the instruction (as in its mix665k)."""
    conversations = []
    for index, sample in enumerate(samples):
        conversations.append({"from": "human", "value": human_turn(sample.question, instruction, index == 0)})
        conversations.append({"from": "gpt", "value": sample.answer})
    return {"id": record_id, "image": samples[0].image, "conversations": conversations}


def caption_record(record_id: str, sample: Sample) -> dict:
    """Stage-1 caption: the ``plain`` template trains the caption right after the image."""
    return {"id": record_id, "image": sample.image,
            "conversations": [{"from": "human", "value": IMAGE_PLACEHOLDER},
                              {"from": "gpt", "value": sample.answer}]}


def one_per_sample(source: str, located: Iterable[Located], kind: str,
                   instruction: str) -> Iterator[tuple[str, dict]]:
    for where, sample in located:
        record_id = f"{source}_{sample.id}"
        where = f"{where} (record {record_id!r})"
        if kind == "caption":
            yield where, caption_record(record_id, sample)
        else:
            yield where, qa_record(record_id, [sample], instruction)


def grouped_by_image(source: str, located: Iterable[Located], instruction: str) -> Iterator[tuple[str, dict]]:
    """One multi-turn record per image, in order of first appearance; the id is the first
    question's. All samples are held until the input ends (questions of one image may be apart)."""
    groups: dict[str, list[Located]] = {}
    for where, sample in located:
        groups.setdefault(sample.image, []).append((where, sample))
    for members in groups.values():
        samples = [sample for _, sample in members]
        record_id = f"{source}_{samples[0].id}"
        where = f"{members[0][0]} (record {record_id!r}"
        where += f", with {len(members) - 1} more questions about its image)" if len(members) > 1 else ")"
        yield where, qa_record(record_id, samples, instruction)


def bench_records(source: str, located: Iterable[Located]) -> Iterator[tuple[str, dict]]:
    """``fila-train eval``'s format: one question per record with every reference answer, no instruction (eval
    adds LLaVA's short-answer one itself)."""
    for where, sample in located:
        record_id = f"{source}_{sample.id}"
        yield f"{where} (record {record_id!r})", {"id": record_id, "image": sample.image, "question": sample.question,
                                                  "answers": list(sample.answers or (sample.answer,))}

"""Benchmark files: question JSONL, one question per line, checked before any inference.

A record is ``{"id", "image" (optional, relative to --image_folder), "question", "answers": [...]}``, or in
LLaVA's own question files (``llava/eval/model_vqa_loader.py``) ``{"question_id", "image", "text"}``: those
carry no answers, so they are answered, not scored (LLaVA scores them with each benchmark's own script).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..data.annotations import AnnotationFile
from ..data.images import ImageLoadError, check_relative_image_path, require_file
from ..utils.errors import DataRecordError
from .metrics import Metric


class BenchError(DataRecordError):
    """A benchmark record that cannot be evaluated; the message names file, line and field."""


# Our field -> LLaVA question files' name for it.
LLAVA_FIELDS = {"id": "question_id", "question": "text"}


@dataclass(frozen=True)
class BenchQuestion:
    id: str
    question: str
    answers: list[str]  # empty: a LLaVA question file, answered and not scored
    image: str | None  # relative to the image folder
    where: str  # file:line, for messages
    source_id: str | int = ""  # the id as the file wrote it (LLaVA's answer files keep its type)
    verbatim: bool = False  # a LLaVA question file's text is the whole prompt: no instruction is added


def _field(record: dict, name: str, llava: bool) -> tuple[str, object]:
    key = LLAVA_FIELDS[name] if llava else name
    return key, record.get(key)


def _question(record: dict, where: str, metric: Metric | None, image_folder: Path | None) -> BenchQuestion:
    llava = "question_id" in record and "id" not in record
    key, record_id = _field(record, "id", llava)
    if isinstance(record_id, bool) or not isinstance(record_id, (str, int)) or str(record_id) == "":
        raise BenchError(f"{where}: field {key!r} must be a non-empty string or an integer, got {record_id!r}")
    key, question = _field(record, "question", llava)
    if not isinstance(question, str) or not question.strip():
        raise BenchError(f"{where}: field {key!r} must be a non-empty string, got {question!r}")
    answers = record.get("answers")
    if metric is None:
        if answers is not None:
            raise BenchError(f"{where}: the record has answers: give --metric to score them")
        answers = []
    else:
        if answers is None and llava:
            raise BenchError(f"{where}: a LLaVA question file has no answers to score: leave out --metric to "
                             f"write the answers only")
        if not isinstance(answers, list) or not answers or not all(isinstance(a, str) for a in answers):
            raise BenchError(f"{where}: field 'answers' must be a non-empty list of strings, got {answers!r}")
        try:
            metric.check_answers(answers)
        except ValueError as error:
            raise BenchError(f"{where}: field 'answers': {error}") from None
    image = record.get("image")
    if image is not None:
        if not isinstance(image, str) or not image.strip():
            raise BenchError(f"{where}: field 'image' must be one image path, got {image!r}")
        if image_folder is None:
            raise BenchError(f"{where}: field 'image': the record has an image but no --image_folder was given")
        try:
            image = check_relative_image_path(image)
            require_file(image_folder / image)  # found now, not after hours of inference
        except ImageLoadError as error:
            raise BenchError(f"{where}: field 'image': {error}") from None
    return BenchQuestion(str(record_id), question, answers, image, where, record_id, verbatim=llava)


def read_bench(path: str | Path, metric: Metric | None, image_folder: Path | None,
               limit: int | None = None) -> list[BenchQuestion]:
    """The first ``limit`` (default all) questions, every one checked; ids must be unique. ``metric`` None:
    questions without answers, to be answered only."""
    if not Path(path).is_file():
        raise BenchError(f"{path}: benchmark file not found")
    annotations = AnnotationFile(path)
    if annotations.is_json_list:
        raise BenchError(f"{path}: a benchmark file is JSONL (one question per line), not a JSON list")
    count = len(annotations) if limit is None else min(limit, len(annotations))
    questions: list[BenchQuestion] = []
    first_seen: dict[str, str] = {}
    for index in range(count):
        where = annotations.location(index)
        record = annotations[index]
        item = _question(record, where, metric, image_folder)
        if item.id in first_seen:
            key, _ = _field(record, "id", "question_id" in record and "id" not in record)
            raise BenchError(f"{where}: field {key!r}: {item.id!r} was already used at {first_seen[item.id]}")
        first_seen[item.id] = where
        questions.append(item)
    if not questions:
        raise BenchError(f"{path}: no questions to evaluate")
    return questions

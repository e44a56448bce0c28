"""Structural checks of one LLaVA record, without images or a tokenizer.

Shared by the dataset (before a sample is built), ``fila-train data inspect`` and the
converters (every record they write passes here), so all three agree on what is valid.
"""
from __future__ import annotations

from typing import Any

from ..utils.errors import DataRecordError
from .images import ImageLoadError, check_relative_image_path
from ..processing.conversations import (ASSISTANT, ConversationError, check_ends_with_answer, check_image_count,
                           parse_turns_indexed)


class RecordError(DataRecordError):
    """A record that cannot be trained on; the message names where it is and the field."""


def image_paths(record: dict, where: str) -> list[str]:
    """The record's ``image`` field as a list of non-empty path strings ([] for text-only)."""
    field = record.get("image")
    if field is None:
        return []
    paths = field if isinstance(field, list) else [field]
    if not paths or not all(isinstance(path, str) and path.strip() for path in paths):
        raise RecordError(f"{where}: field 'image' must be a non-empty path or a list of non-empty paths, "
                          f"got {field!r}")
    return paths


def check_record(record: Any, where: str, *, allow_absolute_images: bool = False) -> list[str]:
    """Raise RecordError naming ``where`` and the field if ``record`` cannot be trained on.

    Returns the record's image paths. Checked: a JSON object; ``conversations`` present,
    alternating human/gpt from the human, no empty answer; as many ``<image>``
    placeholders as images; image paths relative and inside the image root.
    """
    if not isinstance(record, dict):
        raise RecordError(f"{where}: a record must be a JSON object, got {type(record).__name__}")
    if "conversations" not in record:
        raise RecordError(f"{where}: the record has no field 'conversations'")
    paths = image_paths(record, where)
    try:
        _, turns, indices = parse_turns_indexed(record["conversations"])
        check_ends_with_answer(turns, indices)
        check_image_count(turns, indices, len(paths))
    except ConversationError as error:
        raise RecordError(f"{where}: {error}") from None
    for path in paths:
        try:
            check_relative_image_path(path, allow_absolute=allow_absolute_images)
        except ImageLoadError as error:
            raise RecordError(f"{where}: field 'image': {error}") from None
    return paths


def check_caption_record(record: dict, where: str, template: str, images: int) -> None:
    """Under a template that drops the prompt's text (plain: stage 1's captions), one question and its answer,
    about an image: each answer is trained on the images alone (LLaVA's preprocess_plain asserts both).

    A multi-turn instruction record (stage-2 data given to stage 1) trained its later answers with no question
    before them, and a text-only record its answer from nothing, exit 0. Called after check_record (the turns are
    valid; ``images``: how many it names)."""
    _, turns, _ = parse_turns_indexed(record["conversations"])
    exchanges = sum(1 for role, _ in turns if role == ASSISTANT)
    if exchanges != 1:
        raise RecordError(f"{where}: field 'conversations' holds {exchanges} human/gpt exchanges, but template "
                          f"{template!r} drops the prompt's text (stage-1 captions), so every answer after the first "
                          f"would be trained without its question; give it one question and one answer, or train "
                          f"this data with a template that reads prompts")
    if not images:
        raise RecordError(f"{where}: no field 'image', but template {template!r} drops the prompt's text (stage-1 "
                          f"captions), so its answer would be trained from nothing; give it an image, or train this "
                          f"data with a template that reads prompts")

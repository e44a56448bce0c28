"""Structural checks of one LLaVA record, without images or a tokenizer.

Shared by the dataset (before a sample is built), ``fila-train data inspect`` and the
converters (every record they write passes here), so all three agree on what is valid.
"""
from __future__ import annotations

from typing import Any

from ..utils.errors import DataRecordError
from .images import ImageLoadError, check_relative_image_path
from ..processing.conversations import (ConversationError, check_ends_with_answer, check_image_count,
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

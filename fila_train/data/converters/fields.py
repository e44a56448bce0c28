"""Reading fields of source records: every problem names the file, the record and the field."""
from __future__ import annotations

import json
import math
import re
from collections import Counter
from pathlib import Path
from typing import Any

from ...utils.errors import DataError, DataRecordError


class SourceFileError(DataError):
    """An annotation file that cannot be used at all (unreadable, not the expected layout)."""


def without_indices(text: str) -> str:
    return re.sub(r"\[\d+\]", "[i]", text)


def summary_reason(detail: str) -> str:
    """A check's message without the indices, counts and values that differ from record to
    record, so the summary counts one line per kind of problem."""
    reason = re.sub(r"\b\d+\b", "N", without_indices(detail))
    reason = re.sub(r"=('[^']*'|\"[^\"]*\")", "=...", reason)
    return re.sub(r"\b(got|path) .*", r"\1 ...", reason)


class SourceRecordError(DataRecordError):
    """A source record that cannot be converted. ``reason`` is the short form counted in summaries."""

    def __init__(self, where: str, reason: str, detail: str | None = None):
        super().__init__(f"{where}: {detail or reason}")
        self.reason = without_indices(reason)


class SkipSample(Exception):
    """A record the converter leaves out on purpose (another split, an unusable question type)."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


def load_json(path: Path) -> Any:
    try:
        with open(path, encoding="utf-8-sig") as handle:
            return json.load(handle)
    except json.JSONDecodeError as error:
        raise SourceFileError(f"{path}: malformed JSON at line {error.lineno} column {error.colno} "
                              f"({error.msg})") from None
    except UnicodeDecodeError as error:
        raise SourceFileError(f"{path}: not UTF-8 text ({error.reason} at byte {error.start})") from None


def with_id(where: str, raw: Any, field: str) -> str:
    """``where`` plus the record's own id when it has one, so errors can be found by id too."""
    if isinstance(raw, dict) and isinstance(raw.get(field), (str, int)):
        return f"{where} ({field} {raw[field]!r})"
    return where


def require(raw: Any, field: str, where: str) -> Any:
    if not isinstance(raw, dict):
        raise SourceRecordError(where, "record is not a JSON object",
                          f"a record must be a JSON object, got {type(raw).__name__}")
    if raw.get(field) is None:
        raise SourceRecordError(where, f"missing field {field!r}")
    return raw[field]


def as_text(value: Any, field: str, where: str, numbers: bool = False, allow_empty: bool = False) -> str:
    """``value`` as a stripped string; empty only when allowed."""
    # Numbers are accepted where a release stores some answers as JSON numbers (chart values).
    if numbers and isinstance(value, (int, float)) and not isinstance(value, bool):
        # Python's json reads NaN / Infinity, which no chart answer is. Only a float is tested: an int past the
        # float range (JSON holds any integer) has no float to convert to
        if isinstance(value, float) and not math.isfinite(value):
            raise SourceRecordError(where, f"field {field!r} is not a finite number",
                                    f"field {field!r} must be a finite number, got {value!r}")
        value = str(value)
    if not isinstance(value, str):
        raise SourceRecordError(where, f"field {field!r} is not a string",
                          f"field {field!r} must be a string, got {type(value).__name__} {value!r}")
    if not value.strip() and not allow_empty:
        raise SourceRecordError(where, f"empty field {field!r}")
    return value.strip()


def text(raw: Any, field: str, where: str, numbers: bool = False) -> str:
    """A non-empty string field (leading/trailing whitespace removed)."""
    return as_text(require(raw, field, where), field, where, numbers)


def identifier(raw: Any, field: str, where: str) -> str:
    value = require(raw, field, where)
    if isinstance(value, bool) or not isinstance(value, (str, int)) or not str(value).strip():
        raise SourceRecordError(where, f"field {field!r} is not an id",
                          f"field {field!r} must be a non-empty string or an integer, got {value!r}")
    return str(value).strip()


def answer_list(raw: Any, field: str, where: str, keep_empty: bool = False) -> list[str]:
    """The answers of a list field, in annotator order, empty strings dropped unless ``keep_empty`` (a metric
    that scores against every annotator, as VQA's, needs them all); at least one is not empty."""
    values = require(raw, field, where)
    if not isinstance(values, list):
        raise SourceRecordError(where, f"field {field!r} is not a list",
                          f"field {field!r} must be a list of answers, got {type(values).__name__}")
    answers = [as_text(value, f"{field}[{i}]", where, numbers=True, allow_empty=True)
               for i, value in enumerate(values)]
    if not any(answers):
        raise SourceRecordError(where, f"empty field {field!r}", f"field {field!r} holds no non-empty answer")
    return answers if keep_empty else [answer for answer in answers if answer]


def most_common(answers: list[str]) -> str:
    """The answer given by most annotators; a tie goes to the one given first (Counter keeps order)."""
    return Counter(answers).most_common(1)[0][0]

"""Lazy access to LLaVA annotation files (JSON list or JSONL).

No rank parses a whole multi-GB annotation file: one pass records the byte span
of every record, and a record is parsed only when it is read.
"""
from __future__ import annotations

import json
import mmap
import re
from pathlib import Path

import numpy as np

# Structural characters of JSON, plus escapes (consumed as a unit so \" never ends a string).
_JSON_TOKENS = re.compile(rb'\\.|["{}\[\]]', re.DOTALL)


class AnnotationError(ValueError):
    """A malformed annotation file or record; the message names file and record."""


def _jsonl_spans(data: bytes | mmap.mmap) -> np.ndarray:
    spans = []
    start = 0
    size = len(data)
    while start < size:
        end = data.find(b"\n", start)
        end = size if end < 0 else end
        if data[start:end].strip():
            spans.append((start, end))
        start = end + 1
    return np.asarray(spans, dtype=np.int64).reshape(-1, 2)


def _json_list_spans(data: bytes | mmap.mmap, path: Path) -> np.ndarray:
    """Byte spans of the top-level elements of a JSON array, found without parsing values."""
    spans = []
    depth = 0
    in_string = False
    start = -1
    for match in _JSON_TOKENS.finditer(data):
        token = match.group()
        if token == b'"':
            in_string = not in_string
        elif in_string or len(token) > 1:
            continue
        elif token in b"{[":
            depth += 1
            if depth == 2:
                start = match.start()
        else:
            depth -= 1
            if depth == 1:
                spans.append((start, match.end()))
            elif depth < 0:
                raise AnnotationError(f"{path}: unbalanced brackets at byte {match.start()}")
    if depth != 0 or in_string:
        raise AnnotationError(f"{path}: truncated JSON (unclosed list, object or string)")
    return np.asarray(spans, dtype=np.int64).reshape(-1, 2)


class AnnotationFile:
    """Random access to the records of one annotation file by index."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        if not self.path.is_file():
            raise FileNotFoundError(f"annotation file not found: {self.path}")
        with open(self.path, "rb") as handle:
            head = handle.read(4096).lstrip()
            if not head:
                self.spans = np.zeros((0, 2), dtype=np.int64)
                return
            with mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ) as data:
                self.is_json_list = head.startswith(b"[")
                self.spans = _json_list_spans(data, self.path) if self.is_json_list else _jsonl_spans(data)

    def __len__(self) -> int:
        return len(self.spans)

    def location(self, index: int) -> str:
        """Where record ``index`` lives, for error messages (JSONL: line number)."""
        if not getattr(self, "is_json_list", False):
            with open(self.path, "rb") as handle:
                line = handle.read(int(self.spans[index][0])).count(b"\n") + 1
            return f"{self.path}:{line}"
        return f"{self.path}[{index}]"

    def __getitem__(self, index: int) -> dict:
        start, end = (int(v) for v in self.spans[index])
        with open(self.path, "rb") as handle:
            handle.seek(start)
            raw = handle.read(end - start)
        try:
            record = json.loads(raw)
        except json.JSONDecodeError as error:
            raise AnnotationError(f"{self.location(index)}: malformed JSON ({error.msg})") from None
        if not isinstance(record, dict):
            raise AnnotationError(f"{self.location(index)}: a record must be a JSON object")
        return record

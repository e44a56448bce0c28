"""Lazy access to LLaVA annotation files (JSON list or JSONL).

No rank parses a whole multi-GB annotation file: one pass records the byte span
of every record, and a record is parsed only when it is read.
"""
from __future__ import annotations

import codecs
import hashlib
import json
import mmap
import os
import re
from pathlib import Path

import numpy as np

from ..utils.errors import DataError

# Structural characters of JSON, plus escapes (consumed as a unit so \" never ends a string).
_JSON_TOKENS = re.compile(rb'\\.|["{}\[\]]', re.DOTALL)
_NON_SPACE = re.compile(rb"\S")
_UTF8_BOM = b"\xef\xbb\xbf"
_JSON_WHITESPACE = re.compile(r"[ \t\n\r]*")
_DECODER = json.JSONDecoder()
# The decoded fast path reads this much text at a time; an element longer than the largest window
# (no real record) is left to the scanner.
_WINDOW_BYTES = 1 << 24
_MAX_WINDOW_BYTES = 1 << 26


class AnnotationError(DataError):
    """A malformed annotation file or record; the message names file and record."""


class AnnotationChangedError(AnnotationError):
    """The file is not the one whose records were indexed: no record of it can be read (none is to blame)."""


def file_identity(stat_result: os.stat_result) -> tuple[int, int]:
    """What changes when a file is rewritten in place or replaced. Not its inode: some network and FUSE file
    systems number a file anew on each open, which would stop every run on them at its first read."""
    return stat_result.st_size, stat_result.st_mtime_ns


def _jsonl_spans(data: bytes | mmap.mmap, offset: int) -> tuple[np.ndarray, np.ndarray]:
    """Byte spans of the non-blank lines from ``offset`` on, and their 1-based line numbers."""
    spans = []
    lines = []
    start = offset
    line = 1
    size = len(data)
    while start < size:
        end = data.find(b"\n", start)
        end = size if end < 0 else end
        if data[start:end].strip():
            spans.append((start, end))
            lines.append(line)
        start = end + 1
        line += 1
    return np.asarray(spans, dtype=np.int64).reshape(-1, 2), np.asarray(lines, dtype=np.int64)


def _json_list_spans_decoded(data: bytes | mmap.mmap, offset: int) -> np.ndarray | None:
    """What _json_list_spans finds in a well-formed list of objects, several times faster: json's C decoder
    reads each element (and drops it) to find where it ends. The text is decoded a window at a time, so
    memory stays bounded. None at anything else (a malformed or cut element, a non-object, a stray or
    missing comma, data after the list): the scanner then finds the same spans or names the problem.
    """
    spans, size = [], len(data)
    position, window = offset + 1, _WINDOW_BYTES  # the byte after '['
    expect_comma = after_comma = False
    while window <= _MAX_WINDOW_BYTES:
        raw = data[position:position + window]
        at_end = position + len(raw) >= size
        try:
            text = codecs.getincrementaldecoder("utf-8")().decode(raw, final=at_end)
        except UnicodeDecodeError:
            return None
        index, counted_chars, counted_bytes = 0, 0, position

        def byte_at(char: int) -> int:  # byte offsets of ascending char offsets, each stretch encoded once
            nonlocal counted_chars, counted_bytes
            counted_bytes += len(text[counted_chars:char].encode("utf-8"))
            counted_chars = char
            return counted_bytes

        while True:
            index = _JSON_WHITESPACE.match(text, index).end()
            if index == len(text):
                break  # the rest of the file is in the next window
            char = text[index]
            if char == "]" and not after_comma:
                close = byte_at(index)
                return None if _NON_SPACE.search(data, close + 1) else np.asarray(spans, dtype=np.int64).reshape(-1, 2)
            if expect_comma:
                if char != ",":
                    return None
                index, expect_comma, after_comma = index + 1, False, True
                continue
            if char != "{":
                return None
            try:
                _, end = _DECODER.raw_decode(text, index)
            except json.JSONDecodeError:
                break  # cut by the window's end (or malformed: the next windows tell)
            except (ValueError, RecursionError):  # valid JSON Python will not decode (huge ints, deep nesting)
                return None
            spans.append((byte_at(index), byte_at(end)))
            index, expect_comma, after_comma = end, True, False
        if at_end:
            return None  # unclosed list
        next_position = byte_at(index)
        # An element longer than the window: a larger one. Else the next window starts at it.
        window = window * 2 if next_position == position else _WINDOW_BYTES
        position = next_position
    return None


def _json_list_spans(data: bytes | mmap.mmap, path: Path, offset: int) -> np.ndarray:
    """Byte spans of the top-level elements of a JSON array, found without parsing values.

    Every element must be an object or array (records are objects; what else is found there
    is reported, not skipped), separated by single commas, and nothing may follow the list.
    """
    spans = []
    depth = 0
    in_string = False
    start = open_at = close_at = -1
    for match in _JSON_TOKENS.finditer(data, offset):
        token = match.group()
        if token == b'"':
            in_string = not in_string
        elif in_string or len(token) > 1:
            continue
        elif token in b"{[":
            depth += 1
            if depth == 1:
                open_at = match.start()
            elif depth == 2:
                start = match.start()
        else:
            depth -= 1
            if depth == 1:
                spans.append((start, match.end()))
            elif depth == 0:  # the list is closed: anything after it is reported below
                close_at = match.start()
                break
    if close_at < 0:
        raise AnnotationError(f"{path}: truncated JSON (unclosed list, object or string)")
    # What lies between the elements: '[' ws elem ws ',' ws elem ... ws ']' and nothing else.
    gap_starts = [open_at + 1] + [end for _, end in spans]
    gap_ends = [begin for begin, _ in spans] + [close_at]
    for index, (gap_start, gap_end) in enumerate(zip(gap_starts, gap_ends)):
        gap = bytes(data[gap_start:gap_end]).strip()
        expected = b"," if 0 < index < len(spans) else b""
        if gap != expected:
            raise AnnotationError(
                f"{path}: malformed JSON list at byte {gap_start} (around element {index}): expected "
                f"{expected.decode() or 'nothing'} between records, found {gap[:40]!r}; every element "
                f"must be a JSON object and elements are separated by one ','")
    trailing = _NON_SPACE.search(data, close_at + 1)
    if trailing is not None:
        raise AnnotationError(f"{path}: extra data after the end of the JSON list at byte {trailing.start()}")
    return np.asarray(spans, dtype=np.int64).reshape(-1, 2)


def _first_content_byte(data: bytes | mmap.mmap) -> int:
    """Offset of the first byte that is neither whitespace nor a UTF-8 byte-order mark (-1: none)."""
    offset = len(_UTF8_BOM) if data[:len(_UTF8_BOM)] == _UTF8_BOM else 0
    match = _NON_SPACE.search(data, offset)
    return -1 if match is None else match.start()


class AnnotationFile:
    """Random access to the records of one annotation file by index."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        if not self.path.is_file():
            raise FileNotFoundError(f"annotation file not found: {self.path}")
        self.is_json_list = False
        self.lines: np.ndarray | None = None  # JSONL: line number of every record
        self.spans = np.zeros((0, 2), dtype=np.int64)
        self.identity = file_identity(self.path.stat())
        if self.identity[0] == 0:
            return
        with open(self.path, "rb") as handle, \
                mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ) as data:
            self.identity = file_identity(os.fstat(handle.fileno()))
            first = _first_content_byte(data)
            if first < 0:
                return
            self.is_json_list = data[first:first + 1] == b"["
            if self.is_json_list:
                spans = _json_list_spans_decoded(data, first)
                self.spans = spans if spans is not None else _json_list_spans(data, self.path, first)
            else:
                self.spans, self.lines = _jsonl_spans(data, 0)

    def __len__(self) -> int:
        return len(self.spans)

    def location(self, index: int) -> str:
        """Where record ``index`` lives, for error messages (JSONL: line number)."""
        if self.lines is not None:
            return f"{self.path}:{int(self.lines[index])}"
        return f"{self.path}[{index}]"

    def raw(self, index: int) -> bytes:
        start, end = (int(v) for v in self.spans[index])
        with open(self.path, "rb") as handle:
            # Rewritten since it was indexed (a converter run again during training): the spans point into other
            # text, and each read was a "malformed JSON" about a line that is fine, or another record.
            if file_identity(os.fstat(handle.fileno())) != self.identity:
                raise AnnotationChangedError(
                    f"{self.path} changed since the run indexed its records (size or modification time): "
                    f"they are no longer where they were; restart the run on the new file (a resume checks it)")
            handle.seek(start)
            return handle.read(end - start)

    def __getitem__(self, index: int) -> dict:
        raw = self.raw(index)
        try:
            record = json.loads(raw)
        except json.JSONDecodeError as error:
            raise AnnotationError(f"{self.location(index)}: malformed JSON ({error.msg})") from None
        except (ValueError, RecursionError) as error:  # an integer over Python's digit limit, nesting too deep
            raise AnnotationError(f"{self.location(index)}: JSON Python cannot read ({error})") from None
        if not isinstance(record, dict):
            raise AnnotationError(f"{self.location(index)}: a record must be a JSON object")
        return record


class AnnotationSet:
    """Several annotation files read as one: index i is record i of the concatenation."""

    def __init__(self, paths: list[str | Path]):
        if not paths:
            raise ValueError("an annotation set needs at least one file")
        self.files = [AnnotationFile(path) for path in paths]
        self.offsets = np.cumsum([0] + [len(f) for f in self.files])

    @property
    def paths(self) -> list[Path]:
        return [f.path for f in self.files]

    def __len__(self) -> int:
        return int(self.offsets[-1])

    def _find(self, index: int) -> tuple[AnnotationFile, int]:
        if not 0 <= index < len(self):
            raise IndexError(f"record {index} out of range for {len(self)} records")
        which = int(np.searchsorted(self.offsets, index, side="right")) - 1
        return self.files[which], index - int(self.offsets[which])

    def location(self, index: int) -> str:
        annotation, local = self._find(index)
        return annotation.location(local)

    def sample_fingerprint(self, count: int = 64) -> str:
        """Which records sit at ``count`` evenly spread indices (each one's id, else its bytes): a reordered,
        regenerated or edited file of the same size almost surely changes it; a moved one does not."""
        digest = hashlib.sha256()
        for index in np.unique(np.linspace(0, len(self) - 1, num=min(count, len(self))).astype(np.int64)):
            annotation, local = self._find(int(index))
            try:
                record_id = annotation[local].get("id")
            except AnnotationError:
                record_id = None
            identity = (json.dumps(record_id).encode() if isinstance(record_id, (str, int))
                        else annotation.raw(local))
            digest.update(hashlib.sha256(identity).digest())
        return digest.hexdigest()

    def __getitem__(self, index: int) -> dict:
        annotation, local = self._find(index)
        return annotation[local]

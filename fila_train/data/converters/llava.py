"""LLaVA's own files (llava_v1_5_mix665k.json, blip_laion_cc_sbu_558k.json, or JSONL): validated copy."""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any, Iterable, Iterator

from ..annotations import AnnotationError, AnnotationFile
from .base import Converter, register
from .fields import SourceRecordError, SourceFileError


@register
class LLaVA(Converter):
    """LLaVA conversation records (a JSON list or JSONL), copied after checking every record.

    Each record is checked exactly as training checks it (conversations alternate from the
    human, answers non-empty, one ``<image>`` per image, image paths relative); a failure names
    the file, the line (JSONL) or index (JSON list) and the record id. Records are copied
    unchanged except for ``--image_prefix``. Image root: the one the file's paths are relative
    to (LLaVA-1.5: the folder holding coco/, gqa/, ocr_vqa/, textvqa/, vg/).
    Public LLaVA files reuse ids for different conversations, so repeated ids are counted, not refused.
    """

    name = "llava"
    kind = "llava"
    unique_ids = False

    def annotation_files(self, folder: Path, args: argparse.Namespace) -> list[Path]:
        found = sorted([*folder.glob("*.json"), *folder.glob("*.jsonl")])
        if not found:
            raise SourceFileError(f"{folder}: no .json or .jsonl annotation file")
        return found

    def records(self, path: Path, args: argparse.Namespace) -> Iterator[tuple[str, Any]]:
        annotation = AnnotationFile(path)
        for index in range(len(annotation)):
            yield annotation.location(index), (annotation, index)

    def convert(self, raw: Any, where: str, args: argparse.Namespace) -> Iterator[dict]:
        annotation, index = raw
        try:
            yield annotation[index]
        except AnnotationError as error:
            raise SourceRecordError(where, "malformed record", str(error).removeprefix(f"{where}: ")) from None

    def to_records(self, located: Iterable[tuple[str, Any]],
                   args: argparse.Namespace) -> Iterator[tuple[str, dict]]:
        for where, record in located:
            if isinstance(record.get("id"), (str, int)):
                where = f"{where} (record {record['id']!r})"
            yield where, record

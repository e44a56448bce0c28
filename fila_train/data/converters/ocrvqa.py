"""OCR-VQA (ocr-vqa.github.io): questions about book covers, in one dataset.json."""
from __future__ import annotations

import argparse
import posixpath
from pathlib import Path
from typing import Any, Iterator
from urllib.parse import urlparse

from .base import Converter, Sample, register
from .fields import SourceRecordError, SkipSample, SourceFileError, as_text, load_json, require, text

SPLIT_CODES = {1: "train", 2: "val", 3: "test"}


@register
class OCRVQA(Converter):
    """OCR-VQA (dataset.json: an object keyed by image id).

    Entry: imageURL, questions (list), answers (list, same length), title, authorName, genre,
    split (1 train, 2 val, 3 test). Every question becomes one sample with id
    ``<image id>_<question index>``.
    Image root: the ``images/`` folder (next to dataset.json) written by the release's
    loadDataset.py, which names each image ``<image id><extension of imageURL>``;
    ``--image_extension .jpg`` matches copies that were re-encoded to JPEG (LLaVA-1.5's
    ocr_vqa/images). Answer: ``answers[i]``.
    """

    name = "ocrvqa"
    splits = tuple(SPLIT_CODES.values())
    default_split = "train"
    file_patterns = ("dataset.json",)

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--image_extension", default=None,
                            help="image file extension, e.g. .jpg (default: the extension of imageURL, "
                                 "as the release's download script names the files)")

    def records(self, path: Path, args: argparse.Namespace) -> Iterator[tuple[str, Any]]:
        document = load_json(path)
        if not isinstance(document, dict):
            raise SourceFileError(f"{path}: expected a JSON object keyed by image id (the ocrvqa "
                                  f"release format), got a JSON {type(document).__name__}")
        for image_id, raw in document.items():
            yield f"{path}: image {image_id!r}", (image_id, raw)

    def convert(self, raw: Any, where: str, args: argparse.Namespace) -> Iterator[Sample]:
        image_id, entry = raw
        split = require(entry, "split", where)
        if split not in SPLIT_CODES:
            raise SourceRecordError(where, "field 'split' is not 1, 2 or 3",
                              f"field 'split' must be 1 (train), 2 (val) or 3 (test), got {split!r}")
        if SPLIT_CODES[split] != args.split:
            raise SkipSample(f"split {SPLIT_CODES[split]} (converting {args.split})")
        extension = args.image_extension
        if extension is None:
            extension = posixpath.splitext(urlparse(text(entry, "imageURL", where)).path)[1]
            if not extension:
                raise SourceRecordError(where, "imageURL has no file extension",
                                  "field 'imageURL' has no file extension to name the image by "
                                  "(pass --image_extension)")
        questions, answers = require(entry, "questions", where), require(entry, "answers", where)
        if not isinstance(questions, list) or not isinstance(answers, list) or len(questions) != len(answers):
            raise SourceRecordError(where, "questions and answers do not pair up",
                              "fields 'questions' and 'answers' must be lists of the same length")
        for index, (question, answer) in enumerate(zip(questions, answers)):
            yield Sample(id=f"{image_id}_{index}", image=f"{image_id}{extension}",
                         question=as_text(question, f"questions[{index}]", where),
                         answer=as_text(answer, f"answers[{index}]", where, numbers=True))

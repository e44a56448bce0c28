"""One conversion: input files -> samples -> LLaVA records -> checks -> JSONL, with a summary."""
from __future__ import annotations

import argparse
import posixpath
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator

from tqdm import tqdm

from ...utils.files import write_jsonl_atomic
from ..annotations import AnnotationError
from ..images import ImageLoadError, check_relative_image_path
from ..validation import RecordError, check_record
from .base import Converter
from .fields import SourceRecordError, SkipSample, SourceFileError, summary_reason
from .prompts import qa_record


@dataclass
class Summary:
    source: str
    output: Path
    files: list[Path] = field(default_factory=list)
    read: int = 0        # source records read
    samples: int = 0     # question/answer pairs, captions or LLaVA records taken from them
    written: int = 0     # output records
    # reason -> records left out: source records (bad field, other split) or output records (failed a check)
    skipped: Counter = field(default_factory=Counter)
    repeated_ids: int = 0  # llava pass-through: records whose id an earlier record already had
    bench: bool = False  # written as a benchmark file (fila-train eval's format)

    def report(self) -> str:
        lines = [f"{self.source}: read {self.read} records from {len(self.files)} file(s) "
                 f"({', '.join(str(path) for path in self.files)})",
                 f"  samples taken: {self.samples}",
                 f"  {'benchmark questions' if self.bench else 'records'} written: {self.written} -> {self.output}"
                 + (" (fila-train eval's format, every reference answer)" if self.bench else ""),
                 f"  skipped: {sum(self.skipped.values())}"]
        lines += [f"    {count} x {reason}" for reason, count in self.skipped.most_common()]
        if self.repeated_ids:
            lines.append(f"  repeated ids (kept): {self.repeated_ids}")
        return "\n".join(lines)


class BadSamples:
    """``--on_bad_sample``: raise the first error (default) or count it and go on."""

    def __init__(self, policy: str, summary: Summary):
        self.policy = policy
        self.summary = summary

    def __call__(self, error: SourceRecordError) -> None:
        if self.policy == "error":
            raise error
        self.summary.skipped[error.reason] += 1


def input_files(converter: Converter, inputs: list[Path], args: argparse.Namespace) -> list[Path]:
    """Each input file once, and never the output: a folder given as input may hold an earlier run's output,
    which would be read as data again."""
    files: list[Path] = []
    for path in inputs:
        if path.is_dir():
            found = converter.annotation_files(path, args)
        elif path.is_file():
            found = [path]
        else:
            raise SourceFileError(f"--input {path}: no such file or folder")
        for file in found:
            if file.resolve() == Path(args.output).resolve():
                raise SourceFileError(f"--input {path} holds the --output file {args.output}: write the output "
                                      f"elsewhere, or it is read as input by the next run")
            if file.resolve() in {known.resolve() for known in files}:
                raise SourceFileError(f"--input: {file} is given twice; its records would be written twice")
            files.append(file)
    return files


def groupable_samples(located: Iterable[tuple[str, Any]], source: str, bad: BadSamples) -> Iterator[tuple[str, Any]]:
    """Before grouping by image, each question alone: checked as a one-question record, so that a bad one is named
    and skipped by itself, not with its image's other questions; and each source id once, since only a grouped
    record's id (its first question's) meets the record check."""
    first_seen: dict[str, str] = {}
    for where, sample in located:
        if sample.id in first_seen:
            bad(SourceRecordError(where, "duplicate id", f"question id {sample.id!r} was already read from "
                                                         f"{first_seen[sample.id]}"))
            continue
        try:
            check_record(qa_record(f"{source}_{sample.id}", [sample], ""), where)
        except RecordError as error:
            detail = str(error).removeprefix(f"{where}: ")
            bad(SourceRecordError(where, f"invalid record: {summary_reason(detail)}", detail))
            continue
        first_seen[sample.id] = where
        yield where, sample


def located_samples(converter: Converter, files: list[Path], args: argparse.Namespace,
                    summary: Summary, bad: BadSamples) -> Iterator[tuple[str, Any]]:
    """(where, sample) for every sample of every file, up to --limit samples."""
    def limit_reached() -> bool:
        return args.limit is not None and summary.samples >= args.limit

    for path in files:
        for where, raw in tqdm(converter.records(path, args), desc=f"{converter.name} {path.name}",
                               unit=" records", disable=None):
            if limit_reached():
                return
            summary.read += 1
            try:
                # A record's samples are taken together: a bad field leaves out the whole record.
                samples = list(converter.convert(raw, where, args))
            except SkipSample as skip:
                summary.skipped[skip.reason] += 1
                continue
            except SourceRecordError as error:
                bad(error)
                continue
            for sample in samples:
                if limit_reached():
                    return
                summary.samples += 1
                yield where, sample


def prefixed_images(record: dict, prefix: str) -> dict:
    """``--image_prefix`` joined to the record's image path(s)."""
    image = record.get("image")
    if not prefix or image is None:
        return record

    def join(path: Any) -> Any:
        return posixpath.join(prefix, path) if isinstance(path, str) else path

    return {**record, "image": [join(path) for path in image] if isinstance(image, list) else join(image)}


def check_bench_record(record: dict, where: str) -> list[str]:
    """A benchmark record's image path (its question and answers come from the converter's checked fields)."""
    try:
        return [check_relative_image_path(record["image"])]
    except ImageLoadError as error:
        raise RecordError(f"{where}: field 'image': {error}") from None


def checked_records(records: Iterable[tuple[str, dict]], converter: Converter, args: argparse.Namespace,
                    summary: Summary, bad: BadSamples) -> Iterator[dict]:
    """Every record passes the training-time check (validation.check_record; a benchmark record its own)
    before it is written; converted ids are unique; with --image_root every image must exist."""
    check = check_bench_record if converter.writes_bench(args) else check_record
    first_seen: dict[str, str] = {}
    for where, record in records:
        record = prefixed_images(record, args.image_prefix)
        try:
            paths = check(record, where)
        except RecordError as error:
            detail = str(error).removeprefix(f"{where}: ")
            bad(SourceRecordError(where, f"invalid record: {summary_reason(detail)}", detail))
            continue
        record_id = str(record.get("id"))
        if record_id in first_seen:
            if converter.unique_ids:
                bad(SourceRecordError(where, "duplicate id", f"record id {record_id!r} was already made from "
                                                       f"{first_seen[record_id]}"))
                continue
            summary.repeated_ids += 1
        else:
            first_seen[record_id] = where
        if args.image_root is not None:
            missing = [path for path in paths if not (args.image_root / path).is_file()]
            if missing:
                bad(SourceRecordError(where, "image file not found",
                                f"image file not found: {args.image_root / missing[0]}"))
                continue
        summary.written += 1
        yield record


def run(converter: Converter, args: argparse.Namespace) -> Summary:
    summary = Summary(source=converter.name, output=args.output, bench=converter.writes_bench(args))
    bad = BadSamples(args.on_bad_sample, summary)
    summary.files = input_files(converter, args.input, args)
    located = located_samples(converter, summary.files, args, summary, bad)
    if converter.unique_ids and getattr(args, "group_by_image", False):
        located = groupable_samples(located, converter.name, bad)
    records = checked_records(converter.to_records(located, args), converter, args, summary, bad)
    write_jsonl_atomic(args.output, records)  # a temporary file renamed at the end: an error leaves nothing
    return summary


# Errors that stop a conversion; their messages name the file, the record and the field.
CONVERSION_ERRORS = (SourceFileError, SourceRecordError, AnnotationError)

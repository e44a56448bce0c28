"""What every converter shares: its interface and the registry of sources."""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any, ClassVar, Iterable, Iterator

from ...utils.registry import Registry
from .fields import SourceFileError, load_json
from .prompts import bench_records, grouped_by_image, one_per_sample
from .sample import Sample

# LLaVA-1.5's prompt for short-answer VQA data (its mix665k appends it to every question).
SHORT_ANSWER = "Answer the question using a single word or phrase."


class Converter:
    """One public release format -> Samples. Subclasses are registered in CONVERTERS by exact name.

    ``records`` walks one annotation file and yields ``(where, raw)``: ``where`` names the file
    and record for error messages. ``convert`` turns one raw record into Samples and raises
    SourceRecordError (naming ``where`` and the field) or SkipSample for a record it leaves out.
    """

    name: ClassVar[str]
    kind: ClassVar[str] = "qa"  # "qa": question/answer turns; "caption": stage-1 captions
    # Converted ids are <source>_<id of the source>: a repeat means the source repeats an id.
    unique_ids: ClassVar[bool] = True
    instruction: ClassVar[str] = SHORT_ANSWER
    splits: ClassVar[tuple[str, ...]] = ()
    default_split: ClassVar[str | None] = None
    # Annotation file names looked for when --input is a folder ({split} is filled in).
    file_patterns: ClassVar[tuple[str, ...]] = ()
    # Splits written as a benchmark file (``fila-train eval``'s format, with every reference answer) rather
    # than as training records: the validation splits of the benchmarks.
    bench_splits: ClassVar[tuple[str, ...]] = ()
    # Top-level fields in which a release file names its own split.
    split_fields: ClassVar[tuple[str, ...]] = ("dataset_split", "dataset_type")

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        """Source-specific options."""

    def default_instruction(self, args: argparse.Namespace) -> str:
        return self.instruction

    def annotation_files(self, folder: Path, args: argparse.Namespace) -> list[Path]:
        patterns = [pattern.format(split=getattr(args, "split", None)) for pattern in self.file_patterns]
        for pattern in patterns:
            found = sorted(folder.glob(pattern))
            if found:
                return found
        raise SourceFileError(f"{folder}: no {self.name} annotation file matching "
                              f"{' or '.join(map(repr, patterns))} (pass the file itself with --input)")

    def records(self, path: Path, args: argparse.Namespace) -> Iterator[tuple[str, Any]]:
        """Default: the RRC / TextVQA layout, a JSON object whose ``data`` is the record list."""
        document = load_json(path)
        data = document.get("data") if isinstance(document, dict) else None
        if not isinstance(data, list):
            raise SourceFileError(f"{path}: expected a JSON object with a list in field 'data' "
                                  f"(the {self.name} release format)")
        for field in self.split_fields:
            self.check_split(path, document.get(field), f"field {field!r}", args)
        for index, raw in enumerate(data):
            yield f"{path}: data[{index}]", raw

    def check_split(self, path: Path, declared: Any, how: str, args: argparse.Namespace) -> None:
        """A file that is another split than --split asks for is an error, not a silent conversion."""
        split = getattr(args, "split", None)
        if split is not None and declared == "test" and "test" not in self.splits:
            raise SourceFileError(f"{path}: this is the 'test' split ({how}), which has no answers to convert: "
                                  f"pass the {split} file")
        if split is not None and declared in self.splits and declared != split:
            raise SourceFileError(f"{path}: this is the {declared!r} split ({how}), but --split is {split!r}: "
                                  f"pass the {split} file, or --split {declared}")

    def writes_bench(self, args: argparse.Namespace) -> bool:
        return getattr(args, "split", None) in self.bench_splits

    def convert(self, raw: Any, where: str, args: argparse.Namespace) -> Iterator[Sample]:
        raise NotImplementedError

    def to_records(self, located: Iterable[tuple[str, Sample]],
                   args: argparse.Namespace) -> Iterator[tuple[str, dict]]:
        """LLaVA records (with where they came from) from the located samples."""
        if self.writes_bench(args):
            for flag in ("instruction", "group_by_image"):
                if getattr(args, flag, None):
                    raise SourceFileError(f"--{flag} does not apply to --split {args.split}: it is written as a "
                                          f"benchmark file, one question per record (fila-train eval adds "
                                          f"LLaVA's short-answer instruction)")
            return bench_records(self.name, located)
        instruction = getattr(args, "instruction", None)
        if instruction is None:
            instruction = self.default_instruction(args)
        if getattr(args, "group_by_image", False):
            return grouped_by_image(self.name, located, instruction)
        return one_per_sample(self.name, located, self.kind, instruction)


CONVERTERS: Registry[type[Converter]] = Registry("source")


def register(cls: type[Converter]) -> type[Converter]:
    return CONVERTERS.register(cls.name)(cls)

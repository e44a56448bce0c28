"""What every converter shares: its interface and the registry of sources."""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any, ClassVar, Iterable, Iterator

from ...utils.registry import Registry
from .fields import SourceFileError, load_json
from .prompts import grouped_by_image, one_per_sample
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
        for index, raw in enumerate(data):
            yield f"{path}: data[{index}]", raw

    def convert(self, raw: Any, where: str, args: argparse.Namespace) -> Iterator[Sample]:
        raise NotImplementedError

    def to_records(self, located: Iterable[tuple[str, Sample]],
                   args: argparse.Namespace) -> Iterator[tuple[str, dict]]:
        """LLaVA records (with where they came from) from the located samples."""
        instruction = getattr(args, "instruction", None)
        if instruction is None:
            instruction = self.default_instruction(args)
        if getattr(args, "group_by_image", False):
            return grouped_by_image(self.name, located, instruction)
        return one_per_sample(self.name, located, self.kind, instruction)


CONVERTERS: Registry[type[Converter]] = Registry("source")


def register(cls: type[Converter]) -> type[Converter]:
    return CONVERTERS.register(cls.name)(cls)

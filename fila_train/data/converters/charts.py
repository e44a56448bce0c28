"""Chart question answering: ChartQA and DVQA, both a plain JSON list of questions."""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any, Iterator

from .base import Converter, Sample, register
from .fields import SourceFileError, identifier, load_json, text, with_id


def json_list(path: Path, source: str) -> list:
    document = load_json(path)
    if not isinstance(document, list):
        raise SourceFileError(f"{path}: expected a JSON list of questions (the {source} release format), "
                              f"got a JSON {type(document).__name__}")
    return document


@register
class ChartQA(Converter):
    """ChartQA (``ChartQA Dataset/<split>/<split>_human.json`` and ``<split>_augmented.json``).

    Entry: imgname, query, label. Entries have no id: the record id is
    ``chartqa_<file stem>_<index in the file>`` (e.g. chartqa_train_human_0).
    Image root: the split folder (``ChartQA Dataset/train``), images are ``png/<imgname>``.
    ``--subset`` picks the human-written questions, the machine-generated (augmented) ones or
    both (default) when --input is a folder. Answer: ``label``.
    """

    name = "chartqa"
    splits = ("train", "val", "test")
    bench_splits = ("val", "test")
    default_split = "train"
    subsets = ("human", "augmented")

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--subset", choices=("both", *self.subsets), default="both",
                            help="which question files of a split folder to convert (default: both)")

    def annotation_files(self, folder: Path, args: argparse.Namespace) -> list[Path]:
        subsets = self.subsets if args.subset == "both" else (args.subset,)
        names = [f"{args.split}_{subset}.json" for subset in subsets]
        # The split folder itself, or the dataset folder that holds it.
        for candidate in (folder, folder / args.split):
            if all((candidate / name).is_file() for name in names):
                return [candidate / name for name in names]
        raise SourceFileError(f"{folder}: no {' and '.join(names)} here or in {folder / args.split}")

    def records(self, path: Path, args: argparse.Namespace) -> Iterator[tuple[str, Any]]:
        # The entries do not name their split; the release's file names do (val_human.json).
        self.check_split(path, path.stem.partition("_")[0], "its file name", args)
        for index, raw in enumerate(json_list(path, self.name)):
            yield f"{path}[{index}]", (f"{path.stem}_{index}", raw)

    def convert(self, raw: Any, where: str, args: argparse.Namespace) -> Iterator[Sample]:
        sample_id, entry = raw
        yield Sample(id=sample_id, image=f"png/{text(entry, 'imgname', where)}",
                     question=text(entry, "query", where), answer=text(entry, "label", where, numbers=True))


@register
class DVQA(Converter):
    """DVQA (``qa/train_qa.json``, ``qa/val_easy_qa.json``, ``qa/val_hard_qa.json`` of the QA archive).

    Entry: question_id, image ("bar_train_00000000.png"), question, answer, plus template_id
    and answer_bbox. Image root: the release's ``images/`` folder. Answer: ``answer``.
    """

    name = "dvqa"
    splits = ("train", "val_easy", "val_hard")
    default_split = "train"
    file_patterns = ("{split}_qa.json", "qa/{split}_qa.json")

    def records(self, path: Path, args: argparse.Namespace) -> Iterator[tuple[str, Any]]:
        # The entries do not name their split; the release's file names do (val_easy_qa.json).
        self.check_split(path, path.stem.removesuffix("_qa"), "its file name", args)
        for index, raw in enumerate(json_list(path, self.name)):
            yield f"{path}[{index}]", raw

    def convert(self, raw: Any, where: str, args: argparse.Namespace) -> Iterator[Sample]:
        where = with_id(where, raw, "question_id")
        yield Sample(id=identifier(raw, "question_id", where), image=text(raw, "image", where),
                     question=text(raw, "question", where), answer=text(raw, "answer", where, numbers=True))

"""AI2D (allenai.org/data/diagrams): multiple-choice questions about science diagrams."""
from __future__ import annotations

import argparse
import posixpath
import string
from pathlib import Path
from typing import Any, Iterator

from .base import SHORT_ANSWER, Converter, Sample, register
from .fields import SourceRecordError, SkipSample, SourceFileError, as_text, identifier, load_json, require, with_id

# LLaVA-1.5's prompt for multiple-choice data (ScienceQA, MMBench): answer with the letter.
OPTION_LETTER = "Answer with the option's letter from the given choices directly."
TEST_IDS_FILE = "ai2d_test_ids.csv"


@register
class AI2D(Converter):
    """AI2D (ai2d-all.zip: ``questions/<imageName>.json``, ``images/<imageName>``).

    Question file: imageName, questions: {question text: {answerTexts (options), correctAnswer
    (index into answerTexts), abcLabel, questionId}}. Record id: ``ai2d_<questionId>``.
    Image root: the release's ``images/`` folder.

    The options are shown lettered (``A. ...``, one per line). The answer is the option's
    letter by default: it is how LLaVA-1.5 trains multiple choice, and AI2D is usually
    scored that way; ``--answer_style text`` answers with the option text instead.

    ``abcLabel`` questions ask about letters that replace the diagram's text labels ("What is
    A in the diagram?"); the released images still show the original text, so these questions
    are skipped unless ``--abc_images`` names a folder (under the image root) holding the
    diagrams with the letters drawn in (the ``replacementText`` of annotations/<imageName>.json).
    ``--split train`` (default) and ``test`` follow the official split file ai2d_test_ids.csv (image
    ids, one per line; downloaded apart from ai2d-all.zip), looked for next to ``questions/``:
    the release itself has no split, and training on ``all`` trains on the AI2D benchmark's questions.
    """

    name = "ai2d"
    instruction = OPTION_LETTER
    splits = ("train", "test", "all")
    default_split = "train"

    def __init__(self) -> None:
        self._test_ids: set[str] | None = None

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--answer_style", choices=("letter", "text"), default="letter",
                            help="answer with the option's letter (default) or the option's text")
        parser.add_argument("--abc_images", default=None,
                            help="folder (relative to the image root) of the diagrams with letter labels "
                                 "drawn in; without it abcLabel questions are skipped")
        parser.add_argument("--test_ids", type=Path, default=None,
                            help=f"the official split file {TEST_IDS_FILE} for --split train/test "
                                 f"(default: next to questions/)")

    def default_instruction(self, args: argparse.Namespace) -> str:
        return OPTION_LETTER if args.answer_style == "letter" else SHORT_ANSWER

    def annotation_files(self, folder: Path, args: argparse.Namespace) -> list[Path]:
        questions = folder / "questions" if (folder / "questions").is_dir() else folder
        found = sorted(questions.glob("*.json"))
        if not found:
            raise SourceFileError(f"{folder}: no AI2D question files (questions/*.json)")
        return found

    def _in_split(self, path: Path, image: Any, args: argparse.Namespace) -> bool:
        if args.split == "all" or not isinstance(image, str):
            return True  # a missing imageName is reported by convert
        if self._test_ids is None:
            csv = args.test_ids or path.parent.parent / TEST_IDS_FILE
            if not csv.is_file():
                raise SourceFileError(f"--split {args.split} needs {TEST_IDS_FILE} (not found at {csv}): the "
                                      f"official AI2D split file, downloaded apart from the release; pass "
                                      f"--test_ids, or --split all for every question (test ones included)")
            self._test_ids = read_test_ids(csv)
        return (image.split(".")[0] in self._test_ids) == (args.split == "test")

    def records(self, path: Path, args: argparse.Namespace) -> Iterator[tuple[str, Any]]:
        document = load_json(path)
        if not isinstance(document, dict) or not isinstance(document.get("questions"), dict):
            raise SourceFileError(f"{path}: expected a JSON object with an object in field 'questions' "
                                  f"(the AI2D question file format)")
        image = document.get("imageName")
        in_split = self._in_split(path, image, args)
        for question, entry in document["questions"].items():
            yield f"{path}: questions[{question!r}]", (image, question, entry, in_split)

    def convert(self, raw: Any, where: str, args: argparse.Namespace) -> Iterator[Sample]:
        image, question, entry, in_split = raw
        if not in_split:
            raise SkipSample(f"not in the {args.split} split ({TEST_IDS_FILE})")
        where = with_id(where, entry, "questionId")
        if image is None:
            raise SourceRecordError(where, "missing field 'imageName'", "the question file has no field 'imageName'")
        image = as_text(image, "imageName", where)
        if require(entry, "abcLabel", where):
            if args.abc_images is None:
                raise SkipSample("abcLabel question: the released image has no letter labels (see --abc_images)")
            image = posixpath.join(args.abc_images, image)
        options = require(entry, "answerTexts", where)
        if not isinstance(options, list) or not 2 <= len(options) <= len(string.ascii_uppercase):
            raise SourceRecordError(where, "field 'answerTexts' is not a list of options",
                              f"field 'answerTexts' must be a list of 2 to 26 options, got {options!r}")
        options = [as_text(option, f"answerTexts[{i}]", where, numbers=True) for i, option in enumerate(options)]
        correct = require(entry, "correctAnswer", where)
        if isinstance(correct, bool) or not isinstance(correct, int) or not 0 <= correct < len(options):
            raise SourceRecordError(where, "field 'correctAnswer' is not an option index",
                              f"field 'correctAnswer' must index answerTexts (0..{len(options) - 1}), "
                              f"got {correct!r}")
        lettered = "\n".join(f"{string.ascii_uppercase[i]}. {option}" for i, option in enumerate(options))
        answer = string.ascii_uppercase[correct] if args.answer_style == "letter" else options[correct]
        yield Sample(id=identifier(entry, "questionId", where), image=image,
                     question=f"{as_text(question, 'question', where)}\n{lettered}", answer=answer)


def read_test_ids(csv: Path) -> set[str]:
    """The image ids of the split file, one per line. Ids are compared without a file extension: a copy that
    lists "1234.png" must not match nothing, which would put every test question into training."""
    ids = {line.split(",")[0].strip().split(".")[0] for line in csv.read_text().splitlines()}
    ids.discard("")
    if not ids:
        raise SourceFileError(f"{csv}: no image ids; the AI2D split file lists one test image id per line")
    return ids

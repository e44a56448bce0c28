"""``fila-train data convert SOURCE``: a public dataset release -> LLaVA-format JSONL."""
from __future__ import annotations

import argparse
import inspect
import sys
from pathlib import Path

from ...utils.argument_parser import StrictParser
from ..images import ImageLoadError, check_relative_image_path
from .base import CONVERTERS, Converter
from .fields import SourceRecordError
from .pipeline import CONVERSION_ERRORS, run

PROG = "fila-train data convert"


def positive_int(value: str) -> int:
    number = int(value)
    if number < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {number}")
    return number


def image_prefix(value: str) -> str:
    """A prefix every record's image path gets: checked once here, not refused record by record."""
    try:
        return check_relative_image_path(value) if value else value
    except ImageLoadError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def existing_folder(value: str) -> Path:
    if not Path(value).is_dir():
        raise argparse.ArgumentTypeError(f"{value}: no such folder")
    return Path(value)


def add_common_arguments(parser: argparse.ArgumentParser, converter: Converter) -> None:
    parser.add_argument("--input", type=Path, nargs="+", required=True,
                        help="annotation file(s), or a folder holding the release's annotation files")
    parser.add_argument("--output", type=Path, required=True,
                        help="JSONL to write (written to a temporary file, then renamed)")
    parser.add_argument("--image_prefix", type=image_prefix, default="",
                        help="prefix joined to every image path so it is relative to the mixture's "
                             "image root (e.g. docvqa/train)")
    parser.add_argument("--image_root", type=existing_folder, default=None,
                        help="if given, every image (after --image_prefix) must exist under this folder")
    parser.add_argument("--limit", type=positive_int, default=None,
                        help="convert at most this many samples (questions, captions or LLaVA records)")
    parser.add_argument("--on_bad_sample", choices=("error", "skip"), default="error",
                        help="a record with a missing or invalid field stops the conversion (error, "
                             "default) or is counted and left out (skip)")
    if converter.splits:
        parser.add_argument("--split", choices=converter.splits, default=converter.default_split,
                            help=f"which split (default: {converter.default_split})")
    if converter.kind == "qa":
        parser.add_argument("--instruction", default=None,
                            help=f"text after each question (default: {converter.instruction!r}; "
                                 f"'' for none)")
        parser.add_argument("--group_by_image", action="store_true",
                            help="one multi-turn record per image (LLaVA-1.5 style: <image> only in the "
                                 "first question) instead of one record per question")


def build_parser() -> argparse.ArgumentParser:
    parser = StrictParser(
        prog=PROG, description="Convert a public dataset release to LLaVA-format JSONL. Every record "
                               "written passes the same checks as training. `SOURCE --help` describes "
                               "each source's format, image root and answer choice.")
    sources = parser.add_subparsers(dest="source", metavar="SOURCE", required=True)
    for name in CONVERTERS.names():
        converter_class = CONVERTERS.get(name)
        doc = inspect.getdoc(converter_class) or name
        sub = sources.add_parser(name, help=doc.splitlines()[0], description=doc,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
        converter = converter_class()
        add_common_arguments(sub, converter)
        converter.add_arguments(sub)
    return parser


def main(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    try:
        summary = run(CONVERTERS.get(args.source)(), args)
    except CONVERSION_ERRORS as error:
        skippable = isinstance(error, SourceRecordError) and args.on_bad_sample == "error"
        hint = " (--on_bad_sample skip leaves such records out)" if skippable else ""
        print(f"{PROG} {args.source}: error: {error}{hint}\nnothing was written to {args.output}",
              file=sys.stderr)
        return 1
    except OSError as error:  # an output that is a folder, an input folder holding a folder by a file's name, ...
        print(f"{PROG} {args.source}: error: {error.filename or args.output}: {error.strerror or error}\n"
              f"nothing was written to {args.output}", file=sys.stderr)
        return 1
    print(summary.report())
    return 0


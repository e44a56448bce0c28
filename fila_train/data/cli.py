"""``fila-train data convert|inspect|probe``."""
from __future__ import annotations

import logging
import sys
from dataclasses import dataclass, field
from pathlib import Path

from ..utils.errors import ConfigError, FilaError
from .images import DEFAULT_MAX_PIXELS

USAGE = """usage: fila-train data <command> [options]

commands:
  convert   write LLaVA-format JSONL from a public dataset release (see `data convert --help`)
  inspect   check a mixture (or one annotation file) with the real tokenizer and image processor
  probe     generate the fragmentation probe (symbols cut by tile borders, and a control) for a model's tiles
"""


@dataclass
class InspectArguments:
    data_path: str = field(metadata={"help": "mixture spec (.yaml) or one annotation file"})
    image_folder: str | None = field(default=None, metadata={"help": "image root for a single annotation file"})
    data_root: str | None = field(default=None, metadata={"help": "overrides the mixture's 'root'"})
    model_max_length: int = 2048
    decode: bool = field(default=True, metadata={
        "help": "decode every image (finds truncated/corrupt files); --decode false reads headers only "
                "(missing files and files that are no image are still found)"})
    max_image_pixels: int = field(default=DEFAULT_MAX_PIXELS, metadata={
        "help": "images with more pixels are refused before decoding (decompression-bomb guard; the same "
                "as training's --max_image_pixels)"})
    limit: int | None = field(default=None, metadata={"help": "inspect at most this many records per source"})
    max_errors_shown: int = field(default=20, metadata={"help": "errors printed per source (all go to --output)"})
    output: str | None = field(default=None, metadata={"help": "write the full report as JSON here"})


def load_inspection_processor(model_args):
    """The processor of a fila folder, or of LLM + vision tower configs and the flags (no weights)."""
    from transformers import CLIPVisionConfig

    from ..model.builder import is_fila_checkpoint, pretrained_tokenizer
    from ..model.configuration import IMAGE_TOKEN_ID, FilaConfig
    from ..processing.image_processing import FilaImageProcessor
    from ..processing.processor import FilaProcessor, load_processor

    if is_fila_checkpoint(model_args.model_name_or_path):
        return load_processor(model_args.model_name_or_path, FilaConfig.from_pretrained(model_args.model_name_or_path))
    if model_args.vision_tower is None:
        raise ConfigError(f"{model_args.model_name_or_path} is an LLM, so --vision_tower is required")
    vision_config = CLIPVisionConfig.from_pretrained(model_args.vision_tower)
    images = FilaImageProcessor(vision_encoder=model_args.vision_encoder, image_size=vision_config.image_size,
                                patch_size=vision_config.patch_size, vision_options=model_args.vision_options())
    return FilaProcessor(images, pretrained_tokenizer(model_args.model_name_or_path),
                         conversation_template=model_args.conversation_template, image_token_index=IMAGE_TOKEN_ID)


def inspect_main(argv: list[str]) -> int:
    from ..model.arguments import ModelArguments
    from ..utils.argument_parser import StrictArgumentParser
    from ..utils.files import write_json_atomic
    from .dataset import DatasetOptions
    from .image_budget import check_images_fit
    from .inspect import format_report, inspect_mixture, report_dict
    from .mixed_dataset import MixtureDataset
    from .mixture import load_mixture, single_source

    parser = StrictArgumentParser((InspectArguments, ModelArguments), prog="fila-train data inspect")
    if argv and not argv[0].startswith("-"):  # the spec may be given positionally
        argv = ["--data_path", argv[0], *argv[1:]]
    args, model_args = parser.parse(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    fila_processor = load_inspection_processor(model_args)
    template, processor = fila_processor.conversation_template, fila_processor.image_processor.encoder_processor
    try:
        # As training refuses it: else every image record reads as over length, as if the data were at fault.
        check_images_fit(processor.image_token_counts(), args.model_max_length)
        spec = (load_mixture(args.data_path, args.data_root) if args.data_path.endswith((".yaml", ".yml"))
                else single_source(args.data_path, args.image_folder))
        dataset = MixtureDataset(spec, fila_processor.conversations, processor,
                                 DatasetOptions(args.model_max_length, max_image_pixels=args.max_image_pixels))
    except (FilaError, OSError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    reports = inspect_mixture(dataset, args.model_max_length, decode=args.decode, limit=args.limit)
    print(f"mixture {args.data_path} (template {template}, processor {type(processor).__name__}, "
          f"max length {args.model_max_length}):")
    print(format_report(reports, args.model_max_length))
    for report in reports:
        for message in report.errors[:args.max_errors_shown]:
            print(f"error [{report.name}]: {message}", file=sys.stderr)
        if len(report.errors) > args.max_errors_shown:
            print(f"... and {len(report.errors) - args.max_errors_shown} more errors in {report.name}",
                  file=sys.stderr)
    if args.output:
        write_json_atomic(Path(args.output), report_dict(reports) | {"plan": dataset.plan.to_dict()})
        print(f"report written to {args.output}")
    errors = sum(len(r.errors) for r in reports)
    if errors:
        print(f"{errors} unusable record(s): fix them, or train with --on_bad_sample skip to skip and count them",
              file=sys.stderr)
    return 1 if errors else 0


def main(argv: list[str]) -> int:
    if not argv or argv[0] in ("-h", "--help"):
        print(USAGE)
        return 0
    command, rest = argv[0], argv[1:]
    if command == "convert":
        from .converters.cli import main as convert_main
        return convert_main(rest)
    if command == "inspect":
        return inspect_main(rest)
    if command == "probe":
        from .probe import main as probe_main
        return probe_main(rest)
    print(f"fila-train data: unknown command {command!r}\n\n{USAGE}", file=sys.stderr)
    return 2

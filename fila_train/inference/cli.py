"""``fila-train generate``: answer one prompt about one image, streaming the answer to stdout."""
from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path

from transformers import TextStreamer, set_seed

from ..data.images import ImageLoadError, load_rgb_image
from ..utils.argument_parser import StrictArgumentParser
from .generation import GenerationOptions, PromptError, build_prompt, generate_ids
from .loading import ModelLoadError, ModelOptions


@dataclass
class GenerateArguments:
    prompt: str = field(metadata={"help": "the question or instruction"})
    image: str | None = field(default=None, metadata={"help": "image file (omit for a text-only prompt)"})
    seed: int | None = field(default=None, metadata={"help": "random seed for --do_sample"})


def main(argv: list[str] | None = None) -> int:
    parser = StrictArgumentParser((ModelOptions, GenerateArguments, GenerationOptions),
                                  prog="fila-train generate", description=__doc__)
    model_options, args, options = parser.parse(sys.argv[1:] if argv is None else argv)
    try:
        image = load_rgb_image(Path(args.image)) if args.image else None  # before the slow part
        loaded = model_options.load()
        prompt = build_prompt(loaded, args.prompt, image)
    except (ImageLoadError, ModelLoadError, PromptError) as error:
        print(f"fila-train generate: error: {error}", file=sys.stderr)
        return 1
    if args.seed is not None:
        set_seed(args.seed)  # here, so the samples depend on the seed alone, not on what loading drew
    streamer = TextStreamer(loaded.tokenizer, skip_prompt=True, skip_special_tokens=True)
    generate_ids(loaded, [prompt], options, streamer=streamer)
    return 0

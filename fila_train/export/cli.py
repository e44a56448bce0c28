"""``fila-train export --checkpoint DIR --output DIR [--dtype bf16|fp16|fp32] [--format fila|llava] ...``"""
from __future__ import annotations

import logging
import sys

from ..utils.argument_parser import StrictParser
from .errors import ExportError
from .exporter import DTYPES, FORMATS, ExportOptions, export_checkpoint
from .source import PICKLE_WARNING, SOURCES

DESCRIPTION = """Write one merged, self-contained model folder (config, safetensors shards + index, tokenizer,
generation config, image-processor settings, README.md model card) from a training output folder or
a checkpoint-N folder. ZeRO-2/3 checkpoints are consolidated on CPU into their fp32 master weights
(any world size); LoRA adapters are merged. The result loads with one
FilaForConditionalGeneration.from_pretrained(OUTPUT)."""


def parser() -> StrictParser:
    p = StrictParser(prog="fila-train export", description=DESCRIPTION,
                     epilog=f"Security: {PICKLE_WARNING}.")
    p.add_argument("--checkpoint", required=True, help="training output folder or checkpoint-N folder")
    p.add_argument("--output", required=True, help="folder to write (must not exist or be empty, see --overwrite)")
    p.add_argument("--dtype", choices=list(DTYPES), default="bf16", help="dtype of the written weights")
    p.add_argument("--format", choices=list(FORMATS), default="fila",
                   help="llava: also write OUTPUT/llava/, a transformers-native LlavaForConditionalGeneration "
                        "(baseline only: clip + mlp2x_gelu + Llama-family LLM)")
    p.add_argument("--max_shard_size", default="5GB", help="largest safetensors shard, e.g. 5GB or 500MB")
    p.add_argument("--source", choices=list(SOURCES), default="auto",
                   help="auto: the DeepSpeed fp32 master weights when the folder has a ZeRO checkpoint, else the "
                        "safetensors save; deepspeed / safetensors: only that kind")
    p.add_argument("--overwrite", action="store_true", help="replace a non-empty OUTPUT once the export is complete")
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(sys.argv[1:] if argv is None else argv)
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO)
    options = ExportOptions(dtype=args.dtype, format=args.format, max_shard_size=args.max_shard_size,
                            source=args.source, overwrite=args.overwrite)
    try:
        export_checkpoint(args.checkpoint, args.output, options)
    except ExportError as error:
        print(f"fila-train export: error: {error}", file=sys.stderr)
        return 1
    return 0


"""Export: read a checkpoint, rebuild and merge the model, write one self-contained folder atomically."""
from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from pathlib import Path

import torch
from ..processing.processor import FilaProcessor, load_processor
from ..utils.checkpoint_folders import incomplete_checkpoint
from ..utils.dtypes import DTYPES
from ..utils.errors import FilaError
from ..utils.files import write_json_atomic
from .artifacts import IMAGE_PROCESSOR_FILE, generation_config, image_processor_settings
from .errors import ExportError
from .folder import atomic_folder, check_output
from .llava import LLAVA_FOLDER, check_llava_compatible, write_llava
from .model_card import CardFacts, render_model_card
from .rebuild import load_config, rebuild_model
from .run_records import read_stage_chain
from .shards import save_sharded
from .source import find_source, has_safetensors, read_state_dict

logger = logging.getLogger(__name__)

FORMATS = ("fila", "llava")


@dataclass(frozen=True)
class ExportOptions:
    dtype: str = "bf16"  # a DTYPES key
    format: str = "fila"  # "llava": also write a transformers-native Llava copy in llava/
    max_shard_size: str = "5GB"
    source: str = "auto"  # see source.find_source
    overwrite: bool = False

    def __post_init__(self) -> None:
        if self.dtype not in DTYPES:
            raise ExportError(f"unknown dtype {self.dtype!r}; choose one of {', '.join(DTYPES)}")
        if self.format not in FORMATS:
            raise ExportError(f"unknown format {self.format!r}; choose one of {', '.join(FORMATS)}")
        # Checked up front: save_pretrained would only reject it after the (slow) consolidation.
        if not re.fullmatch(r"\s*\d+(\.\d+)?\s*[KMGT]B\s*", self.max_shard_size, flags=re.IGNORECASE):
            raise ExportError(f"max_shard_size {self.max_shard_size!r} is not a size such as 5GB, 500MB or 200KB")


def load_folder_processor(folder: Path, config) -> FilaProcessor:
    try:
        return load_processor(folder, config)
    except FilaError:  # names the folder itself
        raise
    except (OSError, ValueError) as error:
        raise ExportError(f"{folder}: no usable processor or tokenizer files (processor_config.json, "
                          f"tokenizer.json / tokenizer_config.json, saved by the trainer next to the weights): "
                          f"{error}") from None


def export_checkpoint(checkpoint: str | Path, output: str | Path, options: ExportOptions = ExportOptions()) -> Path:
    """Write ``output``: config, safetensors shards + index, tokenizer, generation config, image-processor
    settings and README.md; with ``format="llava"`` also ``output/llava/``. Returns ``output``."""
    folder, output = Path(checkpoint), Path(output)
    check_output(output, options.overwrite, source=folder)
    source = find_source(folder, options.source)
    incomplete = incomplete_checkpoint(folder, training_state=source.kind == "deepspeed")
    if incomplete:
        raise ExportError(incomplete)
    if source.kind == "deepspeed" and has_safetensors(folder):
        logger.info("%s holds both a DeepSpeed checkpoint and a safetensors save: using the DeepSpeed fp32 "
                    "master weights (the safetensors save holds the training-dtype copy)", folder)
    config = load_config(folder)
    if options.format == "llava":
        check_llava_compatible(config, folder)  # before the (slow) consolidation
    processor = load_folder_processor(folder, config)
    chain = read_stage_chain(folder)
    merged_lora = config.lora
    dtype = DTYPES[options.dtype]
    model = rebuild_model(config, read_state_dict(source), source.describe(), dtype)
    model.generation_config = generation_config(processor)
    with atomic_folder(output, options.overwrite) as staging:
        model.to(dtype)
        logger.info("writing %s weights (shards of at most %s)", options.dtype, options.max_shard_size)
        save_sharded(model, staging, options.max_shard_size)
        processor.save_pretrained(staging)  # tokenizer, chat template, image preprocessing
        write_json_atomic(staging / IMAGE_PROCESSOR_FILE, image_processor_settings(model))
        if options.format == "llava":
            write_llava(model, processor, staging / LLAVA_FOLDER, dtype, options.max_shard_size)
        example = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What is written here?"}]}]
        facts = CardFacts(dtype=options.dtype, source=source.describe(), chain=chain, merged_lora=merged_lora,
                          llava_folder=LLAVA_FOLDER if options.format == "llava" else None,
                          prompt_example=processor.apply_chat_template(example, add_generation_prompt=True))
        (staging / "README.md").write_text(render_model_card(model, facts))
    return output

"""The small files next to the weights: generation settings and the image-processor settings."""
from __future__ import annotations

import dataclasses

from transformers import GenerationConfig

from ..processing.processor import FilaProcessor
from ..model import FilaForConditionalGeneration

IMAGE_PROCESSOR_FILE = "fila_image_processor.json"


def generation_config(processor: FilaProcessor, **extra) -> GenerationConfig:
    """Greedy decoding that stops where training taught the model to stop; padding with the tokenizer's pad."""
    tokenizer = processor.tokenizer
    eos = processor.stop_token_ids
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos[0]
    return GenerationConfig(bos_token_id=tokenizer.bos_token_id, eos_token_id=eos if len(eos) > 1 else eos[0],
                            pad_token_id=pad, do_sample=False, **extra)


def image_processor_settings(model: FilaForConditionalGeneration) -> dict:
    """Everything the model's image processor is built from (its dataclass fields), plus the token count
    per view: what a non-fila_train client needs to preprocess images as training did."""
    processor = model.image_processor()
    config = model.config
    return {"vision_encoder": config.vision_encoder, "processor": type(processor).__name__,
            **dataclasses.asdict(processor), "tokens_per_view": processor.tokens_per_view,
            "vision_feature_layer": config.vision_feature_layer, "resample": "bicubic",
            "image_token_id": config.image_token_id}

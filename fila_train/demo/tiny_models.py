"""Tiny random-init components (CLIP tower, LLMs) saved like real checkpoints, for demo and tests.

They are written with ``save_pretrained`` and read back by the same loading code a
real run uses, so nothing here bypasses the production path.
"""

from __future__ import annotations

from pathlib import Path

from transformers import (
    AutoModelForCausalLM,
    CLIPVisionConfig,
    CLIPVisionModel,
    LlamaConfig,
    MistralConfig,
    PreTrainedTokenizerBase,
    Qwen2Config,
)

from ..registry import Registry

TINY_LLMS: Registry = Registry("tiny LLM family")
TINY_LLMS.register("llama")(LlamaConfig)
TINY_LLMS.register("mistral")(MistralConfig)
TINY_LLMS.register("qwen2")(Qwen2Config)


def tiny_clip_config(
    image_size: int = 56, patch_size: int = 14, hidden_size: int = 64, num_layers: int = 4
) -> CLIPVisionConfig:
    return CLIPVisionConfig(
        hidden_size=hidden_size,
        intermediate_size=hidden_size * 2,
        num_hidden_layers=num_layers,
        num_attention_heads=4,
        image_size=image_size,
        patch_size=patch_size,
        projection_dim=hidden_size,
    )


def save_tiny_clip(output_dir: str | Path, seed: int = 0, **config) -> Path:
    import torch

    torch.manual_seed(seed)
    CLIPVisionModel(tiny_clip_config(**config)).save_pretrained(output_dir)
    return Path(output_dir)


def save_tiny_llm(
    output_dir: str | Path,
    tokenizer: PreTrainedTokenizerBase,
    family: str = "llama",
    hidden_size: int = 128,
    num_layers: int = 2,
    seed: int = 0,
) -> Path:
    """A small causal LM of ``family`` with the tokenizer's vocabulary, saved with the tokenizer."""
    import torch

    torch.manual_seed(seed)
    config = TINY_LLMS.get(family)(
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        intermediate_size=hidden_size * 3,
        num_hidden_layers=num_layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=2048,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=False,
    )
    AutoModelForCausalLM.from_config(config).save_pretrained(output_dir)
    tokenizer.save_pretrained(output_dir)
    return Path(output_dir)

"""Which LLaVA release a folder is, from its config.json alone (no torch: the preflight reads it)."""
from __future__ import annotations

import json
from pathlib import Path

LLAVA_HF, ORIGINAL = "llava-hf", "original LLaVA"
PROJECTOR_DEPTHS = {"linear": 1, "mlp2x_gelu": 2}  # LLaVA's projector types -> Linear layers


def release_layout(config: dict | None) -> str | None:
    """llava-hf (``LlavaForConditionalGeneration``), original LLaVA-1.5 (``LlavaLlamaForCausalLM``) or None."""
    if not config:
        return None
    if config.get("model_type") == "llava" and "text_config" in config:
        return LLAVA_HF
    if "mm_vision_tower" in config and "mm_projector_type" in config:
        return ORIGINAL
    return None


def folder_layout(path: str) -> str | None:
    config = Path(path) / "config.json"
    return release_layout(json.loads(config.read_text())) if config.is_file() else None


def release_projector_type(config: dict) -> str:
    """The projector a release's config names (llava-hf's is always Linear-GELU-Linear)."""
    return config.get("mm_projector_type", "mlp2x_gelu")

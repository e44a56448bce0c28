"""Which LLaVA release a folder or hub id is, from its config.json alone (no torch: the preflight reads it)."""
from __future__ import annotations

import json
import re
from pathlib import Path

LLAVA_HF, ORIGINAL = "llava-hf", "original LLaVA"
PROJECTOR_DEPTHS = {"linear": 1, "mlp2x_gelu": 2}  # LLaVA's projector types -> Linear layers
HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


def release_layout(config: dict | None) -> str | None:
    """llava-hf (``LlavaForConditionalGeneration``), original LLaVA-1.5 (``LlavaLlamaForCausalLM``) or None."""
    if not config:
        return None
    if config.get("model_type") == "llava" and "text_config" in config:
        return LLAVA_HF
    if "mm_vision_tower" in config and "mm_projector_type" in config:
        return ORIGINAL
    return None


def local_file(path: str, name: str) -> Path | None:
    """``name`` in a local folder, or in a hub repo's files (the cache when offline); None if there is none."""
    if Path(path).is_dir():
        return Path(path) / name if (Path(path) / name).is_file() else None
    if not HUB_ID.match(path):
        return None
    from huggingface_hub import hf_hub_download

    try:
        return Path(hf_hub_download(path, name))
    except Exception:  # not on the hub, not cached offline, no such file: not a release we can read
        return None


def release_config(path: str) -> dict | None:
    config = local_file(path, "config.json")
    return json.loads(config.read_text()) if config is not None else None


def folder_layout(path: str) -> str | None:
    return release_layout(release_config(path))


def release_projector_type(config: dict) -> str:
    """The projector a release's config names (llava-hf's is always Linear-GELU-Linear)."""
    return config.get("mm_projector_type", "mlp2x_gelu")


def release_feature_layer(config: dict) -> tuple[int, str]:
    """The ViT layer a release's projector was trained on, and the config.json key that says it (absent: -2, the
    default of LlavaConfig and of LLaVA-1.5's training scripts)."""
    key = "vision_feature_layer" if release_layout(config) == LLAVA_HF else "mm_vision_select_layer"
    return config.get(key, -2), key

"""``--model_max_length`` within the positions the LLM was trained on, checked from its config.json before any
weights load.

RoPE computes any position, so a sample longer than the LLM's context (Vicuna-7B-v1.5: 4096) trained without an
error on positions the LLM never learned; the bench refuses the same --seq_len. Context extension is a choice the
LLM's config states (rope_scaling), not something a length flag should do unsaid.
"""
from __future__ import annotations

from ..utils.errors import ConfigError


def rope_is_scaled(config: dict) -> bool:
    """transformers 4 writes rope_scaling ({"type"|"rope_type": ...}), transformers 5 rope_parameters."""
    for key in ("rope_scaling", "rope_parameters"):
        value = config.get(key)
        if isinstance(value, dict) and (value.get("rope_type") or value.get("type") or "default") != "default":
            return True
    return False


def check_within_context(config: dict | None, max_length: int, path: str) -> None:
    """``config``: the raw config.json of ``path`` (an LLM, a saved fila model or a llava-hf release: the LLM's
    part is their ``text_config``). An LLM whose config names no max_position_embeddings is not checked."""
    if not config:
        return
    llm = config.get("text_config") if isinstance(config.get("text_config"), dict) else config
    context = llm.get("max_position_embeddings")
    if not isinstance(context, int) or max_length <= context or rope_is_scaled(llm):
        return
    raise ConfigError(f"--model_max_length {max_length} exceeds the context of the LLM {path}: {context} positions "
                      f"(max_position_embeddings, no RoPE scaling), so every sample past {context} tokens would train "
                      f"positions it never learned; lower --model_max_length to {context}, or give the LLM a "
                      f"rope_scaling in its config.json")

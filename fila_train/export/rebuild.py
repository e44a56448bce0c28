"""Rebuild FilaForConditionalGeneration from a folder's config.json and load a state dict strictly.

The model is built with its parameters on the meta device (no random init of billions of
weights, no second copy in memory) and the consolidated tensors are assigned in place. Buffers
are built for real, so the non-persistent ones (rotary frequencies, position ids) are right.
Nothing is downloaded: every part is rebuilt from the config alone. A QLoRA model's k-bit LLM weights
are dequantized first (bitsandbytes), so its adapters merge in full precision like any LoRA model's.
"""
from __future__ import annotations

import json
import logging
from pathlib import Path

import torch
from accelerate import init_empty_weights
from transformers import PreTrainedModel

from ..model import FilaConfig, FilaForConditionalGeneration
from ..model.builder import saved_config
from .errors import ExportError
from .source import CONFIG_FILE

logger = logging.getLogger(__name__)


def load_config(folder: Path) -> FilaConfig:
    path = folder / CONFIG_FILE
    try:
        model_type = json.loads(path.read_text()).get("model_type")
    except (OSError, json.JSONDecodeError) as error:
        raise ExportError(f"{path}: unreadable config ({error})") from None
    if model_type != FilaConfig.model_type:
        raise ExportError(f"{path}: model_type is {model_type!r}, not {FilaConfig.model_type!r}: "
                          f"only fila models (FilaForConditionalGeneration) are exported")
    return saved_config(folder)


def _format_keys(keys: set[str], limit: int = 12) -> str:
    ordered = sorted(keys)
    more = f" (+{len(ordered) - limit} more)" if len(ordered) > limit else ""
    return ", ".join(ordered[:limit]) + more


def _untie(model: PreTrainedModel, state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Keep one copy of each tied weight (under its source name): the model re-ties them after loading.

    A safetensors save holds only one of the tied names, a consolidated ZeRO state dict holds both.
    """
    untied = dict(state_dict)
    for target, source in model.all_tied_weights_keys.items():
        if target in untied and source not in untied:
            untied[source] = untied.pop(target)
        elif target in untied:
            if not torch.equal(untied[target], untied[source]):
                raise ExportError(f"tied weights {target} and {source} differ in the checkpoint")
            del untied[target]
    return untied


def load_strictly(model: PreTrainedModel, state_dict: dict[str, torch.Tensor], origin: str) -> None:
    """Assign ``state_dict`` to ``model``; any missing or unexpected key (or shape mismatch) is an error."""
    provided = _untie(model, state_dict)
    expected = set(model.state_dict()) - set(model.all_tied_weights_keys)
    missing, unexpected = expected - set(provided), set(provided) - expected
    if missing or unexpected:
        raise ExportError(f"the weights in {origin} do not match the {type(model).__name__} of its config: "
                          f"missing keys: [{_format_keys(missing)}]; unexpected keys: [{_format_keys(unexpected)}]")
    try:
        model.load_state_dict(provided, strict=False, assign=True)  # keys checked above
    except RuntimeError as error:  # shape mismatches, listed by torch with their key names
        raise ExportError(f"the weights in {origin} do not fit the {type(model).__name__} "
                          f"of its config: {error}") from None
    if model.all_tied_weights_keys:
        model.tie_weights()


def dequantize_qlora(config: FilaConfig, state_dict: dict[str, torch.Tensor], origin: str) -> dict[str, torch.Tensor]:
    """The weights of a QLoRA model with its k-bit LLM dequantized; ``config`` then describes the same model
    with 16-bit LoRA and no quantization (the export is a plain model)."""
    from ..model.lora import dequantize_kbit_weights

    bits = config.lora["bits"]
    logger.info("dequantizing the %d-bit LLM weights (bitsandbytes) before merging the LoRA adapters", bits)
    try:
        plain = dequantize_kbit_weights(state_dict)
    except (RuntimeError, ValueError) as error:  # bitsandbytes missing, or statistics missing / malformed
        raise ExportError(f"cannot dequantize the {bits}-bit LLM of the QLoRA model in {origin}: {error}") from None
    config.lora = {**config.lora, "bits": 16}
    if getattr(config.text_config, "quantization_config", None) is not None:
        del config.text_config.quantization_config  # written by the k-bit load; the export is not quantized
    return plain


def rebuild_model(config: FilaConfig, state_dict: dict[str, torch.Tensor], origin: str,
                  dtype: torch.dtype | None = None) -> FilaForConditionalGeneration:
    """The model ``config`` describes holding ``state_dict``, with any LoRA adapters merged (into weights of
    ``dtype``, default the base weights' own), in eval mode."""
    if config.lora is not None and config.lora.get("bits", 16) != 16:
        state_dict = dequantize_qlora(config, state_dict, origin)
    with init_empty_weights(include_buffers=False):
        model = FilaForConditionalGeneration(config)
    load_strictly(model, state_dict, origin)
    if model.config.lora is not None:
        from ..model.lora import merge_lora

        logger.info("merging the LoRA adapters (r=%s, alpha=%s) into the LLM weights",
                    model.config.lora.get("r"), model.config.lora.get("alpha"))
        try:
            merge_lora(model, dtype)
        except ValueError as error:
            raise ExportError(f"cannot merge the LoRA adapters of {origin}: {error}") from None
    # Training saves use_cache=False (it conflicts with gradient checkpointing); an export is for inference.
    model.config.use_cache = True
    return model.eval().requires_grad_(False)

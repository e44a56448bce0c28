"""Activation checkpointing per model part (``--gradient_checkpointing_parts``).

transformers' ``gradient_checkpointing_enable`` ends in ``_set_gradient_checkpointing``, which the
composite routes here, so the HF Trainer's ``--gradient_checkpointing`` switches exactly these:

- ``llm``: the LLM's own decoder layers, through its own ``_set_gradient_checkpointing`` (with the
  trainer's checkpoint kwargs and ``every_n_layers``);
- ``vision``: the CLIP encoder layers (the plain encoder runs them through ``CLIPEncoder``, FILA's
  hybrid encoder layer by layer; both go through the layers' checkpointing wrapper) and, where the
  tower has one, the ConvNeXt stages (timm; only matters when the ConvNeXt is trainable);
- ``cvfm``: FILA's CVFM blocks.

Vision and CVFM always checkpoint non-reentrantly: CVFM takes the ConvNeXt maps in a list, which
reentrant checkpointing does not treat as inputs, so their gradients would silently be lost.
"""
from __future__ import annotations

import functools
from collections.abc import Callable, Iterable

from torch import nn

from ..utils.errors import ConfigError

CHECKPOINT_PARTS: tuple[str, ...] = ("llm", "vision", "cvfm")


def checkpointable_parts(model: nn.Module) -> tuple[str, ...]:
    """The parts of ``model`` that can be checkpointed (``cvfm`` only with FILA's hybrid encoder)."""
    return tuple(part for part in CHECKPOINT_PARTS if part != "cvfm" or hasattr(model.vision_tower, "cvfm"))


def _set_layer_flags(modules: Iterable[nn.Module], enable: bool, checkpoint_func: Callable) -> None:
    """transformers' per-layer switch: GradientCheckpointingLayer reads these two attributes."""
    for module in modules:
        module.gradient_checkpointing = enable
        module._gradient_checkpointing_func = checkpoint_func


def set_part_checkpointing(model: nn.Module, parts: Iterable[str] | None, enable: bool,
                           checkpoint_func: Callable, every_n_layers: int = 1) -> None:
    """Turn checkpointing on (``enable``) for ``parts`` (None: all the model has), off for the rest."""
    available = checkpointable_parts(model)
    selected = set(available if parts is None else parts)
    unsupported = sorted(selected - set(available))
    if unsupported:
        raise ConfigError(f"--gradient_checkpointing_parts: {unsupported} cannot be checkpointed in this model "
                          f"(vision encoder {model.config.vision_encoder!r}); it has: {list(available)}")
    non_reentrant = functools.partial(checkpoint_func, use_reentrant=False)

    llm_on = enable and "llm" in selected
    model.language_model._set_gradient_checkpointing(llm_on, checkpoint_func, every_n_layers)

    tower = model.vision_tower
    vision_on = enable and "vision" in selected
    _set_layer_flags([m for m in tower.clip.modules() if hasattr(m, "gradient_checkpointing")],
                     vision_on, non_reentrant)
    convnext = getattr(tower, "convnext", None)
    if convnext is not None:
        convnext.trunk.set_grad_checkpointing(vision_on)

    if "cvfm" in available:
        _set_layer_flags(tower.cvfm, enable and "cvfm" in selected, non_reentrant)

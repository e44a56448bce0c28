"""Activation checkpointing per model part (``--gradient_checkpointing_parts``).

transformers' ``gradient_checkpointing_enable`` ends in ``_set_gradient_checkpointing``, which the
composite routes here, so the HF Trainer's ``--gradient_checkpointing`` switches exactly these:

- ``llm``: the LLM's own decoder layers, through its own ``_set_gradient_checkpointing`` (with the
  trainer's checkpoint kwargs and ``every_n_layers``);
- each part the vision encoder offers in ``checkpoint_switches()`` (part -> switch(enable, func)): the
  CLIP encoder's ``vision`` layers, and for FILA's hybrid encoder the ``convnext`` stages (only matters when
  the ConvNeXt is trained) and the ``cvfm`` blocks. An encoder without the method offers ``vision``:
  every layer inside it with transformers' per-layer switch (its CLIP tower's).

The encoder's parts always checkpoint non-reentrantly: CVFM takes the ConvNeXt maps in a list, which
reentrant checkpointing does not treat as inputs, so their gradients would silently be lost.
"""
from __future__ import annotations

import functools
from collections.abc import Callable, Iterable

from torch import nn

from ..utils.errors import ConfigError

Switch = Callable[[bool, Callable], None]


def set_layer_flags(modules: Iterable[nn.Module], enable: bool, checkpoint_func: Callable) -> None:
    """transformers' per-layer switch: GradientCheckpointingLayer reads these two attributes."""
    for module in modules:
        module.gradient_checkpointing = enable
        module._gradient_checkpointing_func = checkpoint_func


def checkpointing_layers(module: nn.Module) -> list[nn.Module]:
    """The modules inside ``module`` that have transformers' per-layer checkpointing switch."""
    return [child for child in module.modules() if hasattr(child, "gradient_checkpointing")]


def encoder_switches(encoder: nn.Module) -> dict[str, Switch]:
    if hasattr(encoder, "checkpoint_switches"):
        return encoder.checkpoint_switches()
    layers = checkpointing_layers(encoder)
    return {"vision": lambda enable, func: set_layer_flags(layers, enable, func)} if layers else {}


def checkpointable_parts(model: nn.Module) -> tuple[str, ...]:
    """The parts of ``model`` that can be checkpointed: the LLM's, and those its vision encoder offers."""
    return ("llm", *encoder_switches(model.vision_tower))


def set_part_checkpointing(model: nn.Module, parts: Iterable[str] | None, enable: bool,
                           checkpoint_func: Callable, every_n_layers: int = 1) -> None:
    """Turn checkpointing on (``enable``) for ``parts`` (None: all the model has), off for the rest."""
    switches = encoder_switches(model.vision_tower)
    available = ("llm", *switches)  # checkpointable_parts(model), without asking the encoder twice
    selected = set(available if parts is None else parts)
    unsupported = sorted(selected - set(available))
    if unsupported:
        raise ConfigError(f"--gradient_checkpointing_parts: {unsupported} cannot be checkpointed in this model "
                          f"(vision encoder {model.config.vision_encoder!r}); it has: {list(available)}")
    model.language_model._set_gradient_checkpointing(enable and "llm" in selected, checkpoint_func, every_n_layers)
    non_reentrant = functools.partial(checkpoint_func, use_reentrant=False)
    for part, switch in switches.items():
        switch(enable and part in selected, non_reentrant)


def enable_checkpointing(model, use_reentrant: bool = False) -> None:
    """transformers' switch for the whole model, by the name of the installed version: 5.23 renamed
    ``gradient_checkpointing_enable`` to ``activation_checkpointing_enable`` and warns on the old name."""
    if hasattr(model, "activation_checkpointing_enable"):
        model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": use_reentrant})
    else:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": use_reentrant})


def is_checkpointing(model) -> bool:
    """Whether any layer of ``model`` checkpoints (``is_activation_checkpointing`` from transformers 5.23)."""
    if hasattr(model, "is_activation_checkpointing"):
        return model.is_activation_checkpointing
    return model.is_gradient_checkpointing

"""The contract of a pluggable part: everything the rest of the code asks of a vision encoder or a connector.

Adding one is one module that defines its contract plus one registration: ``VISION_ENCODERS.register(...)``
(or ``CONNECTORS``) from anywhere, or one line in BUILT_IN_* below for a part that ships with fila_train.
Nothing else names encoders or connectors: tunable parts and their learning rates, checkpointable layers,
initialisation, FLOP accounting, options on the command line and model-card lines all come from here.

The registries are light (no torch): the preflight reads their names, and a built-in part's module is only
imported when the part is asked for.

What a part's *module* must offer (duck-typed, as transformers does for its models):
- an encoder: ``image_processor()``; ``forward(images, output_hidden_states) -> VisionOutput``; ``config`` and
  ``hidden_size`` (the CLIP tower's); optionally ``checkpoint_switches() -> {part: switch(enable, func)}``
  (default: "vision" over every layer with transformers' checkpointing switch, model/checkpointing.py) and
  ``flop_split(flops_by_module, root)`` (training/throughput/flop_count.py);
- a connector: a ``model.connector.Connector``.
"""
from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from ..utils.errors import ConfigError

T = TypeVar("T")

# The model's default parts (FilaConfig's defaults; here so that the light preflight reads the same ones).
DEFAULT_VISION_ENCODER = "clip"
DEFAULT_CONNECTOR = "mlp2x_gelu"
DEFAULT_VISION_FEATURE_LAYER = -2  # LLaVA's: the penultimate ViT layer


@dataclass(frozen=True)
class SubPart:
    """A trainable sub-part with its own ``--tune_parts`` name and learning rate (``--part_lr NAME=LR``),
    found by its parameter-name prefix inside the part (e.g. ``cvfm.`` inside ``vision_tower.``)."""

    name: str
    prefix: str
    aligned: bool = True  # trained in stage 1 and carried by the stage-1 connector artifact


@dataclass(frozen=True)
class PartContract:
    name: str
    # The part's options dataclass (to_dict / from_dict), set with --vision_option / --connector_option
    # KEY=VALUE; None: the part has no options.
    options: type | None = None
    sub_parts: tuple[SubPart, ...] = ()
    # Modules whose reset_parameters() is the part's init, which transformers' generic init would destroy.
    self_initialised: tuple[type, ...] = ()
    # Modules initialised by their constructor (e.g. from a checkpoint) that a fresh build must keep.
    constructor_initialised: tuple[type, ...] = ()
    # (options dict as stored in the config) -> extra (label, text) rows of the exported model card.
    card_rows: Callable[[dict], list[tuple[str, str]]] = lambda options: []


@dataclass(frozen=True)
class VisionEncoderContract(PartContract):
    # (FilaConfig, CLIP tower or None) -> the encoder module; may complete config.vision_options so the saved
    # config rebuilds the same encoder with no training code and no downloads.
    build: Callable[..., Any] = None
    # (CLIPVisionConfig, options dict or None) -> the image processor, from configs alone (data tools).
    image_processor: Callable[..., Any] = None
    # (CLIPVisionConfig, options dict or None) -> complete options, validated: what a fresh build from flags
    # will use, checked before any weights load.
    check_fresh_options: Callable[..., Any] = lambda vision_config, options: options
    views_per_image: str = "1"  # for the model card: "1", or how the views vary
    # Encoders that hand the connector the same tokens (views, tokens per view, feature layer) share a layout
    # name ("" = the encoder's own): one's stage-1 artifact starts another (encoders_started_by).
    token_layout: str = ""


@dataclass(frozen=True)
class ConnectorContract(PartContract):
    # (CLIPVisionConfig, LLM hidden size, options dict) -> the Connector.
    build: Callable[..., Any] = None
    # (CLIPVisionConfig, options dict or None) -> complete options, validated before any weights load.
    check_fresh_options: Callable[..., Any] = lambda vision_config, options: options
    # The flags that choose the ViT layers it reads, when not --vision_feature_layer (VisionOutput.features): a
    # multi-layer connector reads hidden states by its own options, and the feature layer would change nothing.
    layer_flags: tuple[str, ...] = ()


class ContractRegistry(Generic[T]):
    """Exact names -> contracts. Built-in contracts are "module:attribute" strings, imported on first use."""

    def __init__(self, kind: str, built_in: dict[str, str]):
        self.kind = kind
        self._entries: dict[str, T | str] = dict(built_in)

    def register(self, contract: T) -> T:
        if contract.name in self._entries:
            raise ValueError(f"{self.kind} {contract.name!r} is registered twice")
        self._entries[contract.name] = contract
        return contract

    def unregister(self, name: str) -> None:
        """For tests and notebooks that register a part for a while."""
        self._entries.pop(name, None)

    def names(self) -> list[str]:
        return sorted(self._entries)

    def __contains__(self, name: str) -> bool:
        return name in self._entries

    def get(self, name: str) -> T:
        if name not in self._entries:
            raise ConfigError(f"unknown {self.kind} {name!r}; choose one of: {', '.join(self.names())}")
        entry = self._entries[name]
        if isinstance(entry, str):
            module, _, attribute = entry.partition(":")
            entry = self._entries[name] = getattr(importlib.import_module(module), attribute)
        return entry

    def all(self) -> list[T]:
        return [self.get(name) for name in self.names()]


BUILT_IN_VISION_ENCODERS = {
    "anyres": "fila_train.model.vision.anyres_encoder:ANYRES_ENCODER",
    "clip": "fila_train.model.vision.clip_encoder:CLIP_ENCODER",
    "fila_hybrid": "fila_train.model.vision.hybrid_encoder:FILA_HYBRID_ENCODER",
}
BUILT_IN_CONNECTORS = {
    "linear": "fila_train.model.connector.projectors:LINEAR",
    "mlp2x_gelu": "fila_train.model.connector.projectors:MLP2X_GELU",
    "mmfuser": "fila_train.model.connector.mmfuser_connector:MMFUSER_CONNECTOR",
}
VISION_ENCODERS: ContractRegistry[VisionEncoderContract] = ContractRegistry("vision encoder", BUILT_IN_VISION_ENCODERS)
CONNECTORS: ContractRegistry[ConnectorContract] = ContractRegistry("connector", BUILT_IN_CONNECTORS)

# The parts every model has (prefix in the composite -> part), after the sub-parts of its encoder/connector.
BASE_PARTS = (("vision_tower.", "vision"), ("connector.", "connector"), ("language_model.", "llm"))


def part_prefixes(vision_encoder: str | None = None, connector_type: str | None = None) -> tuple[tuple[str, str], ...]:
    """Parameter-name prefix -> tunable part for one model (None: every registered one); the first match wins,
    so sub-parts come first."""
    encoders = VISION_ENCODERS.all() if vision_encoder is None else [VISION_ENCODERS.get(vision_encoder)]
    connectors = CONNECTORS.all() if connector_type is None else [CONNECTORS.get(connector_type)]
    subs = tuple((f"vision_tower.{sub.prefix}", sub.name) for encoder in encoders for sub in encoder.sub_parts) + \
        tuple((f"connector.{sub.prefix}", sub.name) for connector in connectors for sub in connector.sub_parts)
    return subs + BASE_PARTS


def all_sub_parts() -> list[SubPart]:
    return [sub for registry in (VISION_ENCODERS, CONNECTORS) for contract in registry.all()
            for sub in contract.sub_parts]


def encoder_sub_parts() -> tuple[str, ...]:
    return tuple(dict.fromkeys(sub.name for contract in VISION_ENCODERS.all() for sub in contract.sub_parts))


def known_parts() -> tuple[str, ...]:
    """Every tunable part name of every registered encoder and connector, in architecture order."""
    encoder_subs = [sub.name for contract in VISION_ENCODERS.all() for sub in contract.sub_parts]
    connector_subs = [sub.name for contract in CONNECTORS.all() for sub in contract.sub_parts]
    return tuple(dict.fromkeys(("vision", *encoder_subs, "connector", *connector_subs, "llm")))


def encoders_started_by(vision_encoder: str) -> tuple[str, ...]:
    """The encoders a stage-1 artifact of ``vision_encoder`` can start: the same token layout, and each aligned
    sub-part the artifact holds (an encoder's extra ones keep their own init: CVFM's closed gates)."""
    def layout(contract: VisionEncoderContract) -> str:
        return contract.token_layout or contract.name

    def aligned(contract: VisionEncoderContract) -> set[str]:
        return {sub.name for sub in contract.sub_parts if sub.aligned}

    own = VISION_ENCODERS.get(vision_encoder)
    return tuple(contract.name for contract in VISION_ENCODERS.all()
                 if layout(contract) == layout(own) and aligned(own) <= aligned(contract))


def aligned_parts() -> tuple[str, ...]:
    """What stage 1 aligns and its connector artifact carries: the connector and the aligned sub-parts."""
    return ("connector", *dict.fromkeys(sub.name for sub in all_sub_parts() if sub.aligned))

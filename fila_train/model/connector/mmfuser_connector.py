"""The ``mmfuser`` connector: MMFuser over the ViT's hidden states, then LLaVA's mlp2x_gelu.

projector = [fuser, Linear, GELU, Linear] as in the public MMFuser code; the fuser is the
attribute ``fuser`` so its parameters are the tunable part "fuser" (``connector.fuser.*``)
and the MLP keeps the ``connector.projector.*`` names of the plain mlp2x_gelu connector.
"""
from __future__ import annotations

import torch
from transformers import CLIPVisionConfig

from ...utils.errors import ConfigError
from ..vision.base import VisionOutput
from .mmfuser import OPTION_FLAGS, MMFuser, MMFuserConfig
from ..contracts import ConnectorContract, SubPart
from .projectors import MLP, Connector, mlp


def check_layer_indices(config: MMFuserConfig, num_layers: int) -> None:
    """Every index must name one of the ``num_layers + 1`` hidden states (0 = embeddings)."""
    num_states = num_layers + 1
    for option, flag in OPTION_FLAGS.items():
        value = getattr(config, option)
        for index in (value if isinstance(value, tuple) else (value,)):
            if not -num_states <= index < num_states:
                raise ConfigError(
                    f"MMFuser option {option}={value} ({flag}): layer {index} is out of range for a ViT with "
                    f"{num_layers} layers ({num_states} hidden states, valid indices {-num_states}..{num_states - 1}); "
                    "the defaults assume a 24-layer ViT-L, so small towers need their own layers")


class MMFuserConnector(Connector):
    needs_hidden_states = True

    def __init__(self, vision_config: CLIPVisionConfig, llm_hidden: int, config: MMFuserConfig):
        super().__init__()
        check_layer_indices(config, vision_config.num_hidden_layers)
        self.fuser = MMFuser(vision_config.hidden_size, config)
        self.projector = mlp(vision_config.hidden_size, llm_hidden, 2)

    def stored_options(self) -> dict:
        return self.fuser.config.to_dict()

    def forward(self, vision: VisionOutput) -> torch.Tensor:
        states = vision.hidden_states
        if states is None:
            raise ValueError("the mmfuser connector needs VisionOutput.hidden_states (needs_hidden_states=True)")
        config = self.fuser.config
        fused = self.fuser(states[config.query_layer], [states[i] for i in config.key_layers])
        return self.projector(fused)


def check_fresh_options(vision_config: CLIPVisionConfig, options: dict | None) -> dict:
    """The complete options, checked against the ViT's depth before any weights load."""
    config = MMFuserConfig.from_dict(options or {})
    check_layer_indices(config, vision_config.num_hidden_layers)
    config.check_width(vision_config.hidden_size)
    return config.to_dict()


MMFUSER_CONNECTOR = ConnectorContract(
    name="mmfuser", options=MMFuserConfig,
    # The fuser (connector.fuser.*) has its own part and learning rate; the MLP is the plain connector's.
    sub_parts=(SubPart("fuser", "fuser."),),
    # Zero offset weights + directional bias, zero attention weights, xavier value/output, zero gammas; the MLP
    # as LLaVA's projector.
    self_initialised=(MMFuser, MLP),
    layer_flags=tuple(OPTION_FLAGS.values()),
    build=lambda vision, llm_hidden, options: MMFuserConnector(vision, llm_hidden, MMFuserConfig.from_dict(options)),
    check_fresh_options=check_fresh_options)

"""The LLaVA projectors (``linear``, ``mlp2x_gelu``) and the connector registry."""
from __future__ import annotations

from typing import Callable

import torch
from torch import nn

from ...registry import Registry
from ..vision.base import VisionOutput


class Connector(nn.Module):
    """Maps a VisionOutput to [num_views, tokens_per_view, llm_hidden]."""

    # Multi-layer connectors set this so the vision encoder returns every hidden state.
    needs_hidden_states: bool = False

    def forward(self, vision: VisionOutput) -> torch.Tensor:
        raise NotImplementedError


class MLPProjector(Connector):
    """``depth`` Linear layers with GELU between them (depth 1 = LLaVA's ``linear``)."""

    def __init__(self, vision_hidden: int, llm_hidden: int, depth: int):
        super().__init__()
        layers: list[nn.Module] = [nn.Linear(vision_hidden, llm_hidden)]
        for _ in range(depth - 1):
            layers += [nn.GELU(), nn.Linear(llm_hidden, llm_hidden)]
        self.projector = nn.Sequential(*layers)

    def forward(self, vision: VisionOutput) -> torch.Tensor:
        return self.projector(vision.features)


ConnectorFactory = Callable[[int, int, dict], Connector]
CONNECTORS: Registry[ConnectorFactory] = Registry("connector")
CONNECTORS.register("linear")(lambda vision_hidden, llm_hidden, options: MLPProjector(vision_hidden, llm_hidden, 1))
CONNECTORS.register("mlp2x_gelu")(lambda vision_hidden, llm_hidden, options: MLPProjector(vision_hidden, llm_hidden, 2))


def build_connector(name: str, vision_hidden: int, llm_hidden: int, options: dict | None = None) -> Connector:
    return CONNECTORS.get(name)(vision_hidden, llm_hidden, options or {})

"""The connector base class and the LLaVA projectors (``linear``, ``mlp2x_gelu``)."""
from __future__ import annotations

import torch
from torch import nn
from transformers import CLIPVisionConfig

from ..contracts import CONNECTORS, ConnectorContract
from ..vision.base import VisionOutput


class Connector(nn.Module):
    """Maps a VisionOutput to [num_views, tokens_per_view, llm_hidden]."""

    # Multi-layer connectors set this so the vision encoder returns every hidden state.
    needs_hidden_states: bool = False

    def stored_options(self) -> dict | None:
        """The complete options to save in FilaConfig.connector_options (None: nothing to store)."""
        return None

    def forward(self, vision: VisionOutput) -> torch.Tensor:
        raise NotImplementedError


class MLP(nn.Sequential):
    """Linear layers with GELU between them, initialised as LLaVA's projector: PyTorch's own nn.Linear init.

    LLaVA builds its projector after the LLM has loaded, so no transformers init touches it; the generic one
    (normal(0, 0.02), zero bias) would start it elsewhere. A self-initialised module of the connector contracts.
    """

    def reset_parameters(self) -> None:
        for module in self:
            if isinstance(module, nn.Linear):
                module.reset_parameters()


def mlp(vision_hidden: int, llm_hidden: int, depth: int) -> MLP:
    """``depth`` Linear layers with GELU between them (depth 1 = LLaVA's ``linear``)."""
    layers: list[nn.Module] = [nn.Linear(vision_hidden, llm_hidden)]
    for _ in range(depth - 1):
        layers += [nn.GELU(), nn.Linear(llm_hidden, llm_hidden)]
    return MLP(*layers)


class MLPProjector(Connector):
    """The selected layer's patch tokens through ``mlp(depth)``."""

    def __init__(self, vision_hidden: int, llm_hidden: int, depth: int):
        super().__init__()
        self.projector = mlp(vision_hidden, llm_hidden, depth)

    def forward(self, vision: VisionOutput) -> torch.Tensor:
        return self.projector(vision.features)


# A connector's build gets the ViT's config (width, depth: multi-layer connectors check their layer
# indices against it), the LLM width and the connector's options dict from FilaConfig.
LINEAR = ConnectorContract(
    name="linear", self_initialised=(MLP,),
    build=lambda vision, llm_hidden, options: MLPProjector(vision.hidden_size, llm_hidden, 1))
MLP2X_GELU = ConnectorContract(
    name="mlp2x_gelu", self_initialised=(MLP,),
    build=lambda vision, llm_hidden, options: MLPProjector(vision.hidden_size, llm_hidden, 2))


def build_connector(name: str, vision_config: CLIPVisionConfig, llm_hidden: int,
                    options: dict | None = None) -> Connector:
    return CONNECTORS.get(name).build(vision_config, llm_hidden, options or {})

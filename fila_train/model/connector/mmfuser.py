"""MMFuser: fuse shallow ViT layers into the deep (query) layer.

The deep layer's patch tokens are queries that pull detail from several shallow
layers via multi-scale deformable cross-attention, refined by a 1-level
deformable self-attention, and added back with zero-initialised per-channel
scales, so at init the fuser is the identity (plain LLaVA-1.5).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import Tensor, nn

from fila_train.model.connector.deformable_attention import MultiScaleDeformableAttention
from fila_train.model.options import stored_options
from fila_train.utils.errors import ConfigError

# Where an option comes from on the command line, for error messages (a shorthand, else --connector_option).
OPTION_FLAGS = {"query_layer": "--fuser_query_layer", "key_layers": "--fuser_key_layers"}


def option_error(option: str, value: Any, problem: str) -> ConfigError:
    flag = OPTION_FLAGS.get(option, f"--connector_option {option}")
    return ConfigError(f"MMFuser option {option}={value} ({flag}): {problem}")


@dataclass
class MMFuserConfig:
    """Which ViT hidden states feed the fuser and the attention shape."""

    key_layers: tuple[int, ...] = (-22, -17, -12, -7)
    query_layer: int = -2
    num_heads: int = 16
    num_points: int = 4
    layer_norm_eps: float = 1e-6

    def __post_init__(self) -> None:
        # Checked here, so a fresh build fails before any weights load (check_fresh_options) and a saved config on
        # reading: no sampling point would leave the fuser an identity for ever, no key layer fail at the first
        # forward, no head a ZeroDivisionError while building it.
        self.key_layers = tuple(int(layer) for layer in self.key_layers)
        if not self.key_layers:
            raise option_error("key_layers", self.key_layers, "must name at least one layer")
        for option in ("num_heads", "num_points"):
            if getattr(self, option) < 1:
                raise option_error(option, getattr(self, option), "must be >= 1")
        if not self.layer_norm_eps > 0:
            raise option_error("layer_norm_eps", self.layer_norm_eps, "must be > 0")

    def check_width(self, dim: int) -> None:
        """The heads split the ViT width ``dim`` evenly (the deformable attention's head_dim)."""
        if dim % self.num_heads:
            raise option_error("num_heads", self.num_heads, f"the ViT width {dim} is not divisible by it")

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["key_layers"] = list(self.key_layers)  # JSON-friendly
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> MMFuserConfig:
        d = dict(d)
        if "key_layers" in d:
            d["key_layers"] = tuple(int(i) for i in d["key_layers"])
        return stored_options(cls, d)


def grid_centres(height: int, width: int, device: torch.device | None = None) -> Tensor:
    """Centres of an HxW grid as normalised (x, y) in [0, 1], row-major: [H*W, 2]."""
    ys = (torch.arange(height, dtype=torch.float32, device=device) + 0.5) / height
    xs = (torch.arange(width, dtype=torch.float32, device=device) + 0.5) / width
    gy, gx = torch.meshgrid(ys, xs, indexing="ij")
    return torch.stack([gx, gy], dim=-1).reshape(-1, 2)


class MMFuser(nn.Module):
    """Multi-layer feature fuser (arXiv 2410.11829).

    Args:
        dim: ViT width ``d``.
        config: layer selection and attention hyper-parameters; the number of
            key layers is the number of cross-attention levels.
    """

    def __init__(self, dim: int, config: MMFuserConfig | None = None) -> None:
        super().__init__()
        config = config or MMFuserConfig()
        self.config = config
        self.dim = dim
        self.num_levels = len(config.key_layers)
        eps = config.layer_norm_eps

        self.norm_query = nn.LayerNorm(dim, eps=eps)  # LayerNorm_q
        self.norm_keys = nn.LayerNorm(dim, eps=eps)  # LayerNorm_f
        self.cross_attn = MultiScaleDeformableAttention(dim, self.num_levels, config.num_heads, config.num_points)
        self.norm_self = nn.LayerNorm(dim, eps=eps)  # LayerNorm_1
        self.self_attn = MultiScaleDeformableAttention(dim, 1, config.num_heads, config.num_points)
        # Zero-init scales make the fuser an identity at init.
        self.gamma1 = nn.Parameter(torch.zeros(dim))
        self.gamma2 = nn.Parameter(torch.zeros(dim))

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """Re-apply the reference init (e.g. after a framework-wide weight init)."""
        for norm in (self.norm_query, self.norm_keys, self.norm_self):
            norm.reset_parameters()
        self.cross_attn.reset_parameters()
        self.self_attn.reset_parameters()
        nn.init.zeros_(self.gamma1)
        nn.init.zeros_(self.gamma2)

    def forward(self, query: Tensor, keys: Sequence[Tensor], grid_shape: tuple[int, int] | None = None) -> Tensor:
        """
        Args:
            query: [B, N, d] patch tokens of the query layer (no CLS).
            keys: ``len(config.key_layers)`` tensors [B, N, d] from the key layers.
            grid_shape: (H, W) with H*W == N; defaults to a square grid.
        Returns:
            [B, N, d] fused tokens, same dtype as ``query``.
        """
        bsz, num_tokens, _ = query.shape
        if len(keys) != self.num_levels:
            raise ValueError(f"expected {self.num_levels} key tensors, got {len(keys)}")
        if grid_shape is None:
            side = math.isqrt(num_tokens)
            if side * side != num_tokens:
                raise ValueError(f"{num_tokens} tokens is not a square grid; pass grid_shape")
            grid_shape = (side, side)
        height, width = grid_shape
        if height * width != num_tokens:
            raise ValueError(f"grid_shape {grid_shape} does not match {num_tokens} tokens")
        for k in keys:
            if k.shape != query.shape:
                raise ValueError(f"key shape {tuple(k.shape)} != query shape {tuple(query.shape)}")

        # Computed on the fly (no buffers) so nothing needs gathering/partitioning under ZeRO-3.
        ref = grid_centres(height, width, device=query.device)[None, :, None, :].expand(bsz, num_tokens, 1, 2)

        q = self.norm_query(query)
        kv = self.norm_keys(torch.cat(list(keys), dim=1))
        f_ca = self.cross_attn(
            q, ref.expand(bsz, num_tokens, self.num_levels, 2), kv, [grid_shape] * self.num_levels
        )

        f_ca_norm = self.norm_self(f_ca)
        f_sa = self.self_attn(f_ca_norm, ref, f_ca_norm, [grid_shape])
        f_sa = f_ca + self.gamma2 * f_sa
        return query + self.gamma1 * f_sa

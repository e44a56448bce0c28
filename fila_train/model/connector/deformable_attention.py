"""Multi-scale deformable attention (Deformable-DETR style), pure PyTorch.

Each query attends to ``num_points`` learned sampling locations per head and per
level around its reference point; values at those locations are read with
bilinear interpolation (``F.grid_sample``) and mixed with softmax weights.
Works on CPU and GPU; the sampling itself always runs in float32.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ...utils.distributed import built_partitioned
from ...utils.errors import ConfigError

SpatialShapes = Tensor | Sequence[tuple[int, int]]


def _shapes_as_list(spatial_shapes: SpatialShapes) -> list[tuple[int, int]]:
    """(H, W) per level as Python ints (splitting the value tensor needs ints)."""
    if isinstance(spatial_shapes, Tensor):
        spatial_shapes = spatial_shapes.tolist()
    return [(int(h), int(w)) for h, w in spatial_shapes]


class MultiScaleDeformableAttention(nn.Module):
    """Deformable attention over ``num_levels`` flattened feature maps.

    Args:
        dim: model width ``d`` (must be divisible by ``num_heads``).
        num_levels: number of feature levels in ``value``.
        num_heads: attention heads.
        num_points: sampling points per head per level.
    """

    def __init__(self, dim: int, num_levels: int, num_heads: int = 16, num_points: int = 4) -> None:
        super().__init__()
        if dim % num_heads != 0:
            raise ConfigError(f"dim ({dim}) must be divisible by num_heads ({num_heads})")
        self.dim = dim
        self.num_levels = num_levels
        self.num_heads = num_heads
        self.num_points = num_points
        self.head_dim = dim // num_heads

        self.sampling_offsets = nn.Linear(dim, num_heads * num_levels * num_points * 2)
        self.attention_weights = nn.Linear(dim, num_heads * num_levels * num_points)
        self.value_proj = nn.Linear(dim, dim)
        self.output_proj = nn.Linear(dim, dim)
        # Not into ZeRO-3's empty placeholders (a saved model loading): the files fill them, and the model's
        # _init_weights resets the module, gathered, where they lack it.
        if not built_partitioned(self):
            self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """Deformable-DETR init: offsets start on a directional grid, weights uniform."""
        nn.init.zeros_(self.sampling_offsets.weight)
        bias = self.sampling_offsets.bias
        # Head h looks toward angle 2*pi*h/heads; dividing by the max-abs component
        # puts the first point on the unit square ring, point p at ring p+1.
        thetas = torch.arange(self.num_heads, dtype=torch.float32, device=bias.device) * (
            2.0 * math.pi / self.num_heads
        )
        grid = torch.stack([thetas.cos(), thetas.sin()], dim=-1)
        grid = grid / grid.abs().max(dim=-1, keepdim=True).values
        scale = torch.arange(1, self.num_points + 1, dtype=torch.float32, device=bias.device)
        grid = grid[:, None, None, :] * scale[None, None, :, None]  # [heads, 1, points, 2]
        grid = grid.expand(self.num_heads, self.num_levels, self.num_points, 2)
        bias.copy_(grid.reshape(-1).to(bias.dtype))

        nn.init.zeros_(self.attention_weights.weight)
        nn.init.zeros_(self.attention_weights.bias)
        for proj in (self.value_proj, self.output_proj):
            nn.init.xavier_uniform_(proj.weight)
            nn.init.zeros_(proj.bias)

    def forward(
        self,
        query: Tensor,
        reference_points: Tensor,
        value: Tensor,
        spatial_shapes: SpatialShapes,
        level_start_index: Tensor | None = None,
    ) -> Tensor:
        """
        Args:
            query: [B, Nq, d].
            reference_points: [B, Nq, L, 2], normalised (x, y) in [0, 1].
            value: [B, sum_l H_l*W_l, d], levels flattened row-major and concatenated.
            spatial_shapes: [L, 2] (H, W) per level (LongTensor or list of pairs).
            level_start_index: [L] offsets of each level in ``value``; implied by
                ``spatial_shapes`` and accepted only for API compatibility.
        Returns:
            [B, Nq, d] in the dtype of ``query``.
        """
        del level_start_index  # recomputed from the shapes
        shapes = _shapes_as_list(spatial_shapes)
        bsz, num_query, _ = query.shape
        num_value = value.shape[1]
        heads, levels, points = self.num_heads, self.num_levels, self.num_points
        if len(shapes) != levels:
            raise ValueError(f"expected {levels} levels, got spatial_shapes for {len(shapes)}")
        if sum(h * w for h, w in shapes) != num_value:
            raise ValueError(f"value has {num_value} tokens, spatial_shapes imply {sum(h * w for h, w in shapes)}")

        # Sampling runs in fp32 (bf16 locations are too coarse for sub-pixel offsets).
        value = self.value_proj(value).float().view(bsz, num_value, heads, self.head_dim)
        offsets = self.sampling_offsets(query).float().view(bsz, num_query, heads, levels, points, 2)
        weights = self.attention_weights(query).float().view(bsz, num_query, heads, levels * points)
        weights = weights.softmax(dim=-1)

        # Offsets are in pixels of each level: normalise by (W, H).
        normalizer = torch.tensor([[w, h] for h, w in shapes], dtype=torch.float32, device=query.device)
        locations = reference_points.float()[:, :, None, :, None, :] + offsets / normalizer[None, None, None, :, None, :]

        out = self._sample(value, shapes, locations, weights)  # [B, Nq, d] fp32
        return self.output_proj(out.to(query.dtype))

    @staticmethod
    def _sample(value: Tensor, shapes: list[tuple[int, int]], locations: Tensor, weights: Tensor) -> Tensor:
        """Bilinear sampling + weighted sum.

        value [B, Nv, heads, hd], locations [B, Nq, heads, L, P, 2] in [0, 1],
        weights [B, Nq, heads, L*P] -> [B, Nq, heads*hd].
        """
        bsz, _, heads, head_dim = value.shape
        _, num_query, _, levels, points, _ = locations.shape
        value_levels = value.split([h * w for h, w in shapes], dim=1)
        grids = 2.0 * locations - 1.0  # grid_sample expects [-1, 1]
        sampled = []
        for lvl, (h, w) in enumerate(shapes):
            # [B, HW, heads, hd] -> [B*heads, hd, H, W]
            v = value_levels[lvl].permute(0, 2, 3, 1).reshape(bsz * heads, head_dim, h, w)
            # [B, Nq, heads, P, 2] -> [B*heads, Nq, P, 2]
            g = grids[:, :, :, lvl].transpose(1, 2).reshape(bsz * heads, num_query, points, 2)
            sampled.append(F.grid_sample(v, g, mode="bilinear", padding_mode="zeros", align_corners=False))
        # [B*heads, hd, Nq, L*P] weighted by [B*heads, 1, Nq, L*P]
        stacked = torch.stack(sampled, dim=-2).flatten(-2)
        w = weights.transpose(1, 2).reshape(bsz * heads, 1, num_query, levels * points)
        out = (stacked * w).sum(dim=-1)  # [B*heads, hd, Nq]
        return out.view(bsz, heads * head_dim, num_query).transpose(1, 2)

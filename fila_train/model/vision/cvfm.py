"""CVFM, FILA's ConvNeXt-ViT fusion: align a ConvNeXt stage map to each view, fuse into its patch tokens.

One ``CVFMBlock`` per interaction point (ViT layer L_k <-> ConvNeXt stage k). A view's
patch tokens only ever see the ConvNeXt features of their own canvas window: tile (r, c)
takes the stage-k window of side g * 2^(3-k) at (r, c), the global view the whole map.
Every fusion ends in a zero-initialised tanh gate, so at init the encoder is the plain ViT.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from transformers.modeling_layers import GradientCheckpointingLayer

from ...utils.distributed import built_partitioned
from ...utils.errors import ConfigError
from ..options import stored_options

ALIGN_MODES = ("avg_pool", "interpolate", "strided_conv")
FUSION_MODES = ("concat", "add", "cross_attn")
GATE_MODES = ("scalar", "channel")


@dataclass
class CVFMConfig:
    vit_layers: tuple[int, ...] = (2, 6, 12, 20)  # 1-based ViT blocks, fusion after each; one per ConvNeXt stage
    align: str = "avg_pool"
    fusion: str = "concat"
    gate: str = "scalar"

    def __post_init__(self) -> None:
        self.vit_layers = tuple(int(layer) for layer in self.vit_layers)
        if list(self.vit_layers) != sorted(set(self.vit_layers)) or min(self.vit_layers, default=0) < 1:
            raise ConfigError(f"vit_layers={self.vit_layers} must be distinct, increasing and >= 1")
        for name, allowed in (("align", ALIGN_MODES), ("fusion", FUSION_MODES), ("gate", GATE_MODES)):
            if getattr(self, name) not in allowed:
                raise ConfigError(f"CVFMConfig.{name}={getattr(self, name)!r}; expected one of {allowed}")

    def to_dict(self) -> dict[str, Any]:
        return {"vit_layers": list(self.vit_layers), "align": self.align, "fusion": self.fusion, "gate": self.gate}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> CVFMConfig:
        return stored_options(cls, data)


class Gate(nn.Module):
    """y -> tanh(alpha) * y with alpha (a scalar or one per channel) initialised to 0."""

    def __init__(self, dim: int, mode: str = "scalar"):
        super().__init__()
        self.alpha = nn.Parameter(torch.zeros(1 if mode == "scalar" else dim))

    def reset_parameters(self) -> None:
        nn.init.zeros_(self.alpha)

    def forward(self, y: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self.alpha).to(y.dtype) * y


class WindowAligner(nn.Module):
    """Per-image stage map [C, rows*s, cols*s] -> [1 + rows*cols, g*g, C]: global view, then tiles row-major.

    Windows are cut *before* any reduction, so no reduction mode can leak one tile's
    features into another's tokens. The global view's window is the whole map averaged
    down to s x s, then reduced like a tile (for avg_pool that is the plain whole-map mean).
    """

    def __init__(self, mode: str, channels: int, factor: int, grid: int):
        super().__init__()
        self.mode, self.factor, self.grid = mode, factor, grid
        if mode == "strided_conv":
            self.conv = nn.Conv2d(channels, channels, kernel_size=factor, stride=factor)
            if not built_partitioned(self):  # as MultiScaleDeformableAttention's
                self.reset_parameters()

    def reset_parameters(self) -> None:
        if self.mode == "strided_conv":  # start as average pooling, so the modes agree at init
            with torch.no_grad():
                self.conv.weight.zero_()
                self.conv.weight[range(self.conv.in_channels), range(self.conv.in_channels)] = 1.0 / self.factor**2
                self.conv.bias.zero_()

    def windows(self, stage_map: torch.Tensor, rows: int, cols: int) -> torch.Tensor:
        """[C, rows*s, cols*s] -> [1 + rows*cols, C, s, s]."""
        channels, height, width = stage_map.shape
        side = self.grid * self.factor
        if (height, width) != (rows * side, cols * side):
            raise ValueError(f"stage map {height}x{width} does not match a {rows}x{cols} grid of {side}-windows")
        tiles = stage_map.reshape(channels, rows, side, cols, side).permute(1, 3, 0, 2, 4)
        tiles = tiles.reshape(rows * cols, channels, side, side)
        whole = F.avg_pool2d(stage_map.unsqueeze(0), kernel_size=(rows, cols)) if rows * cols > 1 else stage_map[None]
        return torch.cat([whole, tiles], dim=0)

    def reduce(self, windows: torch.Tensor) -> torch.Tensor:
        """[N, C, s, s] -> [N, C, g, g]."""
        if self.mode == "strided_conv":
            return self.conv(windows.to(self.conv.weight.dtype))
        if self.factor == 1:
            return windows
        if self.mode == "avg_pool":
            return F.avg_pool2d(windows, self.factor)
        # In float32: the antialiased resize has no bf16/fp16 CPU kernel (a bf16 model would fail on the CPU).
        return F.interpolate(windows.float(), size=(self.grid, self.grid), mode="bilinear", align_corners=False,
                             antialias=True).to(windows.dtype)

    def forward(self, stage_maps: list[torch.Tensor], grids: list[tuple[int, int]]) -> torch.Tensor:
        """Per-image maps and (rows, cols) -> [sum of views, g*g, C] in image order, then view order."""
        windows = torch.cat([self.windows(m, rows, cols) for m, (rows, cols) in zip(stage_maps, grids)], dim=0)
        return self.reduce(windows).flatten(2).transpose(1, 2)


class ConcatFusion(nn.Module):
    """x <- x + gate(MLP([LN(x) ; LN(c)])): the paper's best variant."""

    def __init__(self, dim: int, channels: int, gate: str, num_heads: int = 0):
        super().__init__()
        self.norm_x, self.norm_c = nn.LayerNorm(dim), nn.LayerNorm(channels)
        self.mlp = nn.Sequential(nn.Linear(dim + channels, dim), nn.GELU(), nn.Linear(dim, dim))
        self.gate = Gate(dim, gate)

    def forward(self, patches: torch.Tensor, aligned: torch.Tensor) -> torch.Tensor:
        fused = torch.cat([self.norm_x(patches), self.norm_c(aligned)], dim=-1)
        return patches + self.gate(self.mlp(fused))


class AddFusion(nn.Module):
    """x <- x + gate(Linear(LN(c))): ConvNeXt features projected to the ViT width and added."""

    def __init__(self, dim: int, channels: int, gate: str, num_heads: int = 0):
        super().__init__()
        self.norm_c = nn.LayerNorm(channels)
        self.proj = nn.Linear(channels, dim)
        self.gate = Gate(dim, gate)

    def forward(self, patches: torch.Tensor, aligned: torch.Tensor) -> torch.Tensor:
        return patches + self.gate(self.proj(self.norm_c(aligned)))


class CrossAttnFusion(nn.Module):
    """x <- x + gate(Attn(q=LN(x), kv=LN(c))): a view's patch tokens attend to its own aligned window."""

    def __init__(self, dim: int, channels: int, gate: str, num_heads: int = 8):
        super().__init__()
        self.norm_x, self.norm_c = nn.LayerNorm(dim), nn.LayerNorm(channels)
        self.attn = nn.MultiheadAttention(dim, num_heads, kdim=channels, vdim=channels, batch_first=True)
        self.gate = Gate(dim, gate)

    def forward(self, patches: torch.Tensor, aligned: torch.Tensor) -> torch.Tensor:
        context = self.norm_c(aligned)
        attended, _ = self.attn(self.norm_x(patches), context, context, need_weights=False)
        return patches + self.gate(attended)


FUSIONS: dict[str, type[nn.Module]] = {"concat": ConcatFusion, "add": AddFusion, "cross_attn": CrossAttnFusion}


class CVFMBlock(GradientCheckpointingLayer):
    """One interaction point: align stage k to every view, fuse into the patch tokens, CLS untouched.

    A GradientCheckpointingLayer, so it can be checkpointed like the ViT layers it sits between
    (model/checkpointing.py): call it with positional arguments only.
    """

    def __init__(self, config: CVFMConfig, dim: int, channels: int, factor: int, grid: int, num_heads: int):
        super().__init__()
        self.align = WindowAligner(config.align, channels, factor, grid)
        self.fusion = FUSIONS[config.fusion](dim, channels, config.gate, num_heads)

    def reset_parameters(self) -> None:
        """Re-initialise (gates to 0, strided conv to average pooling), e.g. after meta-device construction."""
        for module in reversed(list(self.modules())):  # children first, so the aligner/gate inits win
            if isinstance(module, nn.MultiheadAttention):
                module._reset_parameters()
            elif module is not self and hasattr(module, "reset_parameters"):
                module.reset_parameters()

    def forward(self, hidden: torch.Tensor, stage_maps: list[torch.Tensor],
                grids: list[tuple[int, int]]) -> torch.Tensor:
        """hidden [V, 1 + g*g, d]; stage_maps: one [C, H, W] per image; grids: (rows, cols) per image."""
        aligned = self.align(stage_maps, grids).to(hidden.dtype)
        patches = self.fusion(hidden[:, 1:], aligned)
        return torch.cat([hidden[:, :1], patches], dim=1)


def build_cvfm(config: CVFMConfig, dim: int, stage_channels: tuple[int, ...], grid: int,
               num_heads: int) -> nn.ModuleList:
    """One block per (ViT layer, ConvNeXt stage) pair; stage k's window is 2^(last-k) times the ViT grid."""
    if len(config.vit_layers) != len(stage_channels):
        raise ConfigError(f"{len(config.vit_layers)} vit_layers for {len(stage_channels)} ConvNeXt stages; "
                          "need one per stage")
    last = len(stage_channels) - 1
    return nn.ModuleList(
        CVFMBlock(config, dim, channels, 2 ** (last - k), grid, num_heads) for k, channels in enumerate(stage_channels)
    )

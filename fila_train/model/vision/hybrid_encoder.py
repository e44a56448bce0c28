"""FILA's hybrid encoder: anyres CLIP-ViT views fused with a high-resolution ConvNeXt through CVFM.

Data side: ``HybridImageProcessor`` turns one image into a global view + canvas tiles (for the
ViT) and the same canvas at 32/14 scale (for the ConvNeXt), so the last ConvNeXt stage has
exactly the ViT token grid of the canvas. Model side: ``HybridVisionEncoder`` drives the
transformers CLIP modules block by block and applies one CVFM block after each configured
ViT layer. Output contract: ``VisionOutput``, as ``ClipVisionEncoder``.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass, field, replace
from typing import Any

import torch
from PIL import Image
from torch import nn
from transformers import CLIPVisionConfig, CLIPVisionModel

from ...utils.image_size import source_size
from ...utils.errors import ConfigError
from ..checkpointing import Switch, checkpointing_layers, set_layer_flags
from ..contracts import SubPart, VisionEncoderContract
from ..options import check_stored_keys
from ..zero_link import zero_from
from .anyres import AnyresConfig, cut_tiles, fit_to_canvas, fitted_size, global_view, select_canvas, tile_grid
from .base import VisionOutput
from .clip_encoder import CLIP_MEAN, CLIP_STD, ClipTowerMixin, padding_fill, to_normalized_tensor
from .convnext_branch import ConvNeXtBranch, ConvNeXtBranchConfig, check_checkpoint_normalization
from .cvfm import CVFMBlock, CVFMConfig, build_cvfm


@dataclass
class HybridEncoderConfig:
    anyres: AnyresConfig = field(default_factory=AnyresConfig)
    convnext: ConvNeXtBranchConfig = field(default_factory=ConvNeXtBranchConfig)
    cvfm: CVFMConfig = field(default_factory=CVFMConfig)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON types, for storing inside a transformers PretrainedConfig."""
        return {"anyres": self.anyres.to_dict(), "convnext": self.convnext.to_dict(), "cvfm": self.cvfm.to_dict()}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> HybridEncoderConfig:
        check_stored_keys(cls, data)
        return cls(
            anyres=AnyresConfig.from_dict(data.get("anyres", {})),
            convnext=ConvNeXtBranchConfig.from_dict(data.get("convnext", {})),
            cvfm=CVFMConfig.from_dict(data.get("cvfm", {})),
        )


@dataclass(frozen=True)
class HybridImageProcessor:
    """One image -> ViT views [1 + tiles, 3, t, t] (global first), the high-res canvas, and the tile grid."""

    anyres: AnyresConfig
    patch_size: int = 14
    convnext_stride: int = ConvNeXtBranch.total_stride
    mean: tuple[float, float, float] = CLIP_MEAN
    std: tuple[float, float, float] = CLIP_STD
    high_res: bool = True  # the ConvNeXt's canvas; the crop-only anyres encoder has no use for it

    def __post_init__(self) -> None:
        if self.anyres.tile_size % self.patch_size:
            raise ConfigError(f"tile_size {self.anyres.tile_size} is not a multiple of patch_size {self.patch_size}")

    @property
    def grid_side(self) -> int:
        return self.anyres.tile_size // self.patch_size

    @property
    def tokens_per_view(self) -> int:
        return self.grid_side**2

    def high_res_size(self, canvas: tuple[int, int]) -> tuple[int, int]:
        """(W, H) of the canvas at convnext_stride / patch_size scale (exact: one stride per ViT patch)."""
        return canvas[0] // self.patch_size * self.convnext_stride, canvas[1] // self.patch_size * self.convnext_stride

    def decode_size(self, width: int, height: int) -> tuple[int, int]:
        """The largest size any output takes from the image: its fit in the high-res canvas, and at
        least one tile on each axis (the global view). A reduced decode may drop the rest."""
        canvas = select_canvas(width, height, self.anyres.canvases)
        fit_w, fit_h = fitted_size(width, height, self.high_res_size(canvas))
        return max(fit_w, self.anyres.tile_size), max(fit_h, self.anyres.tile_size)

    def __call__(self, image: Image.Image) -> dict[str, Any]:
        # The canvas (and so the token count) follows the file's size, also after a reduced decode.
        width, height = source_size(image)
        image = image.convert("RGB")
        fill = padding_fill(self.mean)
        canvas = select_canvas(width, height, self.anyres.canvases)
        canvas_image = fit_to_canvas(image, canvas, fill, (width, height))
        views = torch.cat([
            to_normalized_tensor(global_view(image, canvas_image, self.anyres), self.mean, self.std).unsqueeze(0),
            cut_tiles(to_normalized_tensor(canvas_image, self.mean, self.std), self.anyres.tile_size),
        ])
        processed = {"pixel_values": views, "grid": tile_grid(canvas, self.anyres.tile_size)}
        if self.high_res:
            # Resized from the original image, not upsampled from the tiles: the ConvNeXt must see real detail.
            high_res = fit_to_canvas(image, self.high_res_size(canvas), fill, (width, height))
            processed["hr_pixel_values"] = to_normalized_tensor(high_res, self.mean, self.std).unsqueeze(0)
        return processed

    def num_image_tokens(self, processed: dict[str, Any]) -> int:
        return processed["pixel_values"].shape[0] * self.tokens_per_view

    # The canvas (and so the tile count) follows the image's aspect ratio and size.
    image_size_matters = True

    def num_image_tokens_for_size(self, width: int, height: int) -> int:
        """What num_image_tokens gives for an image of this size, without decoding it."""
        return self.tokens_on(select_canvas(width, height, self.anyres.canvases))

    def tokens_on(self, canvas: tuple[int, int]) -> int:
        """An image on this canvas: the global view and every tile."""
        rows, cols = tile_grid(canvas, self.anyres.tile_size)
        return (1 + rows * cols) * self.tokens_per_view

    def image_token_counts(self) -> dict[str, int]:
        return {f"{width}x{height}": self.tokens_on((width, height)) for width, height in self.anyres.canvases}

    def collate(self, processed: list[dict[str, Any]]) -> dict[str, Any]:
        """Views concatenated in image order; high-res canvases stacked if all alike, else a list."""
        batch = {"pixel_values": torch.cat([p["pixel_values"] for p in processed], dim=0),
                 "grids": torch.tensor([list(p["grid"]) for p in processed], dtype=torch.long).reshape(-1, 2)}
        if self.high_res:
            high_res = [p["hr_pixel_values"] for p in processed]
            same_shape = len({tuple(h.shape) for h in high_res}) == 1
            batch["hr_pixel_values"] = torch.cat(high_res, dim=0) if same_shape else high_res
        return batch


def checked_grids(grids: Any, num_views: int) -> list[tuple[int, int]]:
    """The batch's tile grids as (rows, cols), checked against its number of views (1 + tiles per image)."""
    if isinstance(grids, torch.Tensor):
        grids = grids.tolist()
    grids = [(int(rows), int(cols)) for rows, cols in grids]
    implied = sum(1 + rows * cols for rows, cols in grids)
    if implied != num_views:
        raise ValueError(f"grids {grids} imply {implied} views, got {num_views}")
    return grids


def _split_images(high_res: list[torch.Tensor]) -> list[torch.Tensor]:
    """A list of high-res canvases ([1, 3, H, W] or [3, H, W]) -> one [3, H, W] per image."""
    return [h.squeeze(0) if h.dim() == 4 else h for h in high_res]


class HybridVisionEncoder(ClipTowerMixin, nn.Module):
    """CLIP-ViT on anyres views + ConvNeXt on the high-res canvas, fused by CVFM between ViT blocks."""

    def __init__(self, vision_config: CLIPVisionConfig, config: HybridEncoderConfig, feature_layer: int = -2,
                 tower: CLIPVisionModel | None = None):
        super().__init__()
        self.hybrid_config = config
        self._attach_tower(vision_config, feature_layer, tower, config.anyres.tile_size)
        vision_config = self.clip.config
        self.convnext = ConvNeXtBranch(config.convnext)
        # Both branches read the same CLIP-normalised pixels from the processor.
        self.convnext.check_normalization(CLIP_MEAN, CLIP_STD)
        num_layers = vision_config.num_hidden_layers
        check_vit_layers(config.cvfm, num_layers)
        self.cvfm = build_cvfm(config.cvfm, vision_config.hidden_size, self.convnext.stage_channels,
                               self.grid_side, vision_config.num_attention_heads)
        if config.cvfm.vit_layers[-1] > feature_layer % (num_layers + 1):
            warnings.warn(f"CVFM after ViT layer {config.cvfm.vit_layers[-1]} comes after feature_layer "
                          f"{feature_layer}: it only shows in hidden_states, never in the features", stacklevel=2)
        self._stage_after_layer = {layer: stage for stage, layer in enumerate(config.cvfm.vit_layers)}

    @property
    def grid_side(self) -> int:
        return self.clip.config.image_size // self.clip.config.patch_size

    @property
    def _vit(self) -> nn.Module:
        # transformers 5 puts embeddings/encoder on CLIPVisionModel itself; older versions under .vision_model.
        return getattr(self.clip, "vision_model", self.clip)

    def image_processor(self) -> HybridImageProcessor:
        return HybridImageProcessor(self.hybrid_config.anyres, self.clip.config.patch_size)

    def checkpoint_switches(self) -> dict[str, Switch]:
        layers = checkpointing_layers(self.clip)

        return {"vision": lambda enable, func: set_layer_flags(layers, enable, func),
                "convnext": lambda enable, func: self.convnext.trunk.set_grad_checkpointing(enable),
                "cvfm": lambda enable, func: set_layer_flags(self.cvfm, enable, func)}

    def _stage_maps(self, high_res: torch.Tensor | list[torch.Tensor]
                    ) -> tuple[list[list[torch.Tensor]], list[torch.Tensor] | None]:
        """ConvNeXt on every image's canvas -> per image, 4 maps [C, H, W]; and, when the ConvNeXt trains,
        per stage a zero that depends on that stage's map from every call (None when it is frozen).

        The ConvNeXt runs once per *configured* canvas, in config order, even for canvases this
        batch does not use (an empty batch): under ZeRO-3 every forward call gathers parameters
        collectively, so the number of calls must not depend on which canvases a rank drew. The
        backward must match too: each stage's zero joins the ViT at that stage's CVFM, so every
        call's backward (its gathers, its gradient reductions) runs on every rank at the same point.
        """
        device = self.clip.device
        images = list(high_res) if isinstance(high_res, torch.Tensor) else _split_images(high_res)
        processor = self.image_processor()
        per_image: list[list[torch.Tensor] | None] = [None] * len(images)
        calls = []
        for canvas in dict.fromkeys(self.hybrid_config.anyres.canvases):
            width, height = processor.high_res_size(canvas)
            indices = [i for i, image in enumerate(images) if tuple(image.shape[-2:]) == (height, width)]
            batch = (torch.stack([images[i] for i in indices]) if indices
                     else torch.zeros(0, 3, height, width, dtype=self.clip.dtype))
            maps = self.convnext(batch.to(device))
            calls.append(maps)
            for row, index in enumerate(indices):
                per_image[index] = [stage[row] for stage in maps]
        unmatched = [i for i, maps in enumerate(per_image) if maps is None]
        if unmatched:
            raise ValueError(f"high-resolution canvases {[tuple(images[i].shape) for i in unmatched]} match "
                             f"none of the configured canvases {self.hybrid_config.anyres.canvases}")
        if not calls[0][0].requires_grad:
            return per_image, None
        ties = [zero_from([maps[stage] for maps in calls]) for stage in range(len(calls[0]))]
        return per_image, ties

    def forward(self, images: dict[str, Any], output_hidden_states: bool = False) -> VisionOutput:
        pixel_values = images["pixel_values"].to(device=self.clip.device, dtype=self.clip.dtype)
        grids = checked_grids(images["grids"], pixel_values.shape[0])
        stage_maps, ties = self._stage_maps(images["hr_pixel_values"])

        vit = self._vit
        layers = vit.encoder.layers
        feature_index = self.feature_layer % (len(layers) + 1)
        # Without hidden states, blocks past the feature layer cannot change the output: skip them.
        last = len(layers) if output_hidden_states else feature_index
        hidden = vit.pre_layrnorm(vit.embeddings(pixel_values))
        states = [hidden[:, 1:]]  # only grows when asked: 24 layers of tokens are not free
        for index in range(last):
            hidden = layers[index](hidden, None)  # CLIPEncoderLayer(hidden_states, attention_mask)
            stage = self._stage_after_layer.get(index + 1)
            if stage is not None:
                hidden = self.cvfm[stage](hidden, [maps[stage] for maps in stage_maps], grids)
                if ties is not None:
                    hidden = hidden + ties[stage]
            if output_hidden_states:
                states.append(hidden[:, 1:])
        if not output_hidden_states:
            return VisionOutput(features=hidden[:, 1:])  # the loop stopped at the feature layer
        return VisionOutput(features=states[feature_index], hidden_states=tuple(states))

    def flop_split(self, flops: dict[str, int], root: str) -> tuple[int, int, int]:
        """(ConvNeXt, CVFM, ViT blocks after the first fusion) of per-module FLOPs counted with ``root`` as
        this encoder's name (training/throughput/flop_count.py)."""
        first_fusion = self.hybrid_config.cvfm.vit_layers[0]  # 1-based: after that block
        convnext = flops.get(f"{root}.convnext", 0)
        cvfm = sum(flops.get(f"{root}.cvfm.{k}", 0) for k in range(len(self.cvfm)))
        layers = self.clip.config.num_hidden_layers
        after_fusion = sum(flops.get(f"{root}.clip.encoder.layers.{i}", 0) for i in range(first_fusion, layers))
        return convnext, cvfm, after_fusion

    def parameter_counts(self) -> dict[str, int]:
        """Parameters of each part; ``overhead`` is what FILA adds to the ViT (ConvNeXt + CVFM)."""
        counts = {name: sum(p.numel() for p in getattr(self, name).parameters())
                  for name in ("clip", "convnext", "cvfm")}
        return {"vit": counts["clip"], "convnext": counts["convnext"], "cvfm": counts["cvfm"],
                "overhead": counts["convnext"] + counts["cvfm"]}

    def vision_flops_per_image(self, canvas: tuple[int, int] = (672, 672)) -> dict[str, float]:
        """Forward TFLOPs (2 x multiply-adds of matmuls/convs, attention included) for one image on ``canvas``.

        Counted by ``FlopCounterMode`` on shape-only fake tensors, so it costs no real compute
        even at full size. ``vit`` is the ViT on all 1 + tiles views (everything not ConvNeXt/CVFM).
        """
        from torch._subclasses.fake_tensor import FakeTensorMode
        from torch.nn.attention import SDPBackend, sdpa_kernel
        from torch.utils.flop_counter import FlopCounterMode

        processor = self.image_processor()
        tile = processor.anyres.tile_size
        rows, cols = tile_grid(canvas, tile)
        high_w, high_h = processor.high_res_size(canvas)
        grids = [(rows, cols)]  # python ints: fake tensors have no values to read back
        # The math SDPA backend decomposes into matmuls the counter sees (CPU flash attention is uncounted).
        with FakeTensorMode(allow_non_fake_inputs=True), sdpa_kernel(SDPBackend.MATH), torch.no_grad():
            fake_images = {
                "pixel_values": torch.empty(1 + rows * cols, 3, tile, tile, device=self.clip.device),
                "hr_pixel_values": torch.empty(1, 3, high_h, high_w, device=self.clip.device),
                "grids": grids,
            }
            with FlopCounterMode(display=False) as counter:
                self(fake_images)
        per_module = {name: sum(ops.values()) for name, ops in counter.get_flop_counts().items()}
        root = type(self).__name__
        convnext = per_module.get(f"{root}.convnext", 0)
        cvfm = sum(v for k, v in per_module.items() if k.startswith(f"{root}.cvfm.") and k.count(".") == 2)
        total = counter.get_total_flops()
        return {"vit": (total - convnext - cvfm) / 1e12, "convnext": convnext / 1e12, "cvfm": cvfm / 1e12,
                "total": total / 1e12}

    def overhead_report(self, canvas: tuple[int, int] = (672, 672)) -> str:
        """One line for logs: FLOP and parameter overhead of FILA over the same ViT on the same views."""
        flops, params = self.vision_flops_per_image(canvas), self.parameter_counts()
        return (f"vision per image on {canvas[0]}x{canvas[1]}: {flops['total']:.3f} TFLOPs "
                f"(ViT {flops['vit']:.3f} + ConvNeXt {flops['convnext']:.3f} + CVFM {flops['cvfm']:.4f}; "
                f"+{100 * (flops['total'] / flops['vit'] - 1):.1f}% over ViT-only); "
                f"params ViT {params['vit'] / 1e6:.1f}M "
                f"+ ConvNeXt {params['convnext'] / 1e6:.1f}M + CVFM {params['cvfm'] / 1e6:.1f}M "
                f"(+{100 * params['overhead'] / params['vit']:.1f}%)")


# ----------------------------------------------------------------------------- the contract


def hybrid_config_for(vision_config: CLIPVisionConfig, options: dict | None) -> HybridEncoderConfig:
    """HybridEncoderConfig from (possibly partial) options; the tile defaults to the ViT's input size
    and the canvases to the spec's 336-tile set scaled to that tile (672x672 -> 2x2 tiles at any size)."""
    options = dict(options or {})
    anyres = dict(options.get("anyres", {}))
    tile = anyres.setdefault("tile_size", vision_config.image_size)
    if tile != vision_config.image_size:  # else refused only when the encoder is built, after the weights load
        raise ConfigError(f"--vision_option anyres.tile_size={tile}: the tiles are the ViT's input, "
                          f"{vision_config.image_size}x{vision_config.image_size} for this tower; leave it out")
    default = AnyresConfig()
    anyres.setdefault("canvases", [(w * tile // default.tile_size, h * tile // default.tile_size)
                                   for w, h in default.canvases])
    return HybridEncoderConfig.from_dict({**options, "anyres": anyres})


def check_vit_layers(cvfm: CVFMConfig, num_layers: int) -> None:
    if cvfm.vit_layers[-1] > num_layers:
        raise ConfigError(f"--cvfm_layers (cvfm.vit_layers) {cvfm.vit_layers} exceed the ViT's {num_layers} layers; "
                          "the defaults are ViT-L's (24 layers), so a smaller tower needs its own")


def check_fresh_options(vision_config: CLIPVisionConfig, options: dict | None) -> dict:
    """The complete options of a fresh build from flags, validated before any weights load."""
    config = hybrid_config_for(vision_config, options)
    convnext = config.convnext
    if convnext.checkpoint is None and not convnext.random_init:
        raise ConfigError("fila_hybrid needs ConvNeXt weights: --vision_option convnext.checkpoint=FILE|FOLDER|HUB_ID "
                          "(--convnext_checkpoint), or convnext.random_init=true for random ones on purpose")
    if convnext.checkpoint is not None and convnext.random_init:  # the checkpoint would load, unsaid
        raise ConfigError(f"convnext.random_init=true and convnext.checkpoint={convnext.checkpoint} contradict each "
                          "other: give one (--vision_option / --convnext_checkpoint)")
    check_vit_layers(config.cvfm, vision_config.num_hidden_layers)  # else only when built, after the weights load
    check_checkpoint_normalization(convnext)  # likewise
    if convnext.dims is not None and "model_name" in (options or {}).get("convnext", {}):  # dims win, unsaid
        raise ConfigError(f"--convnext_model {convnext.model_name} and --convnext_dims/--convnext_depths name two "
                          "ConvNeXts: give one")
    if convnext.dims is None:  # else a typo is open_clip's traceback listing every model, after the weights load
        import open_clip

        known = [name for name in open_clip.list_models() if name.startswith("convnext")]
        if convnext.model_name not in known:
            raise ConfigError(f"--convnext_model {convnext.model_name} (convnext.model_name) is not one of OpenCLIP's "
                              f"ConvNeXt models: {', '.join(known)}")
    return config.to_dict()


def build_hybrid_encoder(config, tower: CLIPVisionModel | None = None) -> HybridVisionEncoder:
    hybrid = hybrid_config_for(config.vision_config, config.vision_options)
    encoder = HybridVisionEncoder(config.vision_config, hybrid, config.vision_feature_layer, tower=tower)
    # The ConvNeXt weights are now part of the model's state dict: store the architecture and the
    # normalisation it was checked against, not the checkpoint path (which a reload may not have).
    branch = encoder.convnext
    stored = replace(hybrid, convnext=replace(hybrid.convnext, checkpoint=None, mean=branch.mean, std=branch.std))
    config.vision_options = stored.to_dict()
    return encoder


def card_rows(options: dict) -> list[tuple[str, str]]:
    convnext, cvfm, anyres = options.get("convnext", {}), options.get("cvfm", {}), options.get("anyres", {})
    trunk = f"dims {convnext.get('dims')}" if convnext.get("dims") else convnext.get("model_name")
    return [("FILA hybrid", f"ConvNeXt {trunk}; CVFM after ViT layers {cvfm.get('vit_layers')}; "
                            f"canvases {anyres.get('canvases')} in {anyres.get('tile_size')}px tiles")]


FILA_HYBRID_ENCODER = VisionEncoderContract(
    name="fila_hybrid", options=HybridEncoderConfig,
    # vision_tower.cvfm.* and vision_tower.convnext.*: their own parts and learning rates. The ConvNeXt is not
    # aligned: stage 1 leaves it as it is and the stage-1 artifact does not carry it.
    sub_parts=(SubPart("cvfm", "cvfm."), SubPart("convnext", "convnext.", aligned=False)),
    # CVFM: zero gates, strided conv = average pooling; the ConvNeXt: its checkpoint, or timm's init.
    self_initialised=(CVFMBlock,), constructor_initialised=(ConvNeXtBranch,),
    build=build_hybrid_encoder,
    image_processor=lambda vision_config, options=None: HybridImageProcessor(
        hybrid_config_for(vision_config, options).anyres, vision_config.patch_size),
    check_fresh_options=check_fresh_options, card_rows=card_rows, views_per_image="global view + tiles",
    token_layout="anyres",  # its ViT side is the crop-only anyres encoder's: an anyres stage 1 starts it
)

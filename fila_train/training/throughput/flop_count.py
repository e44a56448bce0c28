"""Model FLOPs of a collated batch for a FilaForConditionalGeneration, as used in training.

The LLM side is the formula of mfu.py (its size read from the model's parameters, ZeRO-3 aware).
The vision side is measured: each image layout (FILA: its tile grid; CLIP: one view) is run once
through a meta-device copy of the vision encoder and connector under ``FlopCounterMode``, split
by module into the stages of mfu.py, and cached. Nothing is computed for real and the model
itself (possibly partitioned by DeepSpeed) is never run.
"""
from __future__ import annotations

import copy
from typing import Any

import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from ...model.connector import build_connector
from ...model.lora import is_lora_parameter
from ...model.vision.flops import _meta_encoder
from ..parts import numel
from .mfu import ImageForward, LLMSize, StepFlops, step_flops, trained_stages

Layout = tuple[int, int] | None  # FILA: (rows, cols) of tiles; a single-view encoder: None


def llm_size(language_model: torch.nn.Module) -> LLMSize:
    """N (parameters excluding the input embedding and LoRA adapters; a tied LM head still counts),
    L, d and the adapters' parameters."""
    embedding = language_model.get_input_embeddings().weight
    output = language_model.get_output_embeddings()
    adapters = params = 0
    for name, parameter in language_model.named_parameters():
        if is_lora_parameter(name):
            adapters += numel(parameter)
        elif parameter is not embedding:
            params += numel(parameter)
    if output is not None and output.weight is embedding:
        params += numel(embedding)  # tied: the head's matmul is still computed
    config = language_model.config
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    return LLMSize(params, config.num_hidden_layers, config.num_attention_heads * head_dim, adapters)


def batch_layouts(images: dict[str, Any]) -> list[Layout]:
    """One layout per image of a collated ``images`` batch."""
    if "grids" in images:
        grids = images["grids"]
        grids = grids.tolist() if isinstance(grids, torch.Tensor) else grids
        return [(int(rows), int(cols)) for rows, cols in grids]
    return [None] * int(images["pixel_values"].shape[0])


def sample_lengths(batch: dict[str, Any]) -> list[int]:
    """Tokens of each sample: a padded batch's attention mask, or a packed row's position_ids,
    which restart at 0 for every sample."""
    if batch.get("attention_mask") is not None:
        return [int(n) for n in batch["attention_mask"].sum(dim=1).tolist()]
    if batch.get("position_ids") is not None:
        lengths = []
        for row in batch["position_ids"].tolist():
            starts = [i for i, position in enumerate(row) if position == 0] + [len(row)]
            lengths += [end - start for start, end in zip(starts, starts[1:])]
        return lengths
    rows, length = batch["input_ids"].shape
    return [int(length)] * int(rows)


def _module_flops(counter: FlopCounterMode) -> dict[str, int]:
    return {name: sum(ops.values()) for name, ops in counter.get_flop_counts().items()}


class ModelFlopCounter:
    """Model FLOPs per training step of one configuration and one set of trained parts."""

    def __init__(self, config, llm: LLMSize, trained: frozenset[str]):
        self.llm = llm
        self.trained = trained
        self.encoder = _meta_encoder(config)  # a deep copy of the config: the caller's is untouched
        with torch.device("meta"):
            config = copy.deepcopy(config)
            self.connector = build_connector(config.connector_type, config.vision_config,
                                             config.text_config.hidden_size, config.connector_options)
        self._images: dict[Layout, ImageForward] = {}

    @classmethod
    def for_model(cls, model) -> ModelFlopCounter:
        """From a built model: its config, its LLM's size and the parts that require grad now."""
        parts = [part for part, params in model.named_parts().items() if any(p.requires_grad for _, p in params)]
        encoder = model.vision_tower
        convnext_trainable = bool(getattr(getattr(encoder, "convnext", None), "trainable", False))
        lora = getattr(model.config, "lora", None) is not None
        return cls(model.config, llm_size(model.language_model), trained_stages(parts, convnext_trainable, lora))

    def _fake_images(self, layout: Layout) -> dict[str, Any]:
        size = self.encoder.config.image_size
        if layout is None:
            return {"pixel_values": torch.empty(1, 3, size, size, device="meta")}
        rows, cols = layout
        processor = self.encoder.image_processor()
        width, height = processor.high_res_size((cols * size, rows * size))
        return {"pixel_values": torch.empty(1 + rows * cols, 3, size, size, device="meta"),
                "hr_pixel_values": torch.empty(1, 3, height, width, device="meta"), "grids": [layout]}

    def image_forward(self, layout: Layout) -> ImageForward:
        """Forward FLOPs of one image with this layout, split into the stages of mfu.py (cached)."""
        if layout not in self._images:
            # The math SDPA backend decomposes attention into matmuls the counter sees.
            with sdpa_kernel(SDPBackend.MATH), torch.no_grad(), FlopCounterMode(display=False) as counter:
                vision = self.encoder(self._fake_images(layout), output_hidden_states=self.connector.needs_hidden_states)
                self.connector(vision)
            self._images[layout] = self._split(_module_flops(counter))
        return self._images[layout]

    def _split(self, flops: dict[str, int]) -> ImageForward:
        encoder, connector = type(self.encoder).__name__, type(self.connector).__name__
        vision_total = flops.get(encoder, 0)
        convnext = cvfm = after_fusion = 0
        if hasattr(self.encoder, "flop_split"):  # an encoder with a side branch fused into the ViT (FILA's)
            convnext, cvfm, after_fusion = self.encoder.flop_split(flops, encoder)
        fuser = flops.get(f"{connector}.fuser", 0)
        return ImageForward(convnext=convnext, vit_before_fusion=vision_total - convnext - cvfm - after_fusion,
                            cvfm=cvfm, vit_after_fusion=after_fusion, fuser=fuser,
                            projector=flops.get(connector, 0) - fuser)

    def sample_flops(self, lengths: list[int], layouts: list[Layout]) -> StepFlops:
        return step_flops(self.llm, lengths, [self.image_forward(layout) for layout in layouts], self.trained)

    def batch_flops(self, batch: dict[str, Any]) -> StepFlops:
        """Model FLOPs of a collated batch, padded or packed (data/collator.py, data/packing.py)."""
        lengths = sample_lengths(batch)
        images = batch.get("images")
        # A text-only batch's blank placeholder image is not model work.
        layouts = [] if images is None or batch.get("images_are_placeholders") else batch_layouts(images)
        return self.sample_flops(lengths, layouts)

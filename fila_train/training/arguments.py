"""Command-line arguments, in the HF TrainingArguments style LLaVA users know."""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
import transformers

from ..model import PARTS


def parse_ints(text: str) -> list[int]:
    """"2,6,12,20" -> [2, 6, 12, 20]."""
    return [int(item) for item in text.split(",") if item.strip()]


def parse_canvases(text: str) -> list[list[int]]:
    """"672x672,336x672" -> [[672, 672], [336, 672]] (W x H, as LLaVA-NeXT writes them)."""
    canvases = []
    for item in text.split(","):
        width, _, height = item.strip().lower().partition("x")
        if not (width.isdigit() and height.isdigit()):
            raise ValueError(f"--anyres_canvases: {item!r} is not WxH (e.g. 672x672)")
        canvases.append([int(width), int(height)])
    return canvases


# Option flag -> (section of HybridEncoderConfig, key, parser) / (key of MMFuserConfig, parser).
# Unset flags are left out, so the part's dataclass config supplies its default.
HYBRID_FLAGS = {
    "convnext_model": ("convnext", "model_name", str),
    "convnext_checkpoint": ("convnext", "checkpoint", str),
    "convnext_dims": ("convnext", "dims", parse_ints),
    "convnext_depths": ("convnext", "depths", parse_ints),
    "anyres_canvases": ("anyres", "canvases", parse_canvases),
    "cvfm_layers": ("cvfm", "vit_layers", parse_ints),
    "cvfm_align": ("cvfm", "align", str),
    "cvfm_fusion": ("cvfm", "fusion", str),
}
FUSER_FLAGS = {"fuser_key_layers": ("key_layers", parse_ints), "fuser_query_layer": ("query_layer", int)}


@dataclass
class ModelArguments:
    model_name_or_path: str = field(metadata={"help": "LLM folder or hub id (or a saved fila model folder)"})
    vision_tower: str | None = field(default=None, metadata={"help": "CLIP vision folder or hub id"})
    vision_encoder: str = field(default="clip", metadata={"help": "registered vision encoder: clip, fila_hybrid"})
    vision_feature_layer: int = -2
    connector_type: str = field(default="mlp2x_gelu", metadata={
        "help": "registered connector: linear, mlp2x_gelu, mmfuser"})
    # FILA hybrid encoder (--vision_encoder fila_hybrid); unset values take the spec's defaults.
    convnext_model: str | None = field(default=None, metadata={
        "help": "OpenCLIP ConvNeXt architecture (default convnext_large_d_320)"})
    convnext_checkpoint: str | None = field(default=None, metadata={
        "help": "ConvNeXt weights: a local open_clip checkpoint file, an OpenCLIP HF-format folder, or its hub id"})
    convnext_dims: str | None = field(default=None, metadata={
        "help": "with --convnext_depths: a small random timm ConvNeXt instead, e.g. 16,32,64,128"})
    convnext_depths: str | None = field(default=None, metadata={"help": "e.g. 1,1,1,1"})
    anyres_canvases: str | None = field(default=None, metadata={
        "help": "WxH canvases, multiples of the ViT input size (default: 336x672,672x336,672x672,1008x336,"
                "336x1008 scaled to the tile)"})
    cvfm_layers: str | None = field(default=None, metadata={
        "help": "1-based ViT layers fused with ConvNeXt stages 0..3 (default 2,6,12,20)"})
    cvfm_align: str | None = field(default=None, metadata={"help": "avg_pool (default), interpolate, strided_conv"})
    cvfm_fusion: str | None = field(default=None, metadata={"help": "concat (default), add, cross_attn"})
    # MMFuser (--connector_type mmfuser): hidden-state indices, 0 = embeddings, -1 = last layer.
    fuser_key_layers: str | None = field(default=None, metadata={
        "help": "shallow layers the fuser reads (default -22,-17,-12,-7: for a 24-layer ViT); "
                "write --fuser_key_layers=-6,-5 (with '=') as the value starts with '-'"})
    fuser_query_layer: int | None = field(default=None, metadata={"help": "the query layer (default -2)"})
    pretrained_connector: str | None = field(
        default=None, metadata={"help": "stage-1 connector artifact (connector.safetensors) to start from"})
    conversation_template: str = field(default="vicuna_v1", metadata={"help": "plain, vicuna_v1, llama3, chatml"})
    attn_implementation: str = field(default="sdpa", metadata={"help": "sdpa, eager or flash_attention_2"})

    def __post_init__(self) -> None:
        # An option of a part that is not selected would be silently ignored: refuse it.
        for flags, owner, current, wanted in (
                (HYBRID_FLAGS, "--vision_encoder", self.vision_encoder, "fila_hybrid"),
                (FUSER_FLAGS, "--connector_type", self.connector_type, "mmfuser")):
            given = [f"--{name}" for name in flags if getattr(self, name) is not None]
            if given and current != wanted:
                raise ValueError(f"{', '.join(given)} only apply to {owner} {wanted}, not {current}")

    def vision_options(self) -> dict | None:
        """Partial HybridEncoderConfig dict for fila_hybrid (the builder completes it), else None."""
        if self.vision_encoder != "fila_hybrid":
            return None
        options: dict[str, dict] = {"anyres": {}, "convnext": {}, "cvfm": {}}
        for name, (section, key, parse) in HYBRID_FLAGS.items():
            if getattr(self, name) is not None:
                options[section][key] = parse(getattr(self, name))
        return options

    def connector_options(self) -> dict | None:
        """Partial MMFuserConfig dict for mmfuser, else None."""
        if self.connector_type != "mmfuser":
            return None
        return {key: parse(getattr(self, name)) for name, (key, parse) in FUSER_FLAGS.items()
                if getattr(self, name) is not None}


@dataclass
class DataArguments:
    data_path: str = field(metadata={"help": "LLaVA annotation file (JSON list or JSONL)"})
    image_folder: str | None = None
    on_overlong: str = field(default="drop", metadata={
        "help": "over-long samples (after image expansion): 'drop' (counted, logged) or 'error'"})


@dataclass
class TrainingArguments(transformers.TrainingArguments):
    tune_parts: str = field(default="connector", metadata={
        "help": f"comma-separated parts to train, of: {', '.join(PARTS)}"})
    connector_lr: float | None = field(default=None, metadata={"help": "learning rate of the connector"})
    cvfm_lr: float | None = field(default=None, metadata={"help": "learning rate of FILA's CVFM"})
    fuser_lr: float | None = field(default=None, metadata={"help": "learning rate of the MMFuser fuser"})
    vision_lr: float | None = field(default=None, metadata={"help": "learning rate of the vision tower"})
    model_max_length: int = 2048
    log_sample_ids: bool = field(default=False, metadata={
        "help": "write the record ids each rank trains on to OUTPUT_DIR/sample_ids/rank<R>.txt"})
    warmup_ratio: float | None = field(default=None, metadata={
        "help": "LLaVA-style warmup fraction of the total steps (transformers 5 spells it --warmup_steps 0.03)"})
    remove_unused_columns: bool = False
    output_dir: str = "output"

    def __post_init__(self) -> None:
        # Without a GPU, HF Trainer + DeepSpeed must be told to use the CPU, or it runs but is
        # silently not data parallel (environment.md).
        if not torch.cuda.is_available():
            self.use_cpu = True
        if self.warmup_ratio is not None:
            if not 0 <= self.warmup_ratio < 1:
                raise ValueError(f"--warmup_ratio must be in [0, 1), got {self.warmup_ratio}")
            self.warmup_steps = self.warmup_ratio
        if self.gradient_checkpointing_kwargs is None:
            self.gradient_checkpointing_kwargs = {"use_reentrant": False}
        super().__post_init__()
        unknown = sorted(set(self.parts()) - set(PARTS))
        if unknown:
            raise ValueError(f"--tune_parts: unknown part(s) {unknown}; known parts: {list(PARTS)}")

    def parts(self) -> list[str]:
        return [p.strip() for p in self.tune_parts.split(",") if p.strip()]

    def part_learning_rate(self, part: str) -> float:
        specific = {"connector": self.connector_lr, "cvfm": self.cvfm_lr, "fuser": self.fuser_lr,
                    "vision": self.vision_lr}.get(part)
        return self.learning_rate if specific is None else specific

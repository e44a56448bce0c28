"""The model-choice flags of every command that builds or reads a model (train, data inspect, bench):
the LLM and vision tower, the registered encoder and connector with their options, LoRA."""
from __future__ import annotations

from dataclasses import dataclass, field

from .lora import BITS, DEFAULT_TARGET, LoraSettings, require_kbit_support
from ..utils.errors import ConfigError


def parse_ints(text: str) -> list[int]:
    """"2,6,12,20" -> [2, 6, 12, 20]."""
    return [int(item) for item in text.split(",") if item.strip()]


def parse_canvases(text: str) -> list[list[int]]:
    """"672x672,336x672" -> [[672, 672], [336, 672]] (W x H, as LLaVA-NeXT writes them)."""
    canvases = []
    for item in text.split(","):
        width, _, height = item.strip().lower().partition("x")
        if not (width.isdigit() and height.isdigit()):
            raise ConfigError(f"--anyres_canvases: {item!r} is not WxH (e.g. 672x672)")
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
    # LoRA / QLoRA on the LLM (PEFT): with --lora_r > 0, tune part "llm" trains the adapters only.
    lora_r: int = field(default=0, metadata={"help": "LoRA rank of the LLM adapters; 0 = no LoRA (full tuning)"})
    lora_alpha: float | None = field(default=None, metadata={"help": "LoRA alpha (default 2 x lora_r)"})
    lora_dropout: float | None = field(default=None, metadata={"help": "LoRA dropout (default 0.05)"})
    lora_target: str | None = field(default=None, metadata={
        "help": f"regex fully matching the module paths to adapt, inside the LLM (default {DEFAULT_TARGET})"})
    bits: int = field(default=16, metadata={
        "help": f"one of {BITS}: 4 or 8 load the LLM quantized for QLoRA (needs bitsandbytes: the qlora extra)"})

    def __post_init__(self) -> None:
        if self.lora_r < 0:
            raise ConfigError(f"--lora_r must be >= 0 (0 = no LoRA), got {self.lora_r}")
        lora_given = [f"--{name}" for name in ("lora_alpha", "lora_dropout", "lora_target")
                      if getattr(self, name) is not None] + ["--bits"] * (self.bits != 16)
        if lora_given and self.lora_r == 0:
            raise ConfigError(f"{', '.join(lora_given)} only apply with LoRA: set --lora_r (e.g. 128)")
        self.lora_settings()  # bad values fail at parse time, not after the model is loaded
        if self.bits != 16:
            require_kbit_support()
        # An option of a part that is not selected would be silently ignored: refuse it.
        for flags, owner, current, wanted in (
                (HYBRID_FLAGS, "--vision_encoder", self.vision_encoder, "fila_hybrid"),
                (FUSER_FLAGS, "--connector_type", self.connector_type, "mmfuser")):
            given = [f"--{name}" for name in flags if getattr(self, name) is not None]
            if given and current != wanted:
                raise ConfigError(f"{', '.join(given)} only apply to {owner} {wanted}, not {current}")

    def vision_options(self) -> dict | None:
        """Partial HybridEncoderConfig dict for fila_hybrid (the builder completes it), else None."""
        if self.vision_encoder != "fila_hybrid":
            return None
        options: dict[str, dict] = {"anyres": {}, "convnext": {}, "cvfm": {}}
        for name, (section, key, parse) in HYBRID_FLAGS.items():
            if getattr(self, name) is not None:
                options[section][key] = parse(getattr(self, name))
        return options

    def lora_settings(self) -> dict | None:
        """Complete LoraSettings dict for --lora_r > 0 (stored in FilaConfig.lora), else None."""
        if self.lora_r == 0:
            return None
        given = {"alpha": self.lora_alpha, "dropout": self.lora_dropout, "target_modules": self.lora_target}
        return LoraSettings(r=self.lora_r, bits=self.bits,
                            **{key: value for key, value in given.items() if value is not None}).to_dict()

    def connector_options(self) -> dict | None:
        """Partial MMFuserConfig dict for mmfuser, else None."""
        if self.connector_type != "mmfuser":
            return None
        return {key: parse(getattr(self, name)) for name, (key, parse) in FUSER_FLAGS.items()
                if getattr(self, name) is not None}

"""Command-line arguments, in the HF TrainingArguments style LLaVA users know."""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
import transformers

from ..data.images import DEFAULT_MAX_PIXELS
from ..data.lengths import DEFAULT_CACHE_DIR
from ..model import PARTS
from ..model.checkpointing import CHECKPOINT_PARTS
from ..model.lora import BITS, DEFAULT_TARGET, LoraSettings, require_kbit_support


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
            raise ValueError(f"--lora_r must be >= 0 (0 = no LoRA), got {self.lora_r}")
        lora_given = [f"--{name}" for name in ("lora_alpha", "lora_dropout", "lora_target")
                      if getattr(self, name) is not None] + ["--bits"] * (self.bits != 16)
        if lora_given and self.lora_r == 0:
            raise ValueError(f"{', '.join(lora_given)} only apply with LoRA: set --lora_r (e.g. 128)")
        self.lora_settings()  # bad values fail at parse time, not after the model is loaded
        if self.bits != 16:
            require_kbit_support()
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


@dataclass
class DataArguments:
    data_path: str = field(metadata={
        "help": "a LLaVA annotation file (JSON list or JSONL) or a mixture spec (.yaml, see data/README.md)"})
    image_folder: str | None = field(default=None, metadata={"help": "image root for a single annotation file"})
    data_root: str | None = field(default=None, metadata={"help": "overrides the mixture's 'root' folder"})
    on_overlong: str = field(default="drop", metadata={
        "help": "over-long samples (after image expansion): 'drop' (counted, logged) or 'error'"})
    on_bad_sample: str = field(default="error", metadata={
        "help": "unusable records (missing/corrupt image, malformed record): 'error' names file, line, id and "
                "field; 'skip' replaces them by the next sample and reports the counts at the end"})
    max_image_pixels: int = field(default=DEFAULT_MAX_PIXELS, metadata={
        "help": "images with more pixels are refused before decoding (decompression-bomb guard)"})
    length_cache_dir: str = field(default=str(DEFAULT_CACHE_DIR), metadata={
        "help": "where token lengths for --group_by_modality_length are cached"})

    def is_mixture(self) -> bool:
        return self.data_path.endswith((".yaml", ".yml"))

    def __post_init__(self) -> None:
        # Each mixture source names its own image root; a global one would be silently ignored.
        if self.is_mixture() and self.image_folder:
            raise ValueError(f"--image_folder does not apply to a mixture ({self.data_path}): set image_root "
                             f"per source in the YAML (and --data_root to move them all)")
        if not self.is_mixture() and self.data_root:
            raise ValueError("--data_root only applies to a mixture spec (.yaml)")


@dataclass
class TrainingArguments(transformers.TrainingArguments):
    tune_parts: str = field(default="connector", metadata={
        "help": f"comma-separated parts to train, of: {', '.join(PARTS)}"})
    connector_lr: float | None = field(default=None, metadata={"help": "learning rate of the connector"})
    cvfm_lr: float | None = field(default=None, metadata={"help": "learning rate of FILA's CVFM"})
    fuser_lr: float | None = field(default=None, metadata={"help": "learning rate of the MMFuser fuser"})
    vision_lr: float | None = field(default=None, metadata={"help": "learning rate of the vision tower"})
    model_max_length: int = 2048
    peak_tflops: float | None = field(default=None, metadata={
        "help": "peak TFLOP/s of one device for the logged MFU (default: from the known-GPU table in "
                "fila_train/bench/mfu.py; CPUs and unknown GPUs log no MFU without it)"})
    group_by_modality_length: bool = field(default=False, metadata={
        "help": "batch image and text-only samples separately, similar token lengths together (LLaVA)"})
    log_sample_ids: bool = field(default=False, metadata={
        "help": "write the record ids each rank trains on to OUTPUT_DIR/sample_ids/rank<R>.txt"})
    warmup_ratio: float | None = field(default=None, metadata={
        "help": "LLaVA-style warmup fraction of the total steps (transformers 5 spells it --warmup_steps 0.03)"})
    packing: bool = field(default=False, metadata={
        "help": "padding-free batches: each batch's samples packed into one row, attention kept per sample "
                "(block-diagonal); pays off with --attn_implementation flash_attention_2"})
    gradient_checkpointing_parts: str | None = field(default=None, metadata={
        "help": f"with --gradient_checkpointing: the parts to checkpoint, of {', '.join(CHECKPOINT_PARTS)} "
                "(default: all the model has)"})
    use_liger: bool = field(default=False, metadata={
        "help": "Liger kernels on the LLM (fused linear cross-entropy, RMSNorm, SwiGLU); needs liger-kernel and a GPU"})
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
        if self.activation_checkpointing_kwargs is None and self.gradient_checkpointing_kwargs is None:
            # transformers 5 names it activation_checkpointing_kwargs (the old name warns as deprecated).
            self.activation_checkpointing_kwargs = {"use_reentrant": False}
        super().__post_init__()
        unknown = sorted(set(self.parts()) - set(PARTS))
        if unknown:
            raise ValueError(f"--tune_parts: unknown part(s) {unknown}; known parts: {list(PARTS)}")
        self._check_speed_options()

    def _check_speed_options(self) -> None:
        if self.gradient_checkpointing_parts is not None:
            unknown = sorted(set(self.checkpointing_parts()) - set(CHECKPOINT_PARTS))
            if unknown:
                raise ValueError(f"--gradient_checkpointing_parts: unknown part(s) {unknown}; "
                                 f"known: {list(CHECKPOINT_PARTS)}")
            if not self.activation_checkpointing:
                raise ValueError("--gradient_checkpointing_parts needs --gradient_checkpointing True")
        if self.use_liger_kernel:
            # HF's flag patches by the top-level model type, which Liger does not know for the
            # composite: it would silently patch nothing.
            raise ValueError("--use_liger_kernel cannot patch the fila composite; use --use_liger (patches the LLM)")

    def parts(self) -> list[str]:
        return [p.strip() for p in self.tune_parts.split(",") if p.strip()]

    def checkpointing_parts(self) -> tuple[str, ...] | None:
        """--gradient_checkpointing_parts as a tuple; None when unset (every part the model has)."""
        if self.gradient_checkpointing_parts is None:
            return None
        return tuple(p.strip() for p in self.gradient_checkpointing_parts.split(",") if p.strip())

    def part_learning_rate(self, part: str) -> float:
        specific = {"connector": self.connector_lr, "cvfm": self.cvfm_lr, "fuser": self.fuser_lr,
                    "vision": self.vision_lr}.get(part)
        return self.learning_rate if specific is None else specific

"""The model-choice flags of every command that builds or reads a model (train, data inspect, bench):
the LLM and vision tower, the registered encoder and connector with their options, LoRA."""
from __future__ import annotations

from dataclasses import dataclass, field

from ..utils.errors import ConfigError
from .attention import check_attention
from .configuration import DEFAULT_ATTENTION, FilaConfig
from .contracts import CONNECTORS, VISION_ENCODERS
from .lora import BITS, DEFAULT_TARGET, LoraSettings, require_kbit_support
from .options import set_option


def parse_canvases(text: str) -> list[list[int]]:
    """"672x672,336x672" -> [[672, 672], [336, 672]] (W x H, as LLaVA-NeXT writes them)."""
    canvases = []
    for item in text.split(","):
        width, _, height = item.strip().lower().partition("x")
        if not (width.isdigit() and height.isdigit()):
            raise ConfigError(f"{item!r} is not WxH (e.g. 672x672)")
        canvases.append([int(width), int(height)])
    return canvases


# Shorthand flags (as LLaVA-style scripts write them) -> (the parts they belong to, the dotted option key).
# Any option can also be set with --vision_option / --connector_option KEY=VALUE.
OPTION_SHORTHANDS = {
    "convnext_model": (("fila_hybrid",), "convnext.model_name"),
    "convnext_checkpoint": (("fila_hybrid",), "convnext.checkpoint"),
    "convnext_dims": (("fila_hybrid",), "convnext.dims"),
    "convnext_depths": (("fila_hybrid",), "convnext.depths"),
    "anyres_canvases": (("fila_hybrid", "anyres"), "anyres.canvases"),
    "cvfm_layers": (("fila_hybrid",), "cvfm.vit_layers"),
    "cvfm_align": (("fila_hybrid",), "cvfm.align"),
    "cvfm_fusion": (("fila_hybrid",), "cvfm.fusion"),
    "fuser_key_layers": (("mmfuser",), "key_layers"),
    "fuser_query_layer": (("mmfuser",), "query_layer"),
}


@dataclass
class ModelArguments:
    model_name_or_path: str = field(metadata={"help": "LLM folder or hub id (or a saved fila model folder)"})
    vision_tower: str | None = field(default=None, metadata={"help": "CLIP vision folder or hub id"})
    # The model's defaults are FilaConfig's: defined once.
    vision_encoder: str = field(default=FilaConfig.vision_encoder, metadata={
        "help": "registered vision encoder: clip, anyres, fila_hybrid (model/contracts.py)"})
    vision_feature_layer: int = FilaConfig.vision_feature_layer
    connector_type: str = field(default=FilaConfig.connector_type, metadata={
        "help": "registered connector: linear, mlp2x_gelu, mmfuser"})
    # Any field of the part's options dataclass (unset ones keep the dataclass default).
    vision_option: list[str] = field(default_factory=list, metadata={
        "help": "KEY=VALUE options of the vision encoder, e.g. cvfm.gate=channel anyres.global_view=canvas "
                "convnext.trainable=true convnext.random_init=true (an unknown key lists the valid ones)"})
    connector_option: list[str] = field(default_factory=list, metadata={
        "help": "KEY=VALUE options of the connector, e.g. num_heads=8 key_layers=-6,-4"})
    # Shorthands (OPTION_SHORTHANDS) of --vision_option / --connector_option: their defaults are the options
    # dataclasses' (HybridEncoderConfig, MMFuserConfig), and stated nowhere else.
    convnext_model: str | None = field(default=None, metadata={
        "help": "fila_hybrid convnext.model_name: the OpenCLIP ConvNeXt architecture"})
    convnext_checkpoint: str | None = field(default=None, metadata={
        "help": "fila_hybrid convnext.checkpoint: a local open_clip checkpoint file, an OpenCLIP HF-format folder, "
                "or its hub id"})
    convnext_dims: str | None = field(default=None, metadata={
        "help": "fila_hybrid convnext.dims: with --convnext_depths, a small timm ConvNeXt, e.g. 16,32,64,128"})
    convnext_depths: str | None = field(default=None, metadata={"help": "fila_hybrid convnext.depths, e.g. 1,1,1,1"})
    anyres_canvases: str | None = field(default=None, metadata={
        "help": "fila_hybrid anyres.canvases: WxH canvases, multiples of the ViT input size"})
    cvfm_layers: str | None = field(default=None, metadata={
        "help": "fila_hybrid cvfm.vit_layers: 1-based ViT layers fused with ConvNeXt stages 0..3"})
    cvfm_align: str | None = field(default=None, metadata={"help": "fila_hybrid cvfm.align"})
    cvfm_fusion: str | None = field(default=None, metadata={"help": "fila_hybrid cvfm.fusion"})
    # MMFuser hidden-state indices: 0 = embeddings, -1 = last layer.
    fuser_key_layers: str | None = field(default=None, metadata={
        "help": "mmfuser key_layers: the shallow layers the fuser reads; write --fuser_key_layers=-6,-5 "
                "(with '=') as the value starts with '-'"})
    fuser_query_layer: int | None = field(default=None, metadata={"help": "mmfuser query_layer"})
    pretrained_connector: str | None = field(
        default=None, metadata={"help": "stage-1 connector artifact (connector.safetensors) to start from"})
    conversation_template: str = field(default=FilaConfig.conversation_template, metadata={
        "help": "plain, vicuna_v1, llava_v1, llama3, llava_llama_3, chatml"})
    attn_implementation: str = field(default=DEFAULT_ATTENTION, metadata={"help": "sdpa, eager or flash_attention_2"})
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
        for name, (parts, _) in OPTION_SHORTHANDS.items():
            if getattr(self, name) is not None and not {self.vision_encoder, self.connector_type} & set(parts):
                owner = "--vision_encoder" if parts[0] in VISION_ENCODERS else "--connector_type"
                current = self.vision_encoder if parts[0] in VISION_ENCODERS else self.connector_type
                raise ConfigError(f"--{name} only apply to {owner} {' or '.join(parts)}, not {current}")
        layer_flags = CONNECTORS.get(self.connector_type).layer_flags
        if layer_flags and self.vision_feature_layer != FilaConfig.vision_feature_layer:
            raise ConfigError(f"--vision_feature_layer {self.vision_feature_layer} has no effect with --connector_type "
                              f"{self.connector_type}, which reads the ViT layers of {' and '.join(layer_flags)}: "
                              "set those instead")
        self.vision_options()  # unknown keys and unparsable values fail at parse time
        self.connector_options()
        check_attention(self.attn_implementation)

    def _options(self, part: str, contract, assignments: list[str], flag: str) -> dict | None:
        """The partial options dict of ``part`` (its build completes it): shorthands, then KEY=VALUEs."""
        if contract.options is None:
            if assignments:
                raise ConfigError(f"{flag}: {part} has no options")
            return None
        options: dict = {}
        for name, (owners, key) in OPTION_SHORTHANDS.items():
            if part in owners and getattr(self, name) is not None:
                set_option(options, contract.options, f"{key}={getattr(self, name)}", f"--{name}")
        for assignment in assignments:
            set_option(options, contract.options, assignment, flag)
        return options

    def vision_options(self) -> dict | None:
        """Partial options of the vision encoder (None for an encoder without options)."""
        return self._options(self.vision_encoder, VISION_ENCODERS.get(self.vision_encoder), self.vision_option,
                             "--vision_option")

    def lora_settings(self) -> dict | None:
        """Complete LoraSettings dict for --lora_r > 0 (stored in FilaConfig.lora), else None."""
        if self.lora_r == 0:
            return None
        given = {"alpha": self.lora_alpha, "dropout": self.lora_dropout, "target_modules": self.lora_target}
        return LoraSettings(r=self.lora_r, bits=self.bits,
                            **{key: value for key, value in given.items() if value is not None}).to_dict()

    def connector_options(self) -> dict | None:
        """Partial options of the connector (None for a connector without options)."""
        return self._options(self.connector_type, CONNECTORS.get(self.connector_type), self.connector_option,
                             "--connector_option")

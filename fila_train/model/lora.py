"""LoRA / QLoRA adapters on the LLM through PEFT, described by ``FilaConfig.lora``.

The adapters are part of the architecture: ``FilaForConditionalGeneration.__init__`` injects them
when ``config.lora`` is set, so ``save_pretrained`` / ``from_pretrained``, HF Trainer resume and
ZeRO-2/3 checkpoints all see the same parameter names (``...q_proj.base_layer.weight``,
``...q_proj.lora_A.default.weight``). ``merge_lora`` folds them back into plain weights for export.

Targets are a regex over FULL module paths of the composite (``language_model.model.layers.3.
self_attn.q_proj``), never suffixes: the CLIP tower has q_proj/k_proj/v_proj/out_proj too
(anchors.md failure 10). A pattern reaching outside the LLM, or matching nothing, is an error.
"""
from __future__ import annotations

import importlib.util
import os
import re
from dataclasses import asdict, dataclass

import torch
from torch import nn

from ..utils.errors import CheckpointError, ConfigError
from .options import stored_options

LLM_PREFIX = "language_model."
# Every linear projection of the decoder layers of Llama-family LLMs (Vicuna, Llama-3, Mistral, Qwen2).
DEFAULT_TARGET = r"language_model\.model\.layers\.\d+\.(self_attn\.(q|k|v|o)_proj|mlp\.(gate|up|down)_proj)"
BITS = (4, 8, 16)
ADAPTER = "default"
KBIT_REQUIREMENT = "QLoRA (--bits 4/8) needs bitsandbytes"
KBIT_INSTALL = "install the qlora extra (uv sync --extra qlora, or pip install 'fila-train[qlora]')"


@dataclass(frozen=True)
class LoraSettings:
    """``r``, ``alpha`` (default 2 r, LLaVA's ratio), ``dropout``, ``target_modules`` (a regex
    fully matching module paths of the composite, inside the LLM) and ``bits`` (16, or 4/8 = QLoRA)."""

    r: int
    alpha: float | None = None
    dropout: float = 0.05
    target_modules: str = DEFAULT_TARGET
    bits: int = 16

    def __post_init__(self) -> None:
        if not (isinstance(self.r, int) and self.r > 0):
            raise ConfigError(f"lora r must be a positive integer, got {self.r!r}")
        if self.alpha is None:
            object.__setattr__(self, "alpha", float(2 * self.r))
        if self.alpha <= 0:
            raise ConfigError(f"lora alpha must be positive, got {self.alpha}")
        if not 0 <= self.dropout < 1:
            raise ConfigError(f"lora dropout must be in [0, 1), got {self.dropout}")
        if self.bits not in BITS:
            raise ConfigError(f"lora bits must be one of {BITS}, got {self.bits}")
        try:
            re.compile(self.target_modules)
        except re.error as error:
            raise ConfigError(f"lora target_modules {self.target_modules!r} is not a valid regex: {error}") from None

    @classmethod
    def from_dict(cls, data: dict) -> "LoraSettings":
        return stored_options(cls, data)

    def to_dict(self) -> dict:
        return asdict(self)


def lora_targets(model: nn.Module, pattern: str) -> list[str]:
    """Full paths of the modules ``pattern`` selects; every one must be an ``nn.Linear`` of the LLM."""
    matched = [(name, module) for name, module in model.named_modules() if re.fullmatch(pattern, name)]
    outside = [name for name, _ in matched if not name.startswith(LLM_PREFIX)]
    if outside:
        raise ConfigError(f"--lora_target {pattern!r} matches modules outside the LLM, e.g. {outside[:3]}; "
                          f"LoRA applies to the LLM only: anchor the pattern at 'language_model\\.'")
    # nn.Linear or a quantized subclass (bitsandbytes' Linear4bit / Linear8bitLt under QLoRA).
    not_linear = [f"{name} ({type(module).__name__})" for name, module in matched if not isinstance(module, nn.Linear)]
    if not_linear:
        raise ConfigError(f"--lora_target {pattern!r} matches modules that are not nn.Linear: {not_linear[:3]}")
    if not matched:
        examples = [name for name, module in model.named_modules()
                    if name.startswith(LLM_PREFIX) and isinstance(module, nn.Linear)][:4]
        raise ConfigError(f"--lora_target {pattern!r} matches no module (it must match full paths such as "
                          f"{examples})")
    return [name for name, _ in matched]


def add_lora(model: nn.Module, settings: LoraSettings) -> None:
    """Inject the adapters into ``model.language_model`` and record ``settings`` in ``model.config.lora``."""
    from peft import LoraConfig, inject_adapter_in_model

    if lora_layers(model):
        raise ConfigError("the model already has LoRA adapters: merge them first (merge_lora)")
    targets = lora_targets(model, settings.target_modules)
    if settings.bits != 16 and not is_quantized(model.language_model):
        raise ConfigError(f"config.lora.bits = {settings.bits}: this is a QLoRA model, whose LLM is quantized by "
                          f"bitsandbytes when it is loaded for training (build_model(..., lora=...)); it cannot be "
                          f"rebuilt from its config. Export it first (fila-train export --checkpoint DIR --output "
                          f"DIR dequantizes the LLM and merges the adapters) and load the export")
    relative = [name[len(LLM_PREFIX):] for name in targets]
    # PEFT matches a string by re.fullmatch on paths inside the module it is given: exactly these.
    peft_config = LoraConfig(r=settings.r, lora_alpha=settings.alpha, lora_dropout=settings.dropout,
                             target_modules="|".join(re.escape(name) for name in relative), bias="none")
    inject_adapter_in_model(peft_config, model.language_model, adapter_name=ADAPTER)
    injected = sorted(LLM_PREFIX + name for name in lora_layers(model.language_model))
    if injected != sorted(targets):
        raise RuntimeError(f"PEFT adapted {len(injected)} modules, expected the {len(targets)} targets")
    if settings.bits != 16:
        load_own_quantization_checked(model.language_model)
    for name, parameter in model.named_parameters():
        # PEFT's init (kaiming A, zero B: the adapter starts as a no-op) must survive post_init; the flag makes
        # transformers' init skip them, as for loaded weights. Not when ZeRO-3's zero.Init built them (a saved model
        # loading): transformers would leave one its files lack out of the missing weights.
        if is_lora_parameter(name) and not hasattr(parameter, "ds_id"):
            parameter._is_hf_initialized = True
    model.config.lora = settings.to_dict()


def lora_layers(module: nn.Module) -> dict[str, nn.Module]:
    from peft.tuners.lora import LoraLayer

    return {name: layer for name, layer in module.named_modules() if isinstance(layer, LoraLayer)}


def is_lora_parameter(name: str) -> bool:
    from peft.tuners.lora import LoraLayer

    return any(f".{layer}." in name for layer in LoraLayer.adapter_layer_names)


def merge_lora(model: nn.Module, dtype: torch.dtype | None = None) -> nn.Module:
    """Fold the adapters into the base weights (PEFT's merge), drop the wrappers so parameter names
    are the plain ones again, and set ``config.lora = None``: the result is a plain FILA model.

    Each sum is computed in float32 and rounded once, to ``dtype`` (default: the base weight's own). PEFT adds
    the update in the base weight's dtype: a bf16 base (ZeRO keeps frozen weights in the training dtype) with
    fp32 adapters lost much of the update to bf16 rounding, even where the merged model was wanted in fp32."""
    if model.config.lora is None:
        raise ConfigError("merge_lora: the model has no LoRA adapters (config.lora is None)")
    if LoraSettings.from_dict(model.config.lora).bits != 16:
        raise ConfigError("merge_lora: the LLM is quantized (QLoRA); merge into a 16/32-bit rebuild instead")
    language_model = model.language_model
    for name, layer in lora_layers(language_model).items():
        if any(hasattr(p, "ds_id") for p in layer.parameters()):
            raise ConfigError(f"merge_lora: {name} is ZeRO-3 partitioned; merge a consolidated model")
        base = layer.get_base_layer()
        merged_dtype = dtype or base.weight.dtype
        layer.to(torch.float32)
        layer.merge(safe_merge=True, adapter_names=[ADAPTER])
        parent, _, child = name.rpartition(".")
        setattr(language_model.get_submodule(parent), child, base.to(merged_dtype))
    if hasattr(language_model, "peft_config"):
        del language_model.peft_config
    model.config.lora = None
    return model


# --------------------------------------------------------------------------- QLoRA (bitsandbytes)


def is_quantized(model: nn.Module) -> bool:
    return getattr(model, "hf_quantizer", None) is not None


def require_kbit_support() -> None:
    """QLoRA runs wherever bitsandbytes does: on a CUDA GPU, and (bitsandbytes >= 0.48) on CPU."""
    if importlib.util.find_spec("bitsandbytes") is None:
        raise ConfigError(f"{KBIT_REQUIREMENT}, which is not installed: {KBIT_INSTALL}. Use --bits 16 for LoRA.")


def load_quantized_llm(path: str, bits: int, dtype: torch.dtype, attn_implementation: str) -> nn.Module:
    """The LLM loaded in 4-bit NF4 (double quantisation) or 8-bit, as LLaVA's QLoRA, on this rank's GPU
    (the CPU without one)."""
    require_kbit_support()
    from peft import prepare_model_for_kbit_training
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig
    from transformers.integrations.deepspeed import is_deepspeed_zero3_enabled

    if is_deepspeed_zero3_enabled():  # else transformers' own refusal names only its device_map
        raise ConfigError(f"QLoRA (--bits {bits}) runs under DeepSpeed ZeRO-2, not ZeRO-3 (the packed k-bit weights "
                          f"cannot be partitioned): use --deepspeed zero_configs/zero2.json "
                          f"(ZERO_CONFIG=zero_configs/zero2.json for scripts/finetune.sh)")

    quantization = BitsAndBytesConfig(load_in_4bit=bits == 4, load_in_8bit=bits == 8, bnb_4bit_compute_dtype=dtype,
                                      bnb_4bit_use_double_quant=True, bnb_4bit_quant_type="nf4")
    model = AutoModelForCausalLM.from_pretrained(
        path, dtype=dtype, attn_implementation=attn_implementation, quantization_config=quantization,
        trust_remote_code=False,
        device_map={"": int(os.environ.get("LOCAL_RANK", 0)) if torch.cuda.is_available() else "cpu"})
    # Gradient checkpointing is the trainer's choice (--gradient_checkpointing), not switched on here.
    return prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)


def kbit_linear_types() -> tuple[type[nn.Module], ...]:
    import bitsandbytes as bnb

    return bnb.nn.Linear4bit, bnb.nn.Linear8bitLt


def load_own_quantization_checked(language_model: nn.Module) -> None:
    """Let the quantized layers load a checkpoint of this same model (Trainer / DeepSpeed resume).

    bitsandbytes saves each layer's quantization statistics next to its packed weight, but does not load
    them back on CPU (Linear4bit leaves them as unexpected keys, Linear8bitLt refuses its SCB). The base
    weights are frozen and quantizing the same LLM is deterministic, so a checkpoint's entries must equal
    the layer's own: they are compared (a difference means another base LLM: an error) and consumed.
    """
    kbit_types = kbit_linear_types()
    for module in language_model.modules():
        if isinstance(module, kbit_types):
            module.register_load_state_dict_pre_hook(_check_own_quantization)


def _check_own_quantization(module: nn.Module, state_dict: dict, prefix: str, *_) -> None:
    own: dict[str, torch.Tensor] = {}
    module._save_to_state_dict(own, "", keep_vars=False)  # bitsandbytes' entries: packed weight + statistics
    for name, value in own.items():
        key = prefix + name
        if key in state_dict and not torch.equal(state_dict[key].to(value.device), value):
            raise CheckpointError(f"{key}: the checkpoint's quantized base weights differ from this model's; QLoRA "
                                  f"resumes from a checkpoint of the same base LLM (--model_name_or_path) and --bits")
        if name not in ("weight", "bias"):  # the packed weight itself loads as any frozen parameter
            state_dict.pop(key, None)


# Each 4-bit weight ``W`` is saved with ``W.absmax``, ``W.quant_map``, ``W.nested_*`` and one of these.
FOUR_BIT_STATE = (".quant_state.bitsandbytes__nf4", ".quant_state.bitsandbytes__fp4")
EIGHT_BIT_SCALES = ".SCB"  # the row scales saved next to each 8-bit ``weight``, with its ``weight_format``


def dequantize_kbit_weights(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A QLoRA model's state dict with every k-bit LLM weight replaced by the fp32 matrix its quantized layer
    multiplies by (bitsandbytes' own dequantization) and the quantization statistics dropped: the state dict
    of the same model with 16-bit LoRA, ready for ``merge_lora``."""
    require_kbit_support()
    from bitsandbytes.functional import QuantState, dequantize_4bit, int8_vectorwise_dequant

    plain = dict(state_dict)
    for state_key in [key for key in state_dict if key.endswith(FOUR_BIT_STATE)]:
        weight = state_key[:state_key.rindex(".quant_state.")]
        stats = {key[len(weight) + 1:]: plain.pop(key) for key in list(plain) if key.startswith(weight + ".")}
        quant_state = QuantState.from_dict(stats, device=plain[weight].device)
        # The layer's forward casts exactly this tensor to the compute dtype (fp32 when training on CPU).
        plain[weight] = dequantize_4bit(plain[weight], quant_state).float()
    for scales_key in [key for key in state_dict if key.endswith(EIGHT_BIT_SCALES)]:
        prefix = scales_key[:-len(EIGHT_BIT_SCALES)]
        plain.pop(f"{prefix}.weight_format", None)
        plain[f"{prefix}.weight"] = int8_vectorwise_dequant(plain[f"{prefix}.weight"], plain.pop(scales_key)).float()
    still_quantized = [f"{key} ({value.dtype})" for key, value in plain.items()
                       if key.endswith(".weight") and not value.is_floating_point()]
    if still_quantized:
        raise CheckpointError(f"quantized weights without their bitsandbytes statistics ({FOUR_BIT_STATE[0]}, "
                              f"absmax, ... or {EIGHT_BIT_SCALES}): {still_quantized[:3]}")
    return plain

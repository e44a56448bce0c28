"""Start from a LLaVA release: its LLM, CLIP tower, feature layer and projector become a fila model's.

Two layouts are read:
- **llava-hf** (transformers' ``LlavaForConditionalGeneration``: ``config.json`` with ``model_type`` "llava" and
  ``text_config`` / ``vision_config``; our own ``--format llava`` export is one). Loaded by transformers' Llava
  class, whose modules are then moved, not copied, into the fila model.
- **original LLaVA-1.5** (``LlavaLlamaForCausalLM``: a Llama checkpoint whose config has ``mm_vision_tower``,
  ``mm_projector_type``, ``mm_vision_select_layer``, and whose weights hold ``model.mm_projector.*``). The
  vision tower is not in those weights: it is the ``mm_vision_tower`` folder or hub id (``--vision_tower``
  overrides it).

LLaVA's stage-1 output, ``mm_projector.bin`` (the projector alone, same names), starts a run through
``--pretrained_connector`` (training/connector_artifact.py).
"""
from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import safe_open
from transformers import AutoModelForCausalLM, CLIPVisionModel, LlamaConfig, LlamaForCausalLM, PreTrainedModel

from ..utils.distributed import gathered
from ..utils.errors import CheckpointError, ConfigError
from ..utils.quiet import DropMessages
from .llava_layout import LLAVA_HF, ORIGINAL, PROJECTOR_DEPTHS, folder_layout, local_file, release_config

logger = logging.getLogger(__name__)

PROJECTOR_PREFIX = "mm_projector."  # original LLaVA: model.mm_projector.{0,2}.* (mlp2x_gelu) or .weight (linear)


@dataclass
class LlavaRelease:
    layout: str
    language_model: PreTrainedModel
    vision_tower: CLIPVisionModel
    vision_feature_layer: int
    projector: dict[str, torch.Tensor]  # our mlp names: "0.weight", "0.bias" (, "2.weight", "2.bias")


def projector_depth(state: dict[str, torch.Tensor], origin: str) -> int:
    """Linear layers of a LLaVA projector state dict (keys "0.weight", ... or "weight" for ``linear``)."""
    if set(state) == {"weight", "bias"}:
        return 1
    if set(state) == {"0.weight", "0.bias", "2.weight", "2.bias"}:
        return 2
    raise CheckpointError(f"{origin}: the projector has weights {sorted(state)}; only LLaVA's linear and "
                          f"mlp2x_gelu projectors are read")


def as_our_projector(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """LLaVA's projector names -> our mlp's (``linear`` is one bare Linear in LLaVA, layer 0 here)."""
    return {f"0.{name}": tensor for name, tensor in state.items()} if set(state) == {"weight", "bias"} else state


def llava_projector_file(path: Path) -> dict[str, torch.Tensor]:
    """The projector of LLaVA's stage-1 ``mm_projector.bin`` (torch.save of ``model.mm_projector.*``), in our
    mlp names. Read with ``weights_only=True``: a pickle runs no code here."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch reports a bad or unsafe pickle in several exception types
        raise CheckpointError(f"{path}: not a LLaVA projector file ({type(error).__name__}: {error})") from None
    if not isinstance(state, dict):
        raise CheckpointError(f"{path}: expected a state dict, got {type(state).__name__}")
    projector = {name.split(PROJECTOR_PREFIX, 1)[1]: tensor for name, tensor in state.items()
                 if PROJECTOR_PREFIX in name}
    if not projector:
        raise CheckpointError(f"{path}: no {PROJECTOR_PREFIX}* weights (LLaVA's stage-1 projector file)")
    projector_depth(projector, str(path))
    return as_our_projector(projector)


def check_projector_fits(projector: dict[str, torch.Tensor], depth: int, vision_hidden: int, llm_hidden: int,
                         origin: str) -> None:
    """The shape and architecture check of a LLaVA projector against the model it starts."""
    found = len(projector) // 2  # our names: a weight and a bias per Linear
    if found != depth:
        names = {value: name for name, value in PROJECTOR_DEPTHS.items()}
        raise CheckpointError(f"{origin} is LLaVA's {names[found]} projector, but the model's connector has "
                              f"{depth} Linear layer(s) ({names.get(depth, depth)})")
    shape = tuple(projector["0.weight"].shape)
    if shape != (llm_hidden, vision_hidden):
        raise CheckpointError(f"{origin} projects {shape[1]} -> {shape[0]} features, the model needs "
                              f"{vision_hidden} (vision tower) -> {llm_hidden} (LLM)")


def load_projector(model, projector: dict[str, torch.Tensor], origin: str) -> None:
    """A LLaVA projector (our mlp names) into the model's connector MLP, after the architecture and shape check;
    MMFuser's fuser and FILA's CVFM keep their own init (closed gates). Under ZeRO-3 rank 0's copy wins."""
    target = model.connector.projector
    depth = sum(isinstance(layer, torch.nn.Linear) for layer in target)
    check_projector_fits(projector, depth, model.config.vision_config.hidden_size,
                         model.config.text_config.hidden_size, origin)
    parameters = dict(target.named_parameters())
    with torch.no_grad(), gathered(list(parameters.values()), modifier_rank=0):
        for name, parameter in parameters.items():
            parameter.data.copy_(projector[name].to(parameter.dtype))


def _checked(reasons: list[str], path: str) -> None:
    if reasons:
        raise ConfigError(f"{path}: cannot start from this LLaVA model: {'; '.join(reasons)}")


# Weight-name prefixes of a llava-hf checkpoint (the hub layout transformers 4.x wrote, and 5.x's own).
LLM_KEYS = {r"^language_model\.model\.": "model.", r"^language_model\.lm_head\.": "lm_head.",
            r"^model\.language_model\.": "model."}
# CLIP's own legacy rule (vision_model.X -> X) may run first: "vision_tower." alone is stripped too.
TOWER_KEYS = {r"^vision_tower\.vision_model\.": "", r"^model\.vision_tower\.": "", r"^vision_tower\.": ""}
HF_PROJECTOR = {"linear_1": "0", "linear_2": "2"}  # multi_modal_projector.linear_N -> our mlp layer


def _load_llava_hf(path: str, dtype: torch.dtype, attn_implementation: str) -> LlavaRelease:
    """Each part through its own ``from_pretrained`` with the release's weight names mapped (so ZeRO-3
    partitions them while they load, as for any LLM); the projector read from the weight files."""
    from transformers import LlavaConfig

    config = LlavaConfig.from_pretrained(path)
    reasons = []
    if config.vision_config.model_type != "clip_vision_model":
        reasons.append(f"its vision tower is {config.vision_config.model_type!r}, not CLIP")
    if config.vision_feature_select_strategy != "default":
        reasons.append(f"vision_feature_select_strategy {config.vision_feature_select_strategy!r} (only 'default': "
                       f"patch tokens, CLS dropped)")
    if not isinstance(config.vision_feature_layer, int):
        reasons.append(f"vision_feature_layer {config.vision_feature_layer!r} is not one layer")
    if config.projector_hidden_act != "gelu" or not config.multimodal_projector_bias:
        reasons.append("its projector is not LLaVA's Linear-GELU-Linear with biases")
    _checked(reasons, path)
    with skipped_keys_unreported():
        language_model, llm_info = AutoModelForCausalLM.from_pretrained(
            path, config=config.text_config, key_mapping=LLM_KEYS, dtype=dtype,
            attn_implementation=attn_implementation, output_loading_info=True, trust_remote_code=False)
        tower, tower_info = CLIPVisionModel.from_pretrained(
            path, config=config.vision_config, key_mapping=TOWER_KEYS, dtype=dtype, output_loading_info=True)
    for part, info in (("LLM", llm_info), ("vision tower", tower_info)):
        if info["missing_keys"]:
            raise CheckpointError(f"{path}: the {part} weights are not all there (missing, e.g. "
                                  f"{sorted(info['missing_keys'])[:3]})")
    projector = {}
    for name, tensor in _tensors_named(path, "multi_modal_projector.").items():
        layer, _, kind = name.rpartition(".")
        projector[f"{HF_PROJECTOR.get(layer, layer)}.{kind}"] = tensor
    if set(projector) != {"0.weight", "0.bias", "2.weight", "2.bias"}:
        raise CheckpointError(f"{path}: multi_modal_projector has {sorted(projector)}, not LLaVA's two Linear layers")
    return LlavaRelease(LLAVA_HF, language_model, tower, config.vision_feature_layer, projector)


@contextmanager
def skipped_keys_unreported() -> Iterator[None]:
    """Each part loads from the whole release, so transformers reports the other parts' weights as unexpected
    in a long table: all expected here. What matters, a missing weight, is checked after the load."""
    report = logging.getLogger("transformers.modeling_utils")
    drop = DropMessages(r"LOAD REPORT")
    report.addFilter(drop)
    try:
        yield
    finally:
        report.removeFilter(drop)


def _tensors_named(path: str, marker: str) -> dict[str, torch.Tensor]:
    """Every tensor whose name contains ``marker``, by the part after it, from the shard(s) that hold them (the
    index says which; no whole-model load). Safetensors or torch pickles (read with ``weights_only=True``)."""
    found: dict[str, torch.Tensor] = {}
    for index_name, suffix in (("model.safetensors.index.json", ".safetensors"),
                               ("pytorch_model.bin.index.json", ".bin")):
        index = local_file(path, index_name)
        if index is not None:
            weight_map = json.loads(index.read_text())["weight_map"]
            files = sorted({local_file(path, shard) for key, shard in weight_map.items() if marker in key})
            break
    else:
        files = [file for name in ("model.safetensors", "pytorch_model.bin") if (file := local_file(path, name))]
    if not files:
        raise CheckpointError(f"{path}: no *.safetensors or *.bin weights")
    for file in files:
        if file.suffix == ".safetensors":
            with safe_open(str(file), framework="pt") as handle:
                found |= {key.split(marker, 1)[1]: handle.get_tensor(key) for key in handle.keys() if marker in key}
        else:
            state = torch.load(file, map_location="cpu", weights_only=True)
            found |= {key.split(marker, 1)[1]: value for key, value in state.items() if marker in key}
    return found


def _original_projector(path: str) -> dict[str, torch.Tensor]:
    projector = _tensors_named(path, PROJECTOR_PREFIX)
    if not projector:
        raise CheckpointError(f"{path}: no {PROJECTOR_PREFIX}* weights")
    projector_depth(projector, path)
    return as_our_projector(projector)


def _load_original(path: str, vision_tower: str | None, dtype: torch.dtype,
                   attn_implementation: str) -> LlavaRelease:
    raw = release_config(path)
    reasons = []
    if raw.get("mm_projector_type") not in PROJECTOR_DEPTHS:
        reasons.append(f"mm_projector_type {raw.get('mm_projector_type')!r} (linear or mlp2x_gelu are read)")
    if raw.get("mm_vision_select_feature", "patch") != "patch":
        reasons.append(f"mm_vision_select_feature {raw['mm_vision_select_feature']!r} (only 'patch')")
    for flag in ("mm_use_im_start_end", "mm_use_im_patch_token"):
        if raw.get(flag):
            reasons.append(f"{flag} is true (image start/end and patch tokens are not implemented)")
    if raw.get("image_aspect_ratio", "pad") != "pad" or raw.get("mm_patch_merge_type", "flat") != "flat":
        reasons.append("it is not LLaVA-1.5's single padded view (image_aspect_ratio pad, flat patches)")
    if raw.get("unfreeze_mm_vision_tower"):
        reasons.append("it fine-tuned its vision tower, whose weights are in the checkpoint (reading them is not "
                       "implemented; the tower would silently be mm_vision_tower's)")
    _checked(reasons, path)
    # Its config is a Llama config plus LLaVA's mm_* keys; the Llama fields alone build the LLM (rope_theta and
    # rope_scaling are the older spellings of rope_parameters, still accepted).
    llama_fields = set(LlamaConfig().to_dict()) - {"model_type", "architectures", "transformers_version"}
    llama_fields |= {"rope_theta", "rope_scaling"}
    llm_config = LlamaConfig(**{key: value for key, value in raw.items() if key in llama_fields})
    language_model = LlamaForCausalLM.from_pretrained(path, config=llm_config, dtype=dtype,
                                                      attn_implementation=attn_implementation)
    tower = CLIPVisionModel.from_pretrained(vision_tower or raw["mm_vision_tower"], dtype=dtype)
    return LlavaRelease(ORIGINAL, language_model, tower, int(raw.get("mm_vision_select_layer", -2)),
                        _original_projector(path))


def load_llava_release(path: str, vision_tower: str | None, dtype: torch.dtype,
                       attn_implementation: str) -> LlavaRelease:
    layout = folder_layout(path)
    if layout == LLAVA_HF:
        if vision_tower is not None:
            logger.warning("%s is a llava-hf model: its own CLIP tower is used, --vision_tower %s is not", path,
                           vision_tower)
        release = _load_llava_hf(path, dtype, attn_implementation)
    elif layout == ORIGINAL:
        release = _load_original(path, vision_tower, dtype, attn_implementation)
    else:
        raise ConfigError(f"{path} is not a LLaVA model folder")
    logger.info("starting from the %s model %s: its LLM, CLIP tower, feature layer %d and %s projector", layout,
                path, release.vision_feature_layer, "linear" if len(release.projector) == 2 else "mlp2x_gelu")
    return release

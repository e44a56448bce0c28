"""Build the composite model and its tokenizer from components or from a saved folder."""
from __future__ import annotations

import json
import logging
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, CLIPVisionConfig, CLIPVisionModel, PreTrainedTokenizerBase

from ..utils.errors import CheckpointError, ConfigError
from .configuration import DEFAULT_ATTENTION, FilaConfig
from .contracts import CONNECTORS, VISION_ENCODERS
from .llava_layout import folder_layout, release_config, release_feature_layer
from .llava_release import load_llava_release, load_projector
from .lora import LoraSettings, add_lora, is_quantized, load_quantized_llm
from .modeling import FilaForConditionalGeneration
from .options import stored_options
from .vision.clip_encoder import check_feature_layer, check_tower_normalization
from .vision.registry import build_image_processor

logger = logging.getLogger(__name__)


def is_fila_checkpoint(path: str) -> bool:
    config = Path(path) / "config.json"
    return config.is_file() and json.loads(config.read_text()).get("model_type") == FilaConfig.model_type


def local_checkpoint(path_or_repo: str) -> str:
    """A local file/folder as is; otherwise an OpenCLIP hub repo id, resolved to its local snapshot
    folder (the HF cache when offline) holding its config and ONE weights file (safetensors first)."""
    if Path(path_or_repo).exists():
        return path_or_repo
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import EntryNotFoundError

    from .vision.convnext_branch import CONFIG_FILE, WEIGHT_FILES

    hf_hub_download(path_or_repo, CONFIG_FILE)
    for name in WEIGHT_FILES:
        try:
            return str(Path(hf_hub_download(path_or_repo, name)).parent)
        except EntryNotFoundError:
            continue
    raise FileNotFoundError(f"{path_or_repo} has none of {WEIGHT_FILES} (locally or on the hub)")


def with_local_convnext(vision_options: dict | None) -> dict | None:
    convnext = (vision_options or {}).get("convnext", {})
    if not convnext.get("checkpoint"):
        return vision_options
    return {**vision_options, "convnext": {**convnext, "checkpoint": local_checkpoint(convnext["checkpoint"])}}


def refuse_remote_code(model_name_or_path: str) -> None:
    """An LLM that needs its own modelling code (config.json's auto_map, for a model type transformers lacks) is
    one ConfigError, read from its config before any weights: fila-train runs no code from a model folder or the
    hub. Every loader passes ``trust_remote_code=False`` besides, so transformers never asks to run it."""
    from transformers import PretrainedConfig
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING

    if folder_layout(model_name_or_path) is not None:  # a LLaVA release loads through transformers' own classes
        return
    raw, _ = PretrainedConfig.get_config_dict(model_name_or_path)
    if "auto_map" in raw and raw.get("model_type") not in CONFIG_MAPPING:
        raise ConfigError(f"{model_name_or_path} ships its own model code (config.json's auto_map: "
                          f"{', '.join(raw['auto_map'])}) for model type {raw.get('model_type')!r}, which transformers "
                          f"does not know: fila-train runs no code from a model folder or the hub; use a "
                          f"transformers-native LLM")


def load_pretrained_parts(model_name_or_path: str, vision_tower: str | None, settings: LoraSettings | None,
                          dtype: torch.dtype, attn_implementation: str, vision_feature_layer: int):
    """A fresh build's pretrained LLM and CLIP tower: (language_model, tower, vision_feature_layer, release),
    where a LLaVA release brings its own tower, feature layer and projector (release), else None."""
    release = None
    if folder_layout(model_name_or_path) is not None:
        if settings is not None and settings.bits != 16:
            raise ConfigError(f"--bits {settings.bits}: a LLaVA release ({model_name_or_path}) loads unquantized; "
                              f"export it as a fila model first, or train LoRA at 16 bits")
        release = load_llava_release(model_name_or_path, vision_tower, dtype, attn_implementation)
        language_model, tower, vision_feature_layer = \
            release.language_model, release.vision_tower, release.vision_feature_layer
    elif settings is not None and settings.bits != 16:
        language_model = load_quantized_llm(model_name_or_path, settings.bits, dtype, attn_implementation)
    else:
        language_model = AutoModelForCausalLM.from_pretrained(
            model_name_or_path, dtype=dtype, attn_implementation=attn_implementation, trust_remote_code=False)
    if release is None:
        tower = CLIPVisionModel.from_pretrained(vision_tower, dtype=dtype)
    return language_model, tower, vision_feature_layer, release


def saved_config(path: str | Path) -> FilaConfig:
    """A saved fila model's config, checked before any weights load: it describes its LLM and CLIP tower (left
    out, the defaults would build a full-size random Llama), and its part options and LoRA settings parse
    (each part's options dataclass; a key this version does not know). Errors name the folder's config.json."""
    raw, _ = FilaConfig.get_config_dict(str(path))
    absent = [key for key in ("text_config", "vision_config") if not raw.get(key)]
    if absent:
        raise ConfigError(f"{path}/config.json has no {' or '.join(absent)}: a fila model's config describes its "
                          f"LLM (text_config) and its CLIP tower (vision_config)")
    config = FilaConfig.from_dict(raw)  # what from_pretrained builds, from the dict already read
    stored = [(VISION_ENCODERS.get(config.vision_encoder).options, config.vision_options),
              (CONNECTORS.get(config.connector_type).options, config.connector_options),
              (LoraSettings, config.lora)]
    try:
        for options, data in stored:
            if options is not None and data is not None:  # nested options parse themselves (from_dict)
                options.from_dict(data) if hasattr(options, "from_dict") else stored_options(options, data)
    except ConfigError as error:
        raise ConfigError(f"{path}/config.json: {error}") from None
    return config


KEYS_NAMED = 4  # of a mismatch's weight names in its one line


def load_saved_model(path: str, **kwargs) -> FilaForConditionalGeneration:
    """A saved fila model folder with every weight from its files. A weight the files lack (a copy cut short,
    config.json naming another connector) or one they hold that the model has no place for is a CheckpointError
    naming them: from_pretrained initialises the first at random, drops the second, and goes on."""
    saved_config(path)
    # Mismatched shapes reported (then refused below) rather than raised as transformers' own RuntimeError.
    model, info = FilaForConditionalGeneration.from_pretrained(path, output_loading_info=True,
                                                               ignore_mismatched_sizes=True, **kwargs)
    problems = {what: sorted(info.get(f"{what}_keys") or []) for what in ("missing", "unexpected")}
    problems["mismatched"] = [f"{key} {list(saved)} in the files, {list(expected)} in the model"
                              for key, saved, expected in sorted(info.get("mismatched_keys") or [])]
    # A tensor that the index lists but its shard lacks is not reported missing: it is left on the meta device.
    left_empty = {name for name, tensor in [*model.named_parameters(), *model.named_buffers()] if tensor.is_meta}
    problems["missing"] = sorted(set(problems["missing"]) | left_empty)
    found = [f"{what} {len(keys)} ({', '.join(map(str, keys[:KEYS_NAMED]))}{', ...' * (len(keys) > KEYS_NAMED)})"
             for what, keys in problems.items() if keys]
    if found:
        raise CheckpointError(f"{path}: the weights do not match its config.json's model ({'; '.join(found)}): "
                              f"a copy cut short, or files of another model (refused, not filled in at random)")
    return model


def rng_kept():
    """A context for loading weights that leaves the CPU random state as it found it. Loading may draw random
    numbers (under ZeRO-3, zero.Init builds parameters such as CLIP's class embedding with torch.randn before
    loading them, where other stages build on the meta device): kept, what is built on the CPU after the load
    (a new connector, CVFM or fuser; new LoRA adapters) starts from the same weights for a --seed under every
    ZeRO stage, as it does on every rank."""
    return torch.random.fork_rng(devices=[])


def build_model(model_name_or_path: str, vision_tower: str | None = None, *,
                vision_encoder: str = FilaConfig.vision_encoder, vision_options: dict | None = None,
                vision_feature_layer: int = FilaConfig.vision_feature_layer,
                connector_type: str = FilaConfig.connector_type, connector_options: dict | None = None,
                conversation_template: str = FilaConfig.conversation_template, dtype: torch.dtype = torch.float32,
                attn_implementation: str = DEFAULT_ATTENTION, lora: dict | None = None) -> FilaForConditionalGeneration:
    """A saved fila model folder loads as is; otherwise LLM + CLIP tower are joined with a new connector.

    ``vision_options``/``connector_options`` may be partial (e.g. from command-line flags): the
    encoder and connector complete them, and the model's config stores the complete result.
    ``lora`` (LoraSettings as a dict) adds LoRA adapters to the LLM; bits 4/8 loads it quantized (QLoRA).
    Nothing runs remote code (refuse_remote_code).
    """
    settings = None if lora is None else LoraSettings.from_dict(lora)
    if is_fila_checkpoint(model_name_or_path):
        with rng_kept():  # new LoRA adapters are drawn after it
            model = load_saved_model(model_name_or_path, dtype=dtype, attn_implementation=attn_implementation)
        return with_lora(model, settings, model_name_or_path)
    vision_config, vision_options = fresh_vision_settings(model_name_or_path, vision_tower, vision_encoder,
                                                          vision_options)
    connector_options = CONNECTORS.get(connector_type).check_fresh_options(vision_config, connector_options)
    if folder_layout(model_name_or_path) is None:
        check_feature_layer(vision_feature_layer, vision_config.num_hidden_layers)
    else:
        check_release_feature_layer(model_name_or_path, vision_feature_layer)
    refuse_remote_code(model_name_or_path)
    with rng_kept():  # the new connector / CVFM / fuser are drawn after it
        language_model, tower, vision_feature_layer, release = load_pretrained_parts(
            model_name_or_path, vision_tower, settings, dtype, attn_implementation, vision_feature_layer)
    config = FilaConfig(
        vision_config=tower.config, text_config=language_model.config, vision_encoder=vision_encoder,
        vision_options=with_local_convnext(vision_options), vision_feature_layer=vision_feature_layer,
        connector_type=connector_type, connector_options=connector_options,
        conversation_template=conversation_template,
        tie_word_embeddings=bool(getattr(language_model.config, "tie_word_embeddings", False)),
        # Set on the composite, it is set on both sub-configs too; left unset, the composite's None
        # overwrites the LLM's, which then runs without its causal mask.
        attn_implementation=attn_implementation, lora=None if settings is None else settings.to_dict())
    model = FilaForConditionalGeneration(config, vision_tower=tower, language_model=language_model)
    if release is not None:
        load_projector(model, release.projector, f"{model_name_or_path} ({release.layout})")
    if is_quantized(language_model):  # .to(dtype) must not touch the packed k-bit weights
        model.vision_tower.to(dtype)
        model.connector.to(dtype)
        return model
    return model.to(dtype)


def check_release_feature_layer(path: str, vision_feature_layer: int, given: bool = False) -> None:
    """A LLaVA release brings its projector, trained on its own feature layer, which the model then uses: another
    one asked for would be silently replaced by it. The default is compared only where the flag was ``given``
    (a training run knows; here it cannot be told from the default)."""
    layer, key = release_feature_layer(release_config(path))
    if vision_feature_layer != layer and (given or vision_feature_layer != FilaConfig.vision_feature_layer):
        raise ConfigError(f"--vision_feature_layer {vision_feature_layer}: {path} is a LLaVA release whose projector "
                          f"was trained on layer {layer} (its config.json's {key}); leave the flag out")


def starts_a_fresh_connector(model_name_or_path: str) -> bool:
    """build_model gives this folder a new connector: not a saved fila model, nor a LLaVA release with its projector."""
    return not is_fila_checkpoint(model_name_or_path) and folder_layout(model_name_or_path) is None


def fresh_vision_settings(model_name_or_path: str, vision_tower: str | None, vision_encoder: str,
                          vision_options: dict | None) -> tuple[CLIPVisionConfig, dict | None]:
    """A fresh build's CLIP config and the encoder's complete options, checked against it before any weights load."""
    layout = folder_layout(model_name_or_path)
    if vision_tower is None and layout is None:
        raise ConfigError(f"{model_name_or_path} is an LLM, so --vision_tower is required")
    vision_config = release_vision_config(model_name_or_path, vision_tower) if layout else \
        CLIPVisionConfig.from_pretrained(vision_tower)
    check_tower_normalization(release_tower(model_name_or_path, vision_tower) if layout else vision_tower)
    return vision_config, VISION_ENCODERS.get(vision_encoder).check_fresh_options(vision_config, vision_options)


def built_parts(model_name_or_path: str, vision_encoder: str, connector_type: str) -> tuple[str, str, str | None]:
    """The vision encoder and connector that build_model gives these arguments, and the saved fila model they
    come from: a saved model's own, else the ones named and None (read from configs alone)."""
    if is_fila_checkpoint(model_name_or_path):
        config = FilaConfig.from_pretrained(model_name_or_path)
        return config.vision_encoder, config.connector_type, model_name_or_path
    return vision_encoder, connector_type, None


def image_token_counts(model_name_or_path: str, vision_tower: str | None = None, *,
                       vision_encoder: str = FilaConfig.vision_encoder,
                       vision_options: dict | None = None) -> dict[str, int]:
    """What one image becomes in the LLM input, by the shape it takes, in the model build_model gives these
    arguments: read from configs alone, before any weights load."""
    return planned_image_processor(model_name_or_path, vision_tower, vision_encoder=vision_encoder,
                                   vision_options=vision_options).image_token_counts()


def planned_image_processor(model_name_or_path: str, vision_tower: str | None = None, *,
                            vision_encoder: str = FilaConfig.vision_encoder, vision_options: dict | None = None):
    """The encoder's image processor of the model build_model gives these arguments, from configs alone."""
    if is_fila_checkpoint(model_name_or_path):
        config = FilaConfig.from_pretrained(model_name_or_path)
        vision_config, vision_encoder, vision_options = config.vision_config, config.vision_encoder, \
            config.vision_options
    else:
        vision_config, vision_options = fresh_vision_settings(model_name_or_path, vision_tower, vision_encoder,
                                                              vision_options)
    return build_image_processor(vision_encoder, vision_config, vision_options)


def release_tower(path: str, vision_tower: str | None) -> str:
    """Where a LLaVA release's CLIP tower comes from: llava-hf holds it, original LLaVA names it (or --vision_tower)."""
    raw = release_config(path)
    return path if "vision_config" in raw else vision_tower or raw["mm_vision_tower"]


def release_vision_config(path: str, vision_tower: str | None) -> CLIPVisionConfig:
    """A LLaVA release's CLIP config, read before any weights: llava-hf holds it, original LLaVA names a tower."""
    raw = release_config(path)
    if "vision_config" in raw:
        from transformers import LlavaConfig

        return LlavaConfig.from_pretrained(path).vision_config
    return CLIPVisionConfig.from_pretrained(vision_tower or raw["mm_vision_tower"])


def with_lora(model: FilaForConditionalGeneration, settings: LoraSettings | None,
              path: str) -> FilaForConditionalGeneration:
    """A saved model with the requested adapters: added to a plain one, or already there (same settings)."""
    if settings is None:
        return model
    if model.config.lora is None:
        add_lora(model, settings)
    elif LoraSettings.from_dict(model.config.lora) != settings:
        raise ConfigError(f"{path} already has LoRA adapters {model.config.lora}, but the flags ask for "
                          f"{settings.to_dict()}: merge them first (merge_lora) or drop the --lora_* flags")
    return model


def pretrained_tokenizer(path: str, **kwargs) -> PreTrainedTokenizerBase:
    """``AutoTokenizer`` without remote code (a tokenizer that only its own code loads: refuse_tokenizer_code)."""
    try:
        return AutoTokenizer.from_pretrained(path, trust_remote_code=False, **kwargs)
    except ValueError:
        refuse_tokenizer_code(path)
        raise


def refuse_tokenizer_code(path: str) -> None:
    """After transformers refused to load a tokenizer without its code (a ValueError): one ConfigError when the
    folder's tokenizer_config.json auto_map names tokenizer classes (e.g. InternLM2's, or a .py in a model folder);
    returns when it names none (the error was another one)."""
    from transformers.models.auto.tokenization_auto import get_tokenizer_config

    auto_map = get_tokenizer_config(path).get("auto_map") or {}
    classes = auto_map.get("AutoTokenizer", []) if isinstance(auto_map, dict) else auto_map  # or the old list
    if any(classes):
        raise ConfigError(f"{path} ships its own tokenizer code (tokenizer_config.json's auto_map: "
                          f"{', '.join(name for name in classes if name)}), which transformers cannot load without "
                          f"running it: fila-train runs no code from a model folder or the hub; use a "
                          f"transformers-native tokenizer") from None


def load_tokenizer(path: str, model: FilaForConditionalGeneration, max_length: int) -> PreTrainedTokenizerBase:
    """The LLM's tokenizer, with a pad token that is never a trained token.

    Padding is masked (attention 0, label -100) so its id is never trained; a tokenizer
    without one (Llama-2, Llama-3) gets a dedicated ``<pad>``. The embeddings grow by one row only
    when that id is past them: an LLM padded past its tokenizer (Phi-2) already has the row, and
    resizing to the tokenizer's length would cut its vocabulary.
    """
    tokenizer = pretrained_tokenizer(path, model_max_length=max_length)
    if tokenizer.pad_token is None:
        tokenizer.add_special_tokens({"pad_token": "<pad>"})
        rows = model.language_model.get_input_embeddings().num_embeddings  # also under ZeRO-3 partitioning
        resized = ""
        if len(tokenizer) > rows:
            model.language_model.resize_token_embeddings(len(tokenizer))
            model.config.text_config.vocab_size = model.language_model.config.vocab_size
            resized = f" and resized the embeddings from {rows} to {len(tokenizer)} rows"
        logger.warning("tokenizer %s has no pad token: added '<pad>' (id %d)%s", path, tokenizer.pad_token_id, resized)
    return tokenizer

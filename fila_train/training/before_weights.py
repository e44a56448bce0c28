"""What a run checks of its flags before DeepSpeed starts and before any weights load, from configs and the
tokenizer alone: each a one-line ConfigError, where loading a 7B LLM under ZeRO-3 first would take minutes."""
from __future__ import annotations

import json

from ..data.image_budget import check_images_fit
from ..data.mixed_dataset import source_processor
from ..data.mixture import MixtureSpec, load_mixture
from ..model.builder import (built_parts, check_release_feature_layer, is_fila_checkpoint, planned_image_processor,
                             pretrained_tokenizer, refuse_remote_code)
from ..model.configuration import IMAGE_TOKEN_ID, FilaConfig
from ..model.liger import liger_patchers
from ..model.llava_layout import folder_layout, release_config
from ..processing.chat_templates import get_template
from ..processing.saved_tokenizer import check_saved_alike
from ..processing.tokenization import ConversationTokenizer
from ..utils.errors import ConfigError
from ..model.arguments import OPTION_SHORTHANDS
from .arguments import DataArguments, ModelArguments, TrainingArguments
from .llm_context import check_within_context
from .parts import check_parts_exist, check_rates_train


def check_before_weights(model_args: ModelArguments, args: TrainingArguments,
                         given: frozenset[str] = frozenset(), data_args: DataArguments | None = None) -> None:
    if model_args.lora_r and "llm" not in args.parts():
        raise ConfigError(f"--lora_r trains LoRA adapters of the LLM, but --tune_parts {args.tune_parts!r} "
                          f"has no 'llm': add it (with LoRA, 'llm' trains the adapters only)")
    convnext = (model_args.vision_options() or {}).get("convnext", {})
    if convnext.get("trainable") and "convnext" not in args.parts():
        raise ConfigError(f"--vision_option convnext.trainable=true, but --tune_parts {args.tune_parts!r} has no "
                          "'convnext': add it (with --convnext_lr), or the ConvNeXt stays frozen")
    refuse_remote_code(model_args.model_name_or_path)
    check_parts_exist(args.parts(), args.part_learning_rates(),
                      *built_parts(model_args.model_name_or_path, model_args.vision_encoder, model_args.connector_type))
    check_rates_train(args.parts(), {part: flag for part, (_, flag) in args.part_rates().items()})
    check_saved_model_flags(model_args, given)
    if folder_layout(model_args.model_name_or_path) is not None:  # a LLaVA release, with its projector's layer
        check_release_feature_layer(model_args.model_name_or_path, model_args.vision_feature_layer,
                                    "vision_feature_layer" in given)
    if args.use_liger:
        liger_patchers()
    # The template's control tokens: the tokenizer alone says whether it can write them.
    conversations = ConversationTokenizer(pretrained_tokenizer(model_args.model_name_or_path),
                                          get_template(model_args.conversation_template), IMAGE_TOKEN_ID)
    check_saved_alike(conversations)
    check_within_context(release_config(model_args.model_name_or_path), args.model_max_length,
                         model_args.model_name_or_path)
    image_processor = planned_image_processor(model_args.model_name_or_path, model_args.vision_tower,
                                              vision_encoder=model_args.vision_encoder,
                                              vision_options=model_args.vision_options())
    check_images_fit(image_processor.image_token_counts(), args.model_max_length)
    if data_args is not None and data_args.is_mixture():
        check_mixture_sources(load_mixture(data_args.data_path, data_args.data_root), conversations.tokenizer,
                              image_processor)


def check_mixture_sources(spec: MixtureSpec, tokenizer, image_processor) -> None:
    """Each source's own template and canvases, as MixtureDataset will build them: before, a template the tokenizer
    cannot write or canvases the encoder lacks stopped the run only once the model's weights had loaded."""
    for source in spec.sources:
        if source.template is not None:
            ConversationTokenizer(tokenizer, get_template(source.template), IMAGE_TOKEN_ID)
        source_processor(image_processor, source, spec.describe())


SAVED_PARTS_FLAGS = ("vision_encoder", "connector_type", "vision_feature_layer")


def check_saved_model_flags(model_args: ModelArguments, given: frozenset[str]) -> None:
    """A saved fila model loads with the parts it was saved with (build_model): a flag given for other parts, or
    other options of them, would be silently ignored."""
    path = model_args.model_name_or_path
    if not is_fila_checkpoint(path):
        return
    config = FilaConfig.from_pretrained(path)
    ignored = [f"--{name} {getattr(model_args, name)} (it has {getattr(config, name)})" for name in SAVED_PARTS_FLAGS
               if name in given and getattr(model_args, name) != getattr(config, name)]
    options = (("vision", model_args.vision_encoder == config.vision_encoder, model_args.vision_options(),
                config.vision_options),
               ("connector", model_args.connector_type == config.connector_type, model_args.connector_options(),
                config.connector_options))
    ignored += [f"{option_flag(part, name)}={value} (it has {saved_value})"
                for part, same_part, asked, saved in options if same_part and asked
                for name, (value, saved_value) in differing_options(asked, saved or {}).items()]
    if ignored:
        raise ConfigError(f"{path} is a saved fila model, which loads with the parts it was saved with: "
                          f"{', '.join(ignored)} would be ignored; leave them out or give its values (the scripts: "
                          f"VISION_ENCODER, CONNECTOR and the option variables), or build a new model from its LLM "
                          f"and vision tower")


def option_flag(part: str, name: str) -> str:
    """The flag that sets option ``name`` (dotted) of the vision side or the connector: its shorthand, if any."""
    shorthand = next((flag for flag, (_, key) in OPTION_SHORTHANDS.items() if key == name), None)
    return f"--{shorthand}" if shorthand else f"--{part}_option {name}"


def differing_options(asked: dict, saved: dict, prefix: str = "") -> dict[str, tuple]:
    """Dotted name -> (asked, saved value) of the options ``asked`` (partial, nested) that differ from ``saved``.
    An option the saved config holds as None is not compared: the saved model does not use it (its ConvNeXt
    checkpoint is None once the weights are in the model, and the scripts always pass one)."""
    found: dict[str, tuple] = {}
    for key, value in asked.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            found |= differing_options(value, saved.get(key) or {}, f"{name}.")
        elif saved.get(key) is not None and json.loads(json.dumps(value)) != json.loads(json.dumps(saved[key])):
            found[name] = (value, saved.get(key))
    return found

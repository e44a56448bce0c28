"""What a run checks of its flags before DeepSpeed starts and before any weights load, from configs and the
tokenizer alone: each a one-line ConfigError, where loading a 7B LLM under ZeRO-3 first would take minutes."""
from __future__ import annotations

from ..model.builder import built_parts, image_token_counts, pretrained_tokenizer, refuse_remote_code
from ..model.configuration import IMAGE_TOKEN_ID
from ..model.liger import liger_patchers
from ..processing.chat_templates import get_template
from ..processing.saved_tokenizer import check_saved_alike
from ..processing.tokenization import ConversationTokenizer
from ..utils.errors import ConfigError
from .arguments import ModelArguments, TrainingArguments
from .image_budget import check_images_fit
from .parts import check_parts_exist, check_rates_train


def check_before_weights(model_args: ModelArguments, args: TrainingArguments) -> None:
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
    if args.use_liger:
        liger_patchers()
    # The template's control tokens: the tokenizer alone says whether it can write them.
    conversations = ConversationTokenizer(pretrained_tokenizer(model_args.model_name_or_path),
                                          get_template(model_args.conversation_template), IMAGE_TOKEN_ID)
    check_saved_alike(conversations)
    check_images_fit(image_token_counts(model_args.model_name_or_path, model_args.vision_tower,
                                        vision_encoder=model_args.vision_encoder,
                                        vision_options=model_args.vision_options()), args.model_max_length)

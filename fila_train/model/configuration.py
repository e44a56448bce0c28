"""The composite configuration: vision encoder + connector + LLM in one PreTrainedConfig."""
from __future__ import annotations

from huggingface_hub.dataclasses import strict
from transformers import AutoConfig, PreTrainedConfig
from transformers.configuration_utils import SubConfigSpec

from .contracts import DEFAULT_CONNECTOR, DEFAULT_VISION_ENCODER, DEFAULT_VISION_FEATURE_LAYER

# Image-context positions carry this id until the model scatters features into them. It is
# negative so it can never collide with (or train) a vocabulary token.
IMAGE_TOKEN_ID = -200
# The attention kernel a model is built with unless asked otherwise (training, bench, inference flags).
DEFAULT_ATTENTION = "sdpa"


@strict
class FilaConfig(PreTrainedConfig):
    """Everything needed to rebuild the model with no training code and no downloads.

    ``vision_encoder`` and ``connector_type`` are exact registry names; ``vision_options``
    and ``connector_options`` hold the dataclass configs of those parts (e.g. the FILA
    hybrid encoder or MMFuser settings) as plain dicts.
    """

    model_type = "fila"
    sub_configs_defaults = {
        "vision_config": SubConfigSpec(config_class=AutoConfig, model_type="clip_vision_model"),
        "text_config": SubConfigSpec(config_class=AutoConfig, model_type="llama"),
    }

    vision_config: dict | PreTrainedConfig | None = None
    text_config: dict | PreTrainedConfig | None = None
    vision_encoder: str = DEFAULT_VISION_ENCODER
    vision_options: dict | None = None
    vision_feature_layer: int = DEFAULT_VISION_FEATURE_LAYER
    connector_type: str = DEFAULT_CONNECTOR
    connector_options: dict | None = None
    image_token_id: int = IMAGE_TOKEN_ID
    conversation_template: str = "vicuna_v1"
    tie_word_embeddings: bool = False
    # LoRA adapters of the LLM (fila_train.model.lora.LoraSettings as a dict: r, alpha, dropout,
    # target_modules, bits), or None. Set, the model rebuilds the adapters from the config.
    lora: dict | None = None

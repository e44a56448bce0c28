"""FilaForConditionalGeneration: vision encoder -> connector -> causal LM.

The dataset has already expanded every ``<image>`` into the right number of
image-context positions (``config.image_token_id``); the model embeds the text,
runs the vision side once for the whole batch and scatters the projected
features into those positions with one ``masked_scatter``.
"""
from __future__ import annotations

from typing import Any

import torch
from torch import nn
from transformers import AutoModelForCausalLM, CLIPVisionModel, GenerationMixin, PreTrainedModel

from ..utils.distributed import built_partitioned
from .checkpointing import set_part_checkpointing
from .configuration import FilaConfig
from .connector import build_connector
from .contracts import CONNECTORS, VISION_ENCODERS, part_prefixes
from .lora import LoraSettings, add_lora
from .vision import build_vision_encoder
from .zero_link import zero_from


def _is_loaded(parameter: torch.Tensor) -> bool:
    return getattr(parameter, "_is_hf_initialized", False)


@torch.no_grad()
def reset_keeping_loaded(module: nn.Module) -> None:
    """``module.reset_parameters()``, except for parameters already loaded from a checkpoint.

    reset_parameters may write tensors directly (e.g. the offsets' directional bias), which the
    loaded-flag guard of transformers' init functions cannot see, so loaded values are restored.
    """
    parameters = dict(module.named_parameters())
    loaded = {name: p.detach().clone() for name, p in parameters.items() if _is_loaded(p)}
    if len(loaded) == len(parameters):
        return
    module.reset_parameters()
    for name, value in loaded.items():
        parameters[name].copy_(value)


def mark_as_loaded(module: nn.Module) -> None:
    """Flag the parameters like loaded weights, so transformers' init skips them. Parameters only:
    from_pretrained replaces the objects it loads, and any missing one must still be initialised."""
    for parameter in module.parameters():
        parameter._is_hf_initialized = True


def part_of(parameter_name: str, prefixes: tuple[tuple[str, str], ...] | None = None) -> str:
    """The tunable part of a parameter, by a model's prefixes (contracts.part_prefixes; None: those of every
    registered part): the first match wins."""
    for prefix, part in prefixes or part_prefixes():
        if parameter_name.startswith(prefix):
            return part
    raise ValueError(f"parameter {parameter_name!r} belongs to no tunable part")


def initialised_by_the_part(config: FilaConfig) -> tuple[tuple[type, ...], tuple[type, ...]]:
    """(self-initialised, constructor-initialised) module types of the model's encoder and connector."""
    encoder, connector = VISION_ENCODERS.get(config.vision_encoder), CONNECTORS.get(config.connector_type)
    return (encoder.self_initialised + connector.self_initialised,
            encoder.constructor_initialised + connector.constructor_initialised)


class FilaPreTrainedModel(PreTrainedModel):
    config_class = FilaConfig
    base_model_prefix = "fila"
    supports_gradient_checkpointing = True
    _supports_sdpa = True
    _supports_flash_attn = True
    _supports_attention_backend = True
    _no_split_modules: list[str] = []

    # Modules whose own init the generic transformers one would destroy (the parts' contracts name them,
    # e.g. MMFuser, CVFM): their reset_parameters() is the part's init. Set in __init__ from the config.
    self_initialised: tuple[type, ...] = ()

    def _initialize_weights(self, module: nn.Module, is_custom_code: bool = False) -> None:
        # For custom code, transformers marks a module with no direct parameters (CVFMBlock) as
        # initialised without calling _init_weights on it; a self-initialised one must be called.
        super()._initialize_weights(module, is_custom_code and not isinstance(module, self.self_initialised))

    @torch.no_grad()
    def _init_weights(self, module: nn.Module) -> None:
        # smart_apply visits children before their parent, so a self-initialised module's own
        # reset runs after (and overrides) the generic init of its Linear/LayerNorm children.
        if isinstance(module, self.self_initialised):
            reset_keeping_loaded(module)
        else:
            super()._init_weights(module)


class FilaForConditionalGeneration(FilaPreTrainedModel, GenerationMixin):
    def __init__(self, config: FilaConfig, vision_tower: CLIPVisionModel | None = None,
                 language_model: nn.Module | None = None):
        super().__init__(config)
        self.self_initialised, constructor_initialised = initialised_by_the_part(config)
        self.part_prefixes = part_prefixes(config.vision_encoder, config.connector_type)
        self.vision_tower = build_vision_encoder(config, tower=vision_tower)
        self.language_model = (language_model if language_model is not None
                               else AutoModelForCausalLM.from_config(config.text_config))
        self.connector = build_connector(config.connector_type, config.vision_config,
                                         config.text_config.hidden_size, config.connector_options)
        stored = self.connector.stored_options()
        if stored is not None:  # the complete options, so a saved config does not depend on defaults
            config.connector_options = stored
        if config.lora is not None:  # the adapters are architecture: a saved LoRA model rebuilds them
            add_lora(self, LoraSettings.from_dict(config.lora))
        # A fresh build keeps their init, as it keeps the pretrained ViT and LLM. Not when ZeRO-3's zero.Init built
        # them (a saved model loading): transformers would leave a weight its files lack out of the missing ones,
        # to hold uninitialised memory.
        for module in self.modules():
            if isinstance(module, constructor_initialised) and not built_partitioned(module):
                mark_as_loaded(module)
        self.post_init()

    # --- transformers plumbing -------------------------------------------------------------
    def get_input_embeddings(self) -> nn.Module:
        return self.language_model.get_input_embeddings()

    def set_input_embeddings(self, value: nn.Module) -> None:
        self.language_model.set_input_embeddings(value)

    def get_output_embeddings(self) -> nn.Module:
        return self.language_model.get_output_embeddings()

    def image_processor(self):
        return self.vision_tower.image_processor()

    # Parts --gradient_checkpointing applies to (None: all the model has); the train entry point sets it.
    checkpointing_parts: tuple[str, ...] | None = None

    def _set_gradient_checkpointing(self, enable: bool = True,
                                    gradient_checkpointing_func=torch.utils.checkpoint.checkpoint,
                                    every_n_layers: int = 1) -> None:
        # transformers' gradient_checkpointing_enable / _disable end here: route it per part.
        set_part_checkpointing(self, self.checkpointing_parts, enable, gradient_checkpointing_func, every_n_layers)

    def named_parts(self) -> dict[str, list[tuple[str, nn.Parameter]]]:
        parts: dict[str, list[tuple[str, nn.Parameter]]] = {}
        for name, parameter in self.named_parameters():
            parts.setdefault(part_of(name, self.part_prefixes), []).append((name, parameter))
        return parts

    # --- forward -----------------------------------------------------------------------------
    def encode_images(self, images: dict[str, Any]) -> torch.Tensor:
        """All views of all images -> [total_image_tokens, llm_hidden] in image order."""
        vision = self.vision_tower(images, output_hidden_states=self.connector.needs_hidden_states)
        projected = self.connector(vision)
        return projected.reshape(-1, projected.shape[-1])

    def embed(self, input_ids: torch.Tensor, images: dict[str, Any] | None,
              images_are_placeholders: bool = False) -> torch.Tensor:
        is_image = input_ids == self.config.image_token_id
        embeds = self.get_input_embeddings()(input_ids.masked_fill(is_image, 0))
        if images is None:
            if is_image.any():
                raise ValueError("input_ids hold image-context positions but no images were given")
            return embeds
        features = self.encode_images(images).to(embeds.dtype)
        if images_are_placeholders:
            # A text-only batch still runs the vision side on a blank image so that every rank
            # executes the same collectives (ZeRO-3 gathers) and trainable parts get gradients.
            return embeds + zero_from([features])
        expected = int(is_image.sum())
        if features.shape[0] != expected:
            raise ValueError(f"the batch has {expected} image-context positions but the vision side "
                             f"produced {features.shape[0]} feature vectors")
        return embeds.masked_scatter(is_image.unsqueeze(-1), features)

    def forward(self, input_ids: torch.Tensor | None = None, attention_mask: torch.Tensor | None = None,
                images: dict[str, Any] | None = None, images_are_placeholders: bool = False,
                labels: torch.Tensor | None = None, inputs_embeds: torch.Tensor | None = None,
                position_ids: torch.Tensor | None = None, logits_to_keep: int | torch.Tensor = 0,
                **kwargs: Any):
        # position_ids and logits_to_keep are named so that generate() sees them in the signature:
        # it then derives positions from a left-padded attention mask and keeps only the last logits.
        if inputs_embeds is None:
            inputs_embeds = self.embed(input_ids, images, images_are_placeholders)
        return self.language_model(inputs_embeds=inputs_embeds, attention_mask=attention_mask,
                                   position_ids=position_ids, labels=labels, logits_to_keep=logits_to_keep,
                                   **kwargs)

    # --- generation ----------------------------------------------------------------------------
    def prepare_inputs_for_generation(self, *args: Any, images: dict[str, Any] | None = None,
                                      is_first_iteration: bool | None = False, **kwargs: Any) -> dict[str, Any]:
        """transformers' own preparation (cache slicing, positions), plus ``images`` on the prefill only:
        later steps feed just the new token, whose image context already sits in the KV cache."""
        model_inputs = super().prepare_inputs_for_generation(*args, is_first_iteration=is_first_iteration, **kwargs)
        if is_first_iteration or not kwargs.get("use_cache", True):
            model_inputs["images"] = images
        return model_inputs

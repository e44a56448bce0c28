"""``--format llava``: the LLaVA-1.5 baseline as a transformers LlavaForConditionalGeneration folder.

Only the baseline has a LLaVA counterpart: one CLIP view per image (``vision_encoder clip``), the
Linear-GELU-Linear projector (``mlp2x_gelu``) and a Llama-family LLM. Weights are renamed to the module
names of transformers' Llava and loaded strictly into a Llava model (so transformers checks every name and
shape), then written under the llava-hf hub layout (``vision_tower.vision_model.*``,
``language_model.model.*``): the layout 4.4x-4.5x read natively, vLLM reads, and 5.x converts on load.
The config carries the 4.x keys too (``rope_theta``). LLaVA looks image positions up in the embedding
table, so the tokenizer has an ``<image>`` token; when its id is past the embeddings, one row (the mean of
the others, as transformers' resize does) is appended to the input and output embeddings, and generation
suppresses that id. The processor files (``preprocessor_config.json``, ``processor_config.json``) and the
chat template (``chat_template.jinja``, ``chat_template.json``, and in the tokenizer config) are written
for both generations of transformers.
"""
from __future__ import annotations

import copy
import json
import logging
from pathlib import Path

import torch
from accelerate import init_empty_weights
from huggingface_hub import split_torch_state_dict_into_shards
from safetensors.torch import save_file
from transformers import (
    LlavaConfig,
    LlavaForConditionalGeneration,
    LlavaImageProcessorPil,
    LlavaProcessor,
    PreTrainedTokenizerBase,
)
from transformers.image_utils import PILImageResampling

from ..model import FilaConfig, FilaForConditionalGeneration
from ..processing.processor import FilaProcessor
from ..processing.tokenization import with_image_token
from ..utils.files import write_json_atomic
from .artifacts import generation_config
from .errors import ExportError
from .rebuild import load_strictly
from .shards import SINGLE_SHARD, write_index

logger = logging.getLogger(__name__)

LLAVA_FOLDER = "llava"
IMAGE_TOKEN = "<image>"
LLAMA_FAMILY = ("llama", "mistral")  # LLMs whose Llava text model is the same decoder under the same names
# Our parameter-name prefix -> Llava's (transformers 5.x LlavaForConditionalGeneration module names).
RENAMES: tuple[tuple[str, str], ...] = (
    ("vision_tower.clip.", "model.vision_tower."),
    ("connector.projector.0.", "model.multi_modal_projector.linear_1."),
    ("connector.projector.2.", "model.multi_modal_projector.linear_2."),
    ("language_model.model.", "model.language_model."),
    ("language_model.lm_head.", "lm_head."),
)
# transformers 5.x module names -> the llava-hf hub layout (what 4.x modules are named, and what 5.x converts).
HUB_LAYOUT: tuple[tuple[str, str], ...] = (
    ("model.vision_tower.", "vision_tower.vision_model."),
    ("model.multi_modal_projector.", "multi_modal_projector."),
    ("model.language_model.", "language_model.model."),
    ("lm_head.", "language_model.lm_head."),
)


def check_llava_compatible(config: FilaConfig, folder: Path) -> None:
    """Raise ExportError with every reason ``config`` has no LlavaForConditionalGeneration equivalent."""
    reasons = []
    if config.vision_encoder != "clip":
        reasons.append(f"vision_encoder is {config.vision_encoder!r}: LLaVA encodes one CLIP view per image, "
                       f"it has no {config.vision_encoder} encoder (only 'clip' converts)")
    if config.connector_type != "mlp2x_gelu":
        reasons.append(f"connector_type is {config.connector_type!r}: LLaVA's projector is Linear-GELU-Linear "
                       f"(only 'mlp2x_gelu' converts)")
    if config.vision_config.model_type != "clip_vision_model":
        reasons.append(f"the vision tower is {config.vision_config.model_type!r}, not a CLIP vision model")
    if config.text_config.model_type not in LLAMA_FAMILY:
        reasons.append(f"the LLM is {config.text_config.model_type!r}: only Llama-family LLMs {LLAMA_FAMILY} "
                       f"are converted")
    if not isinstance(config.vision_feature_layer, int):
        reasons.append(f"vision_feature_layer {config.vision_feature_layer!r} is not a single layer")
    if reasons:
        raise ExportError(f"--format llava cannot convert {folder}: " + "; ".join(reasons)
                          + ". Export with --format fila instead.")


def renamed(name: str, table: tuple[tuple[str, str], ...], where: str) -> str:
    """``name`` with the first matching prefix of ``table`` replaced."""
    for old, new in table:
        if name.startswith(old):
            return new + name[len(old):]
    raise ExportError(f"parameter {name!r} has no counterpart in {where}")


def llava_name(name: str) -> str:
    return renamed(name, RENAMES, "LlavaForConditionalGeneration")


def tokenizer_with_image_token(tokenizer: PreTrainedTokenizerBase) -> tuple[PreTrainedTokenizerBase, int]:
    """A copy of ``tokenizer`` that has ``<image>`` as a special token, and its id."""
    tokenizer = with_image_token(copy.deepcopy(tokenizer))
    image_token_id = tokenizer.convert_tokens_to_ids(IMAGE_TOKEN)
    encoded = tokenizer.encode(IMAGE_TOKEN, add_special_tokens=False)
    if encoded != [image_token_id]:
        raise ExportError(f"the tokenizer encodes {IMAGE_TOKEN!r} as {encoded}, not as its own id {image_token_id}")
    return tokenizer, image_token_id


def _with_mean_row(weight: torch.Tensor, rows: int) -> torch.Tensor:
    extra = rows - weight.shape[0]
    if extra <= 0:
        return weight
    return torch.cat([weight, weight.mean(dim=0, keepdim=True).expand(extra, -1)])


def llava_state_dict(model: FilaForConditionalGeneration, vocab_rows: int) -> dict[str, torch.Tensor]:
    """Our weights under Llava's names, embeddings (and an untied lm_head) grown to ``vocab_rows``."""
    state_dict = {llava_name(name): tensor for name, tensor in model.state_dict().items()}
    for name in ("model.language_model.embed_tokens.weight", "lm_head.weight"):
        if name in state_dict:
            state_dict[name] = _with_mean_row(state_dict[name], vocab_rows)
    return state_dict


def llava_config(config: FilaConfig, image_token_id: int, vocab_rows: int) -> LlavaConfig:
    text_config = copy.deepcopy(config.text_config)
    text_config.vocab_size = vocab_rows
    vision = config.vision_config
    return LlavaConfig(vision_config=copy.deepcopy(vision), text_config=text_config,
                       image_token_index=image_token_id,
                       image_seq_length=(vision.image_size // vision.patch_size) ** 2,
                       # Our features: patch tokens (CLS dropped = "default") of hidden state vision_feature_layer.
                       vision_feature_layer=config.vision_feature_layer, vision_feature_select_strategy="default",
                       projector_hidden_act="gelu", multimodal_projector_bias=True,
                       tie_word_embeddings=config.tie_word_embeddings)


def llava_processor(model: FilaForConditionalGeneration, tokenizer: PreTrainedTokenizerBase,
                    chat_template: str) -> LlavaProcessor:
    """LLaVA-1.5 preprocessing as ours: pad to a square with the mean colour, bicubic resize, CLIP normalise;
    ``<image>`` expands to one token per patch (CLS dropped)."""
    ours = model.image_processor()
    size = ours.image_size
    image_processor = LlavaImageProcessorPil(
        do_pad=True, do_resize=True, size={"shortest_edge": size}, resample=PILImageResampling.BICUBIC,
        do_center_crop=True, crop_size={"height": size, "width": size}, do_rescale=True, rescale_factor=1 / 255,
        do_normalize=True, image_mean=list(ours.mean), image_std=list(ours.std), do_convert_rgb=True)
    return LlavaProcessor(image_processor=image_processor, tokenizer=tokenizer, patch_size=ours.patch_size,
                          vision_feature_select_strategy="default", image_token=IMAGE_TOKEN,
                          num_additional_image_tokens=1, chat_template=chat_template)


def save_hub_layout(llava: LlavaForConditionalGeneration, folder: Path, max_shard_size: str) -> None:
    """The weights under llava-hf hub names, as safetensors shards plus an index (always: one layout)."""
    state_dict = {renamed(name, HUB_LAYOUT, "the llava-hf hub layout"): tensor.contiguous() for name, tensor in llava.state_dict().items()}
    if llava.config.tie_word_embeddings:
        state_dict.pop("language_model.lm_head.weight", None)
    split = split_torch_state_dict_into_shards(state_dict, max_shard_size=max_shard_size,
                                               filename_pattern="model{suffix}.safetensors")
    names = {filename: filename if split.is_sharded else SINGLE_SHARD for filename in split.filename_to_tensors}
    for filename, tensors in split.filename_to_tensors.items():
        save_file({name: state_dict[name] for name in tensors}, folder / names[filename], metadata={"format": "pt"})
    write_index(folder, {name: names[filename] for name, filename in split.tensor_to_filename.items()})


def hub_config(llava: LlavaForConditionalGeneration) -> dict:
    """config.json for 4.x and 5.x: 5.x keys plus the 4.x ones it replaced (rope_theta, torch_dtype)."""
    config = llava.config.to_dict()
    config["architectures"] = ["LlavaForConditionalGeneration"]
    config["torch_dtype"] = str(llava.dtype).removeprefix("torch.")
    text = config["text_config"]
    rope = dict(text.get("rope_parameters") or {})
    if "rope_theta" in rope:
        text["rope_theta"] = rope.pop("rope_theta")
    if rope.get("rope_type", "default") != "default":
        text["rope_scaling"] = rope
    return config


def split_processor_config(folder: Path) -> None:
    """transformers 5 nests the image processor in processor_config.json, which 4.x passes on as a second
    ``image_processor`` argument (a TypeError). Written the 4.x way instead: preprocessor_config.json as the
    padding LlavaImageProcessor (4.49+ and 5.x; older 4.x have no image processor that pads like LLaVA)."""
    config = json.loads((folder / "processor_config.json").read_text())
    image_processor = config.pop("image_processor")
    write_json_atomic(folder / "processor_config.json", config)
    write_json_atomic(folder / "preprocessor_config.json",
                      {**image_processor, "image_processor_type": "LlavaImageProcessor", "processor_class": "LlavaProcessor"})


def with_4x_tokenizer_config(path: Path, chat_template: str) -> None:
    """tokenizer_config.json in the names 4.x reads and 5.x still maps back: transformers 5 calls a tokenizer
    read from tokenizer.json "TokenizersBackend" (4.x: PreTrainedTokenizerFast), lists extra special
    tokens under "extra_special_tokens" (4.x: "additional_special_tokens"; 4.x reads that key as a dict),
    and keeps the chat template only in chat_template.jinja (4.x before 4.52 and TGI read it here)."""
    config = json.loads(path.read_text())
    config["chat_template"] = chat_template
    if config.get("tokenizer_class") == "TokenizersBackend":
        config["tokenizer_class"] = "PreTrainedTokenizerFast"
    if isinstance(config.get("extra_special_tokens"), list):
        config["additional_special_tokens"] = config.pop("extra_special_tokens")
    write_json_atomic(path, config)


def write_llava(model: FilaForConditionalGeneration, processor: FilaProcessor, folder: Path,
                dtype: torch.dtype, max_shard_size: str) -> None:
    """``folder``: a LlavaForConditionalGeneration with ``model``'s weights, its processor and tokenizer."""
    config = model.config
    llava_tokenizer, image_token_id = tokenizer_with_image_token(processor.tokenizer)
    # The folder is for serving: transformers pads batched prompts on the tokenizer's side, and generation goes on
    # from the last position, which right padding (training's) fills with padding for every shorter prompt.
    llava_tokenizer.padding_side = "left"
    vocab_rows = max(config.text_config.vocab_size, image_token_id + 1)
    with init_empty_weights(include_buffers=False):
        llava = LlavaForConditionalGeneration(llava_config(config, image_token_id, vocab_rows))
    load_strictly(llava, llava_state_dict(model, vocab_rows), "the renamed fila weights")
    llava.to(dtype)
    folder.mkdir(parents=True, exist_ok=True)
    save_hub_layout(llava, folder, max_shard_size)
    write_json_atomic(folder / "config.json", hub_config(llava))
    # The <image> id must never be generated: it only marks where image features go.
    generation_config(processor, suppress_tokens=[image_token_id]).save_pretrained(folder)
    llava_processor(model, llava_tokenizer, processor.chat_template).save_pretrained(folder)
    split_processor_config(folder)
    write_json_atomic(folder / "chat_template.json", {"chat_template": processor.chat_template})  # 4.4x name
    with_4x_tokenizer_config(folder / "tokenizer_config.json", processor.chat_template)
    logger.info("wrote the LlavaForConditionalGeneration copy to %s (<image> = id %d, vocabulary %d)",
                folder, image_token_id, vocab_rows)

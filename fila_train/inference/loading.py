"""Load a saved model folder for inference: the model, its tokenizer, image processor and template."""
from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from transformers import GenerationConfig, PreTrainedTokenizerBase

from ..processing.chat_templates import TEMPLATES, get_template
from ..processing.processor import FilaProcessor, load_processor
from ..processing.tokenization import ConversationTokenizer
from ..model import FilaConfig, FilaForConditionalGeneration
from ..model.builder import build_model, is_fila_checkpoint, load_saved_model, load_tokenizer
from ..model.llava_layout import folder_layout, local_file, release_config, release_projector_type
from ..utils.checkpoint_folders import checkpoint_subfolders, incomplete_checkpoint
from ..utils.dtypes import DTYPES
from ..utils.errors import CheckpointError, ConfigError, FilaError

logger = logging.getLogger(__name__)

LLAVA_MAX_LENGTH = 2048  # LLaVA-1.5's model_max_length, for a release folder's tokenizer


class ModelLoadError(CheckpointError):
    """A model folder that cannot be loaded for inference; the message names the folder."""


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def resolve_device(device: str | torch.device | None) -> torch.device:
    """``--device`` checked before the model loads: a name torch knows, and a GPU that is there."""
    if device is None:
        return default_device()
    try:
        resolved = torch.device(device)
    except RuntimeError as error:  # e.g. "gpu"
        raise ConfigError(f"--device {device}: {error}") from None
    if resolved.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if (resolved.index or 0) >= count:
            raise ConfigError(f"--device {device}: torch sees {count} CUDA GPU(s) here; use --device cpu, "
                              f"or leave it unset for the first GPU if there is one")
    return resolved


def resolve_dtype(name: str, device: torch.device) -> torch.dtype:
    """``auto``: bfloat16 on a GPU that has it, float32 otherwise; else one of DTYPES by name."""
    if name == "auto":
        bf16 = device.type == "cuda" and torch.cuda.is_bf16_supported()
        return torch.bfloat16 if bf16 else torch.float32
    if name not in DTYPES:
        raise ConfigError(f"unknown dtype {name!r}; choose auto or one of: {', '.join(DTYPES)}")
    return DTYPES[name]


@dataclass
class InferenceModel:
    """A model in eval mode with the processor that prompts it exactly as it was trained."""

    model: FilaForConditionalGeneration
    fila_processor: FilaProcessor
    path: str

    @property
    def device(self) -> torch.device:
        return self.model.device

    @property
    def tokenizer(self) -> PreTrainedTokenizerBase:
        return self.fila_processor.tokenizer

    @property
    def processor(self) -> Any:
        """The vision encoder's image processor (views, token counts, collation)."""
        return self.fila_processor.image_processor.encoder_processor

    @property
    def prompter(self) -> ConversationTokenizer:
        """The model's conversation template on its tokenizer."""
        return self.fila_processor.conversations

    @property
    def stop_token_ids(self) -> list[int]:
        """The template's end-of-turn token (what training taught the model to emit), and EOS."""
        return self.fila_processor.stop_token_ids

    @property
    def pad_token_id(self) -> int:
        # Padding is masked out, so any id serves; a training save always has a pad token.
        pad = self.tokenizer.pad_token_id
        return pad if pad is not None else self.stop_token_ids[0]


def release_template(path: str) -> str:
    """A LLaVA release's conversation template: ours when its chat template is one of ours (a `fila-train export
    --format llava` folder carries the one its model trained with), else LLaVA-1.5's own (vicuna_v1)."""
    # The first of these files that holds a chat template is the one transformers uses.
    for name in ("chat_template.jinja", "chat_template.json", "tokenizer_config.json"):
        file = local_file(path, name)
        try:
            text = None if file is None else (
                file.read_text() if name.endswith(".jinja") else json.loads(file.read_text()).get("chat_template"))
        except (OSError, ValueError, AttributeError):  # unreadable, or not a JSON object
            continue
        if isinstance(text, str):
            return next((template for template in TEMPLATES.names() if get_template(template).jinja == text),
                        FilaConfig.conversation_template)
    return FilaConfig.conversation_template


def load_model(path: str | Path, dtype: str = "auto", device: str | torch.device | None = None) -> InferenceModel:
    """One ``from_pretrained`` of a saved model folder (``save_pretrained`` + its tokenizer)."""
    path = str(path)
    try:
        fila = is_fila_checkpoint(path)
    except ValueError as error:  # config.json is not JSON
        raise ModelLoadError(f"{path}/config.json: {error}") from None
    release = None if fila else folder_layout(path)
    if not fila and release is None:
        checkpoints = checkpoint_subfolders(Path(path))
        hint = (f"; it holds {', '.join(checkpoints)} (its run stopped before the final save): pass one of those"
                if checkpoints else "")
        raise ModelLoadError(f"{path} is not a saved fila model folder (no config.json with model_type 'fila') "
                             f"nor a LLaVA release; give the output folder of a training run or of `fila-train export`"
                             f"{hint}")
    incomplete = incomplete_checkpoint(Path(path), training_state=False)
    if incomplete:
        raise ModelLoadError(incomplete)
    device = resolve_device(device)
    try:
        if release is not None:  # a llava-hf or original LLaVA-1.5 folder, read as LLaVA-1.5 (clip + projector)
            model = build_model(path, dtype=resolve_dtype(dtype, device),
                                connector_type=release_projector_type(release_config(path)),
                                conversation_template=release_template(path))
            processor = FilaProcessor.for_model(load_tokenizer(path, model, LLAVA_MAX_LENGTH), model.config)
        else:
            model = load_saved_model(path, dtype=resolve_dtype(dtype, device))
            processor = load_processor(path, model.config)
    except FilaError as error:  # most name the folder already (others, e.g. a QLoRA config's, do not)
        if str(error).startswith(path):
            raise
        raise ModelLoadError(f"{path}: {error}") from None
    except SafetensorError as error:  # a weights file cut short or damaged
        raise ModelLoadError(f"{path}: unreadable weights file ({error})") from None
    except OSError as error:  # transformers' way of saying a weights or tokenizer file is missing
        raise ModelLoadError(f"{path}: incomplete model folder: {error}") from None
    except ValueError as error:  # a config the model refuses to build from
        raise ModelLoadError(f"{path}: {error}") from None
    model.to(device).eval()
    # generate() fills every option we leave unset from the folder's generation_config.json (e.g. an
    # LLM's sampling or beam defaults); GenerationOptions alone decides, so that file is not used.
    model.generation_config = GenerationConfig()
    template = processor.conversations.template
    if not template.reads_human_text:
        logger.warning("%s was trained with the %r template (stage 1's captions), which reads no prompt text: "
                       "every prompt gets a caption of its image, whatever it asks; a stage-2 model answers "
                       "questions", path, template.name)
    return InferenceModel(model, processor, path)


@dataclass
class ModelOptions:
    """The model flags shared by `fila-train generate` and `fila-train eval`."""

    model: str = field(metadata={"help": "a saved model folder (training output or `fila-train export`)"})
    dtype: str = field(default="auto", metadata={
        "help": "auto: bfloat16 on a GPU that has it, else float32", "choices": ["auto", *DTYPES]})
    device: str | None = field(default=None, metadata={"help": "e.g. cuda:0 or cpu; unset: cuda if available"})

    def load(self) -> InferenceModel:
        return load_model(self.model, self.dtype, self.device)

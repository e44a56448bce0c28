"""FilaProcessor: tokenizer + conversation template + image-token expansion + image processor, in one
transformers ProcessorMixin (the LlavaProcessor convention).

Training, inference, evaluation, export and bench take their prompt ids from it, and it is saved with
every checkpoint and export (``processor_config.json``, ``preprocessor_config.json``, the tokenizer and
``chat_template.jinja``), so ``AutoProcessor.from_pretrained(folder)`` after ``import fila_train`` gives
back exactly the preprocessing the model was trained with.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch
from PIL import Image
from transformers import BatchFeature, PreTrainedTokenizerBase
from transformers.processing_utils import ProcessorMixin

from ..model.builder import pretrained_tokenizer, refuse_tokenizer_code
from ..utils.errors import ConfigError
from .chat_templates import IMAGE_PLACEHOLDER, get_template
from .image_processing import FilaImageProcessor
from .saved_tokenizer import keep_tokenizer_settings
from .tokenization import ConversationTokenizer, with_image_token

PROCESSOR_FILE = "processor_config.json"
# save_pretrained(push_to_hub=True)'s options that are PushToHubMixin.push_to_hub's.
HUB_OPTIONS = ("repo_id", "commit_message", "commit_description", "private", "token", "revision", "create_pr", "tags")
logger = logging.getLogger(__name__)


class FilaProcessor(ProcessorMixin):
    def __init__(self, image_processor: FilaImageProcessor | None = None,
                 tokenizer: PreTrainedTokenizerBase | None = None, chat_template: str | None = None,
                 conversation_template: str = "vicuna_v1", image_token_index: int = -200, **kwargs):
        self.conversation_template = conversation_template
        self.image_token_index = image_token_index
        self.image_token = IMAGE_PLACEHOLDER
        template = get_template(conversation_template)  # an unknown name fails here, listing the known ones
        if chat_template is not None and chat_template != template.jinja:
            logger.warning("the processor's chat template differs from template %r, which training and "
                           "`fila-train generate` use: apply_chat_template will render other prompts",
                           conversation_template)
        super().__init__(image_processor, with_image_token(tokenizer), chat_template=chat_template or template.jinja)
        self._conversations = ConversationTokenizer(self.tokenizer, template, image_token_index)

    @classmethod
    def for_model(cls, tokenizer: PreTrainedTokenizerBase, config) -> FilaProcessor:
        """The processor of a model (FilaConfig) with its tokenizer: the one place the parts are assembled."""
        return cls(FilaImageProcessor.for_model_config(config), tokenizer,
                   conversation_template=config.conversation_template, image_token_index=config.image_token_id)

    def save_pretrained(self, save_directory, push_to_hub: bool = False, **kwargs):
        # transformers would push from inside its save, before the settings are written back: push_to_hub saves
        # again through this method instead, settings included.
        hub = {name: kwargs.pop(name) for name in HUB_OPTIONS if name in kwargs} if push_to_hub else {}
        saved = super().save_pretrained(save_directory, **kwargs)
        keep_tokenizer_settings(self.tokenizer, save_directory)
        if push_to_hub:
            self.push_to_hub(hub.pop("repo_id", Path(save_directory).name), **hub)
        return saved

    @property
    def conversations(self) -> ConversationTokenizer:
        """Records' ``conversations`` -> ids and labels, rendered by this processor's chat template."""
        return self._conversations

    @property
    def stop_token_ids(self) -> list[int]:
        return self._conversations.stop_token_ids()

    def __call__(self, text: str | list[str] | None = None, images: Any = None, return_tensors: str | None = None,
                 **kwargs) -> BatchFeature:
        """Prompts with ``<image>`` placeholders (one per image, in order) -> ``input_ids`` with each
        placeholder expanded to the image's token count, ``attention_mask`` and the collated ``images``.
        Several prompts are left-padded (where generation continues)."""
        check_call_options(kwargs)
        texts = [text] if isinstance(text, str) else list(text or [])
        flat = flatten_images(images)
        processed = self.image_processor(flat) if flat else []
        encoder = self.image_processor.encoder_processor
        counts = [encoder.num_image_tokens(item) for item in processed]
        rows, image = [], 0
        for prompt in texts:
            ids = self.tokenizer(prompt, add_special_tokens=False)["input_ids"]
            used = ids.count(self._conversations.placeholder_id)
            if image + used > len(counts):
                raise ConfigError(f"the prompt(s) hold more {IMAGE_PLACEHOLDER!r} placeholders than the "
                                  f"{len(counts)} image(s) given")
            rows.append(self._conversations.expand_images(ids, counts[image:image + used]).input_ids)
            image += used
        if image != len(counts):
            raise ConfigError(f"{len(counts)} image(s) given but the prompt(s) hold {image} {IMAGE_PLACEHOLDER!r} "
                              f"placeholder(s)")
        data: dict[str, Any] = {"input_ids": rows, "attention_mask": [[1] * len(row) for row in rows]}
        if return_tensors == "pt":
            data = left_padded(rows, self.tokenizer.pad_token_id or 0)
        if processed:
            data["images"] = encoder.collate(processed)
        return FilaBatch(data=data)


# Tokenizer options: the values __call__ accepts (what it does anyway), and why it refuses the others, which it
# would otherwise drop unsaid.
CALL_OPTIONS = {
    "truncation": ((None, False, "do_not_truncate"),
                   "prompts are never cut (a cut could split an image's tokens or lose the question)"),
    "max_length": ((None,), "prompts are never cut or padded to a length"),
    "pad_to_multiple_of": ((None,), "prompts are padded to the longest only"),
    "padding_side": ((None, "left"), "several prompts are left-padded, where generation continues"),
    "padding": ((None, False, True, "longest", "do_not_pad"), "prompts are padded to the longest only"),
}


def check_call_options(kwargs: dict) -> None:
    for name, (accepted, why) in CALL_OPTIONS.items():
        value = getattr(kwargs.get(name), "value", kwargs.get(name))  # a TruncationStrategy / PaddingStrategy too
        if value not in accepted:
            raise ConfigError(f"FilaProcessor does not apply {name}={value!r}: {why}")


class FilaBatch(BatchFeature):
    """Model inputs; ``.to(device or dtype)`` also reaches the tensors inside ``images`` (a dict, which
    BatchFeature.to leaves alone). A dtype applies to floating-point tensors only, as in BatchFeature."""

    def to(self, *args, **kwargs) -> FilaBatch:
        images = self.data.pop("images", None)
        super().to(*args, **kwargs)
        if images is not None:
            self.data["images"] = {key: moved(value, *args, **kwargs) for key, value in images.items()}
        return self


def moved(value: Any, *args, **kwargs) -> Any:
    if not isinstance(value, torch.Tensor):
        return value
    if value.is_floating_point():
        return value.to(*args, **kwargs)
    device = next((arg for arg in (*args, kwargs.get("device")) if isinstance(arg, (str, torch.device))), None)
    return value if device is None else value.to(device)


def flatten_images(images: Any) -> list[Image.Image]:
    if images is None:
        return []
    if isinstance(images, Image.Image):
        return [images]
    return [image for item in images for image in flatten_images(item)]


def left_padded(rows: list[list[int]], pad_id: int) -> dict[str, torch.Tensor]:
    length = max(len(row) for row in rows)
    input_ids = torch.full((len(rows), length), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((len(rows), length), dtype=torch.long)
    for index, row in enumerate(rows):
        input_ids[index, length - len(row):] = torch.tensor(row, dtype=torch.long)
        attention_mask[index, length - len(row):] = 1
    return {"input_ids": input_ids, "attention_mask": attention_mask}


def load_processor(folder: str | Path, config, **tokenizer_kwargs) -> FilaProcessor:
    """The processor saved in ``folder``; for folders saved before processors were (a tokenizer only),
    one built from that tokenizer and the model config."""
    if (Path(folder) / PROCESSOR_FILE).is_file():
        try:
            return FilaProcessor.from_pretrained(str(folder), trust_remote_code=False, **tokenizer_kwargs)
        except ValueError:
            refuse_tokenizer_code(str(folder))
            raise
    # Given the config, AutoTokenizer does not re-read config.json as a generic (unknown-type) config.
    return FilaProcessor.for_model(pretrained_tokenizer(str(folder), config=config, **tokenizer_kwargs), config)

"""Prompts in the model's training format, and batched generation with left padding."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from PIL import Image
from transformers import GenerationConfig
from transformers.generation.streamers import BaseStreamer

from ..processing.conversations import IMAGE_PLACEHOLDER
from ..processing.processor import left_padded
from ..utils.errors import ConfigError
from .loading import InferenceModel


class PromptError(ConfigError):
    """A prompt that does not fit its images."""


@dataclass
class Prompt:
    input_ids: list[int]  # image placeholders already expanded to image-context ids
    image: dict[str, Any] | None  # the processed image, or None for a text-only prompt


def build_prompt(loaded: InferenceModel, question: str, image: Image.Image | None) -> Prompt:
    """One human turn plus the assistant header, rendered by the model's chat template and tokenized as one
    string, as training was: ``processor.apply_chat_template(..., add_generation_prompt=True)`` gives these ids."""
    check_placeholders(question, image is not None)
    processed = None if image is None else loaded.processor(image)
    image_tokens = None if processed is None else loaded.processor.num_image_tokens(processed)
    return Prompt(prompt_ids(loaded, question, image_tokens), processed)


def check_placeholders(question: str, has_image: bool) -> None:
    placeholders = question.count(IMAGE_PLACEHOLDER)
    if placeholders > has_image:
        raise PromptError(f"the prompt contains {placeholders} {IMAGE_PLACEHOLDER!r} placeholder(s) but "
                          f"{int(has_image)} image was given")


def prompt_ids(loaded: InferenceModel, question: str, image_tokens: int | None) -> list[int]:
    """build_prompt's ids for an image of ``image_tokens`` tokens (None: no image): what a check of many
    prompts needs, from the images' headers alone."""
    check_placeholders(question, image_tokens is not None)
    if image_tokens is not None and IMAGE_PLACEHOLDER not in question:
        question = f"{IMAGE_PLACEHOLDER}\n{question}"  # where LLaVA-style training data puts it
    counts = [] if image_tokens is None else [image_tokens]
    return loaded.prompter.encode([{"from": "human", "value": question}], counts, add_generation_prompt=True).input_ids


@dataclass
class GenerationOptions:
    max_new_tokens: int = field(default=128, metadata={"help": "most tokens to generate per answer"})
    do_sample: bool = field(default=False, metadata={"help": "sample instead of greedy decoding"})
    temperature: float | None = field(default=None, metadata={"help": "sampling temperature (with --do_sample; "
                                                                       "default 1.0)"})
    top_p: float | None = field(default=None, metadata={"help": "nucleus sampling mass (with --do_sample)"})
    top_k: int | None = field(default=None, metadata={"help": "sample among the k likeliest (with --do_sample)"})

    def __post_init__(self) -> None:
        """Checked when the flags are parsed: transformers would raise only after the model loads, or ignore them."""
        if self.max_new_tokens < 1:
            raise ConfigError(f"--max_new_tokens must be positive, got {self.max_new_tokens}")
        sampling = {"temperature": self.temperature, "top_p": self.top_p, "top_k": self.top_k}
        # --temperature 0 is how LLaVA's eval scripts ask for greedy decoding: it is what runs without --do_sample.
        given = [f"--{name} {value}" for name, value in sampling.items()
                 if value is not None and not (name == "temperature" and value == 0 and not self.do_sample)]
        if given and not self.do_sample:  # LLaVA's scripts sample whenever --temperature > 0; greedy here
            raise ConfigError(f"{', '.join(given)}: --temperature, --top_p and --top_k act only with --do_sample "
                              f"(without it decoding is greedy and they would be ignored); add --do_sample or "
                              f"leave them out")
        if self.do_sample and self.temperature is not None and not self.temperature > 0:
            raise ConfigError(f"--temperature must be positive, got {self.temperature} (for greedy decoding, leave "
                              f"out --do_sample)")
        if self.top_p is not None and not 0 <= self.top_p <= 1:  # above 1 transformers drops it, silently
            raise ConfigError(f"--top_p must be in [0, 1], got {self.top_p}")
        if self.top_k is not None and self.top_k < 0:
            raise ConfigError(f"--top_k must be 0 (off) or positive, got {self.top_k}")

    def config(self, loaded: InferenceModel) -> GenerationConfig:
        sampling = {"temperature": self.temperature if self.temperature is not None else 1.0,
                    "top_p": self.top_p, "top_k": self.top_k} if self.do_sample else {}
        return GenerationConfig(max_new_tokens=self.max_new_tokens, do_sample=self.do_sample, use_cache=True,
                                eos_token_id=loaded.stop_token_ids, pad_token_id=loaded.pad_token_id,
                                stop_strings=loaded.prompter.stop_strings() or None, **sampling)


def to_device(value: Any, device: torch.device) -> Any:
    if isinstance(value, torch.Tensor):
        return value.to(device)
    if isinstance(value, dict):
        return {key: to_device(item, device) for key, item in value.items()}
    return value


def cut_at_stop(ids: list[int], stop_ids: list[int]) -> list[int]:
    for index, token in enumerate(ids):
        if token in stop_ids:
            return ids[:index]
    return ids


@torch.inference_mode()
def generate_ids(loaded: InferenceModel, prompts: list[Prompt], options: GenerationOptions,
                 streamer: BaseStreamer | None = None) -> list[list[int]]:
    """The new token ids of every prompt (one batch), up to (without) its stop token."""
    padded = left_padded([p.input_ids for p in prompts], loaded.pad_token_id)
    input_ids, attention_mask = padded["input_ids"], padded["attention_mask"]
    processed = [p.image for p in prompts if p.image is not None]
    images = to_device(loaded.processor.collate(processed), loaded.device) if processed else None
    output = loaded.model.generate(input_ids=input_ids.to(loaded.device), attention_mask=attention_mask.to(loaded.device),
                                   images=images, generation_config=options.config(loaded), streamer=streamer,
                                   tokenizer=loaded.tokenizer)  # stop strings are matched through it
    new_tokens = output[:, input_ids.shape[1]:].tolist()
    return [cut_at_stop(ids, loaded.stop_token_ids) for ids in new_tokens]


def generate_answers(loaded: InferenceModel, prompts: list[Prompt], options: GenerationOptions) -> list[str]:
    """Decoded, stripped answers of one batch of prompts."""
    return [loaded.tokenizer.decode(ids, skip_special_tokens=True).strip()
            for ids in generate_ids(loaded, prompts, options)]

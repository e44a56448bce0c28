"""Conversation templates as jinja chat templates: one string renders training and serving prompts.

Each template is the transformers chat-template convention (``messages``, ``add_generation_prompt``,
``bos_token``), saved with every model and export, so ``apply_chat_template`` anywhere renders exactly
the string training tokenized. The assistant's trained text (its answer plus the end-of-turn marker)
sits in ``{% generation %}`` blocks; transformers' renderer reports those as character spans, from
which labels are taken (see tokenization.py).

A message's content is a string (``<image>`` placeholders inline, as in LLaVA records) or a list of
``{"type": "image"}`` / ``{"type": "text", "text": ...}`` parts; an image part renders as ``<image>\\n``,
where LLaVA-format data puts the image. A message's one image is moved to its front (CONTENT_MACRO).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from ..utils.registry import Registry

IMAGE_PLACEHOLDER = "<image>"

# Shared jinja pieces. `content` renders any message's content (string or parts); `system` /
# `loop_messages` split off a
# leading system message (the default system prompt is used when there is none).
# A message's one image goes first, as LLaVA's and LLaVA-NeXT's preprocess_multimodal move it before training
# ("Q\n<image>" -> "<image>\nQ"; LLaVA-665K holds such records) and as every serving path places it; a message
# that starts with its image, or holds several, stays as written.
CONTENT_MACRO = (
    "{%- macro content(value) -%}"
    "{%- if value is string -%}{%- set text = value -%}"
    "{%- else -%}{%- set parts = namespace(text='') -%}{%- for part in value -%}"
    "{%- if part['type'] == 'image' -%}{%- set parts.text = parts.text + '<image>\\n' -%}"
    "{%- elif part['type'] == 'text' -%}{%- set parts.text = parts.text + part['text'] -%}{%- endif -%}"
    "{%- endfor -%}{%- set text = parts.text -%}{%- endif -%}"
    "{%- if text.count('<image>') == 1 and not text.startswith('<image>') -%}"
    "{{- ('<image>\\n' + text.replace('<image>', '').strip()).strip() -}}"
    "{%- else -%}{{- text -}}{%- endif -%}"
    "{%- endmacro -%}"
)


def system_split(default: str) -> str:
    literal = default.replace("\\", "\\\\").replace("'", "\\'")
    return ("{%- if messages and messages[0]['role'] == 'system' -%}"
            "{%- set system = content(messages[0]['content']) -%}{%- set loop_messages = messages[1:] -%}"
            f"{{%- else -%}}{{%- set system = '{literal}' -%}}{{%- set loop_messages = messages -%}}"
            "{%- endif -%}")


@dataclass(frozen=True)
class RenderedConversation:
    text: str
    trained_spans: list[tuple[int, int]]  # [start, end) of each assistant turn's trained text, in order


class ConversationTemplate:
    """A named chat template and what the tokenizer must provide for it."""

    name: ClassVar[str]
    jinja: ClassVar[str]
    default_system: ClassVar[str] = ""
    end_of_turn: ClassVar[str]  # what closes an assistant turn (trained; generation stops on it)
    control_tokens: ClassVar[tuple[str, ...]] = ()  # must each be one token of the tokenizer
    reads_human_text: ClassVar[bool] = True  # False: a prompt's text is dropped, only its images stay

    def render(self, messages: list[dict], add_generation_prompt: bool = False,
               bos_token: str | None = None) -> RenderedConversation:
        """The prompt string and the character spans of the trained (assistant) text."""
        # Imported here: the preflight reads the template names and must not pay for transformers.
        from transformers.utils.chat_template_utils import render_jinja_template

        rendered, spans = render_jinja_template(
            conversations=[messages], chat_template=self.jinja, return_assistant_tokens_mask=True,
            add_generation_prompt=add_generation_prompt, bos_token=bos_token or "")
        return RenderedConversation(rendered[0], [tuple(span) for span in spans[0]])


TEMPLATES: Registry[type[ConversationTemplate]] = Registry("conversation template")


@TEMPLATES.register("plain")
class PlainTemplate(ConversationTemplate):
    """Stage-1 alignment exactly as LLaVA's preprocess_plain: BOS, the image, the caption, "\\n".

    The human text is dropped (only its images stay); the caption directly follows the image."""

    name = "plain"
    end_of_turn = "\n"
    reads_human_text = False
    jinja = (
        CONTENT_MACRO +
        "{%- if bos_token -%}{{- bos_token -}}{%- endif -%}"
        "{%- for message in messages -%}"
        "{%- if message['role'] == 'user' -%}"
        "{%- if message['content'] is string -%}{{- '<image>' * message['content'].count('<image>') -}}"
        "{%- else -%}{{- '<image>' * (message['content'] | selectattr('type', 'equalto', 'image') | list | length) -}}"
        "{%- endif -%}"
        "{%- elif message['role'] == 'assistant' -%}"
        "{%- generation -%}{{- content(message['content']) + '\\n' -}}{%- endgeneration -%}"
        "{%- endif -%}"
        "{%- endfor -%}"
    )


def vicuna_jinja(default_system: str) -> str:
    """"<s>SYSTEM USER: q ASSISTANT: a</s>USER: q2 ASSISTANT: a2</s>" (LLaVA's SeparatorStyle.TWO)."""
    return (
        CONTENT_MACRO + system_split(default_system) +
        "{{- '<s>' + system + ' ' -}}"
        "{%- for message in loop_messages -%}"
        "{%- if message['role'] == 'user' -%}{{- 'USER: ' + content(message['content']) + ' ' -}}"
        "{%- elif message['role'] == 'assistant' -%}{{- 'ASSISTANT:' -}}"
        "{%- generation -%}{{- ' ' + content(message['content']) + '</s>' -}}{%- endgeneration -%}"
        "{%- endif -%}"
        "{%- endfor -%}"
        "{%- if add_generation_prompt -%}{{- 'ASSISTANT:' -}}{%- endif -%}"
    )


@TEMPLATES.register("vicuna_v1")
class VicunaTemplate(ConversationTemplate):
    """LLaVA's conv_vicuna_v1 (its --version v1, LLaVA-1.5's): a curious "user"."""

    name = "vicuna_v1"
    default_system = ("A chat between a curious user and an artificial intelligence assistant. "
                      "The assistant gives helpful, detailed, and polite answers to the user's questions.")
    end_of_turn = "</s>"
    control_tokens = ("<s>", "</s>")
    jinja = vicuna_jinja(default_system)


@TEMPLATES.register("llava_v1")
class LlavaV1Template(VicunaTemplate):
    """LLaVA's conv_llava_v1 (its --version llava_v1): vicuna_v1's format, a curious "human" in the system prompt."""

    name = "llava_v1"
    default_system = ("A chat between a curious human and an artificial intelligence assistant. "
                      "The assistant gives helpful, detailed, and polite answers to the human's questions.")
    jinja = vicuna_jinja(default_system)


def llama3_jinja(default_system: str) -> str:
    """Llama-3-Instruct's format, contents kept as they are (no trim)."""
    return (
        CONTENT_MACRO + system_split(default_system) +
        "{{- '<|begin_of_text|>' -}}"
        "{%- if system -%}{{- '<|start_header_id|>system<|end_header_id|>\\n\\n' + system + '<|eot_id|>' -}}"
        "{%- endif -%}"
        "{%- for message in loop_messages -%}"
        "{{- '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n' -}}"
        "{%- if message['role'] == 'assistant' -%}"
        "{%- generation -%}{{- content(message['content']) + '<|eot_id|>' -}}{%- endgeneration -%}"
        "{%- else -%}{{- content(message['content']) + '<|eot_id|>' -}}{%- endif -%}"
        "{%- endfor -%}"
        "{%- if add_generation_prompt -%}{{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n' -}}{%- endif -%}"
    )


@TEMPLATES.register("llama3")
class Llama3Template(ConversationTemplate):
    """Llama-3-Instruct's format with a short vision-assistant system prompt."""

    name = "llama3"
    default_system = "You are a helpful language and vision assistant."
    end_of_turn = "<|eot_id|>"
    control_tokens = ("<|begin_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>")
    jinja = llama3_jinja(default_system)


@TEMPLATES.register("llava_llama_3")
class LlavaLlama3Template(Llama3Template):
    """LLaVA-NeXT's conv_llava_llama_3 (its --version llava_llama_3): llama3's format, LLaVA-NeXT's system prompt."""

    name = "llava_llama_3"
    default_system = ("You are a helpful language and vision assistant. You are able to understand the visual "
                      "content that the user provides, and assist the user with a variety of tasks using natural "
                      "language.")
    jinja = llama3_jinja(default_system)


@TEMPLATES.register("chatml")
class ChatMLTemplate(ConversationTemplate):
    """Qwen2's ChatML format."""

    name = "chatml"
    default_system = "You are a helpful assistant."
    end_of_turn = "<|im_end|>"
    control_tokens = ("<|im_start|>", "<|im_end|>")
    jinja = (
        CONTENT_MACRO + system_split(default_system) +
        "{%- if system -%}{{- '<|im_start|>system\\n' + system + '<|im_end|>\\n' -}}{%- endif -%}"
        "{%- for message in loop_messages -%}"
        "{{- '<|im_start|>' + message['role'] + '\\n' -}}"
        "{%- if message['role'] == 'assistant' -%}"
        "{%- generation -%}{{- content(message['content']) + '<|im_end|>' -}}{%- endgeneration -%}{{- '\\n' -}}"
        "{%- else -%}{{- content(message['content']) + '<|im_end|>\\n' -}}{%- endif -%}"
        "{%- endfor -%}"
        "{%- if add_generation_prompt -%}{{- '<|im_start|>assistant\\n' -}}{%- endif -%}"
    )


def get_template(name: str) -> ConversationTemplate:
    return TEMPLATES.get(name)()

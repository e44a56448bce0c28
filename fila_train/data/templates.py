"""Conversation templates, tokenized turn by turn.

Each template renders a conversation as a list of segments; every segment is
tokenized on its own and the ids are concatenated. A segment is either
context (label -100) or an assistant answer plus its end-of-turn marker
(trained). Labels therefore never depend on re-splitting a rendered string,
which is what made LLaVA's "tokenization mismatch" silently mask samples.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from ..registry import Registry

HUMAN, ASSISTANT, SYSTEM = "human", "gpt", "system"


@dataclass(frozen=True)
class Segment:
    """A piece of text (``<image>`` placeholders allowed) and whether its tokens are trained."""

    text: str
    trained: bool = False
    special: bool = False  # text is a single special token (e.g. "</s>"), never split


class ConversationTemplate:
    """Base class: subclasses say how a system prompt, user and assistant turns look."""

    name: ClassVar[str]
    default_system: ClassVar[str] = ""
    end_of_turn: ClassVar[str]  # the special token that closes an assistant turn (trained)
    bos: ClassVar[str | None] = None

    def segments(self, turns: list[tuple[str, str]], system: str | None = None,
                 add_generation_prompt: bool = False) -> list[Segment]:
        """Render ``turns`` ((role, text) pairs, alternating human/gpt) as segments.

        With ``add_generation_prompt`` the last turn must be human and the assistant
        header is appended, which is the prompt used at inference.
        """
        system = self.default_system if system is None else system
        out: list[Segment] = []
        if self.bos:
            out.append(Segment(self.bos, special=True))
        out.extend(self.system_segments(system))
        for index, (role, text) in enumerate(turns):
            if role == HUMAN:
                out.extend(self.user_segments(text, first=index == 0))
            else:
                out.extend(self.assistant_segments(text))
        if add_generation_prompt:
            # The same segments as a trained assistant turn starts with, so the prompt's ids are
            # exactly a prefix of the training ids (a header tokenized as one string can differ).
            out.extend(self.assistant_header_segments())
        return [s for s in out if s.text]

    def system_segments(self, system: str) -> list[Segment]:
        raise NotImplementedError

    def user_segments(self, text: str, first: bool) -> list[Segment]:
        raise NotImplementedError

    def assistant_header(self) -> str:
        """The text that opens an assistant turn (what a generation prompt ends with)."""
        raise NotImplementedError

    def assistant_header_segments(self) -> list[Segment]:
        """The assistant header as segments, tokenized identically in training and generation."""
        return [Segment(self.assistant_header())]

    def assistant_segments(self, text: str) -> list[Segment]:
        return self.assistant_header_segments() + [
            Segment(text, trained=True), Segment(self.end_of_turn, trained=True, special=True)] + self.after_turn()

    def after_turn(self) -> list[Segment]:
        return []


TEMPLATES: Registry[type[ConversationTemplate]] = Registry("conversation template")


@TEMPLATES.register("plain")
class PlainTemplate(ConversationTemplate):
    """Stage-1 alignment: image tokens, then the caption; no system prompt, no roles."""

    name = "plain"
    end_of_turn = "</s>"

    def system_segments(self, system: str) -> list[Segment]:
        return []

    def user_segments(self, text: str, first: bool) -> list[Segment]:
        # The caption prompt is only the image: LLaVA's plain template drops the human text.
        return [Segment("<image>" * text.count("<image>"))]

    def assistant_header(self) -> str:
        return ""


@TEMPLATES.register("vicuna_v1")
class VicunaTemplate(ConversationTemplate):
    name = "vicuna_v1"
    default_system = ("A chat between a curious user and an artificial intelligence assistant. "
                      "The assistant gives helpful, detailed, and polite answers to the user's questions.")
    end_of_turn = "</s>"
    bos = "<s>"

    def system_segments(self, system: str) -> list[Segment]:
        return [Segment(system)] if system else []

    def user_segments(self, text: str, first: bool) -> list[Segment]:
        # "SYSTEM USER: q ASSISTANT: a</s>USER: q2 ...": a space only after the system prompt.
        return [Segment((" " if first else "") + "USER: " + text)]

    def assistant_header(self) -> str:
        return " ASSISTANT:"

    def assistant_segments(self, text: str) -> list[Segment]:
        return self.assistant_header_segments() + [Segment(" " + text, trained=True),
                                                   Segment(self.end_of_turn, trained=True, special=True)]


@TEMPLATES.register("llama3")
class Llama3Template(ConversationTemplate):
    name = "llama3"
    default_system = "You are a helpful language and vision assistant."
    end_of_turn = "<|eot_id|>"
    bos = "<|begin_of_text|>"

    @staticmethod
    def _header(role: str) -> list[Segment]:
        return [Segment("<|start_header_id|>", special=True), Segment(role),
                Segment("<|end_header_id|>", special=True), Segment("\n\n")]

    def system_segments(self, system: str) -> list[Segment]:
        if not system:
            return []
        return self._header("system") + [Segment(system), Segment(self.end_of_turn, special=True)]

    def user_segments(self, text: str, first: bool) -> list[Segment]:
        return self._header("user") + [Segment(text), Segment(self.end_of_turn, special=True)]

    def assistant_header(self) -> str:
        return "<|start_header_id|>assistant<|end_header_id|>\n\n"

    def assistant_header_segments(self) -> list[Segment]:
        return self._header("assistant")


@TEMPLATES.register("chatml")
class ChatMLTemplate(ConversationTemplate):
    """Qwen2 chat format."""

    name = "chatml"
    default_system = "You are a helpful assistant."
    end_of_turn = "<|im_end|>"

    @staticmethod
    def _open(role: str) -> list[Segment]:
        return [Segment("<|im_start|>", special=True), Segment(role + "\n")]

    def system_segments(self, system: str) -> list[Segment]:
        if not system:
            return []
        return self._open("system") + [Segment(system), Segment(self.end_of_turn, special=True),
                                       Segment("\n")]

    def user_segments(self, text: str, first: bool) -> list[Segment]:
        return self._open("user") + [Segment(text), Segment(self.end_of_turn, special=True),
                                     Segment("\n")]

    def assistant_header(self) -> str:
        return "<|im_start|>assistant\n"

    def assistant_header_segments(self) -> list[Segment]:
        return self._open("assistant")

    def after_turn(self) -> list[Segment]:
        return [Segment("\n")]


def get_template(name: str) -> ConversationTemplate:
    return TEMPLATES.get(name)()

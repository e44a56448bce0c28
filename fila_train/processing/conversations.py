"""A LLaVA record's ``conversations`` field: validated turns, and chat messages from them."""
from __future__ import annotations

import unicodedata
from dataclasses import dataclass

from ..utils.errors import DataRecordError
from .chat_templates import IMAGE_PLACEHOLDER

HUMAN, ASSISTANT, SYSTEM = "human", "gpt", "system"

IGNORE_INDEX = -100
ROLE_ALIASES = {"human": HUMAN, "user": HUMAN, "gpt": ASSISTANT, "assistant": ASSISTANT,
                "system": SYSTEM}


class ConversationError(DataRecordError):
    """A record whose conversation cannot be trained on (the message says which field)."""


@dataclass
class TokenizedSample:
    input_ids: list[int]
    labels: list[int]

    @property
    def num_trained(self) -> int:
        """Labels that reach the loss: the first position is never predicted (nothing comes before it)."""
        return sum(1 for label in self.labels[1:] if label != IGNORE_INDEX)


def check_text(value: str, index: int) -> None:
    """A turn's value is text a tokenizer can encode: a lone surrogate (half of an emoji cut out of scraped text,
    which JSON's \\ud83d escapes can hold) made the tokenizer raise a TypeError that named no record."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as error:
        raise ConversationError(f"conversations[{index}].value: character {error.start} "
                                f"({value[error.start]!r}) is a lone surrogate, half of a character such as a cut "
                                f"emoji, which no tokenizer encodes") from None


def is_visible(value: str) -> bool:
    """Some character shows: not only whitespace or format characters (zero-width spaces, byte-order marks)."""
    return any(not character.isspace() and unicodedata.category(character) != "Cf" for character in value)


def parse_turns_indexed(conversations: object) -> tuple[str | None, list[tuple[str, str]], list[int]]:
    """``parse_turns`` plus, for every turn, its index in ``conversations`` (for error messages)."""
    if not isinstance(conversations, list) or not conversations:
        raise ConversationError("field 'conversations' must be a non-empty list")
    system = None
    turns: list[tuple[str, str]] = []
    indices: list[int] = []
    for index, turn in enumerate(conversations):
        if not isinstance(turn, dict) or "from" not in turn or "value" not in turn:
            raise ConversationError(f"conversations[{index}] needs 'from' and 'value'")
        role = ROLE_ALIASES.get(str(turn["from"]).lower())
        if role is None:
            raise ConversationError(f"conversations[{index}].from={turn['from']!r} is not a known role")
        value = turn["value"]
        if not isinstance(value, str):
            raise ConversationError(f"conversations[{index}].value must be a string")
        check_text(value, index)
        if role == SYSTEM:
            if index != 0:
                raise ConversationError(f"conversations[{index}]: a system turn may only come first")
            if IMAGE_PLACEHOLDER in value:
                raise ConversationError(f"conversations[{index}]: a system prompt may not contain "
                                        f"{IMAGE_PLACEHOLDER!r}")
            system = value
            continue
        expected = HUMAN if len(turns) % 2 == 0 else ASSISTANT
        if role != expected:
            raise ConversationError(
                f"conversations[{index}]: expected a {expected!r} turn (turns must alternate, "
                f"starting with the human), got {turn['from']!r}")
        if role == ASSISTANT and not is_visible(value):
            raise ConversationError(f"conversations[{index}]: empty assistant answer (nothing but whitespace or "
                                    f"invisible characters)")
        if role == ASSISTANT and IMAGE_PLACEHOLDER in value:
            raise ConversationError(f"conversations[{index}]: an assistant answer contains {IMAGE_PLACEHOLDER!r}")
        turns.append((role, value))
        indices.append(index)
    if not turns:
        raise ConversationError("field 'conversations' holds no human/gpt turn")
    return system, turns, indices


def check_ends_with_answer(turns: list[tuple[str, str]], indices: list[int]) -> None:
    if turns[-1][0] != ASSISTANT:
        raise ConversationError(f"conversations[{indices[-1]}]: the conversation must end with an "
                                f"assistant answer, not a human turn")


def check_image_count(turns: list[tuple[str, str]], indices: list[int], images: int) -> None:
    """As many ``<image>`` placeholders in the turns as images in the record."""
    per_turn = [(index, text.count(IMAGE_PLACEHOLDER)) for index, (_, text) in zip(indices, turns)]
    placeholders = sum(count for _, count in per_turn)
    if placeholders != images:
        where = ", ".join(f"conversations[{index}]: {count}" for index, count in per_turn if count)
        raise ConversationError(
            f"{placeholders} {IMAGE_PLACEHOLDER!r} placeholder(s) in field 'conversations' "
            f"({where or 'none in any turn'}) but {images} image(s) in field 'image'")


def parse_turns(conversations: object) -> tuple[str | None, list[tuple[str, str]]]:
    """Validate a ``conversations`` list: optional system first, then human/gpt alternating."""
    system, turns, _ = parse_turns_indexed(conversations)
    return system, turns


def to_messages(system: str | None, turns: list[tuple[str, str]]) -> list[dict]:
    """Chat-template messages (transformers' convention); no system message means the template's default."""
    roles = {HUMAN: "user", ASSISTANT: "assistant"}
    messages = [] if system is None else [{"role": "system", "content": system}]
    return messages + [{"role": roles[role], "content": text} for role, text in turns]

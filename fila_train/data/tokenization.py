"""Per-turn tokenization: a LLaVA conversation -> input ids and final labels.

The ``<image>`` placeholder is expanded here into as many image-context ids as
the vision encoder will produce for that image, so labels are final before the
model runs; the model only scatters features into those positions.
"""
from __future__ import annotations

from dataclasses import dataclass

from transformers import PreTrainedTokenizerBase

from .templates import ASSISTANT, HUMAN, SYSTEM, ConversationTemplate, Segment

IGNORE_INDEX = -100
IMAGE_PLACEHOLDER = "<image>"
ROLE_ALIASES = {"human": HUMAN, "user": HUMAN, "gpt": ASSISTANT, "assistant": ASSISTANT,
                "system": SYSTEM}


class ConversationError(ValueError):
    """A record whose conversation cannot be trained on (the message says which field)."""


@dataclass
class TokenizedSample:
    input_ids: list[int]
    labels: list[int]

    @property
    def num_trained(self) -> int:
        return sum(1 for label in self.labels if label != IGNORE_INDEX)


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
        if role == ASSISTANT and not value.strip():
            raise ConversationError(f"conversations[{index}]: empty assistant answer")
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


class ConversationTokenizer:
    """Turns conversations into ids/labels with one template and one tokenizer."""

    def __init__(self, tokenizer: PreTrainedTokenizerBase, template: ConversationTemplate,
                 image_token_id: int):
        self.tokenizer = tokenizer
        self.template = template
        self.image_token_id = image_token_id
        # SentencePiece tokenizers add a word-start marker to every piece they encode; a
        # segment's own leading space would then become a second, spurious one.
        first = tokenizer.tokenize("a")
        self._piece_adds_space = bool(first) and first[0].startswith("\u2581")
        self._special_ids: dict[str, int] = {}

    def special_id(self, token: str) -> int:
        if token not in self._special_ids:
            token_id = self.tokenizer.convert_tokens_to_ids(token)
            if token_id is None or (token_id == self.tokenizer.unk_token_id and token != self.tokenizer.unk_token):
                raise ValueError(f"template {self.template.name!r} needs the special token {token!r}, "
                                 f"which tokenizer {self.tokenizer.name_or_path!r} does not have")
            self._special_ids[token] = token_id
        return self._special_ids[token]

    def _encode_text(self, text: str) -> list[int]:
        if self._piece_adds_space and text.startswith(" "):
            text = text[1:]
        if not text:
            return []
        # Text never yields special ids: a literal "</s>" (an HTML strike-through in OCR data) or
        # "<|im_start|>" in a record stays text instead of ending a turn or forging a role header.
        return self.tokenizer(text, add_special_tokens=False, split_special_tokens=True)["input_ids"]

    def _encode_segment(self, segment: Segment, image_counts: list[int], next_image: list[int]) -> list[int]:
        if segment.special:
            return [self.special_id(segment.text)]
        ids: list[int] = []
        pieces = segment.text.split(IMAGE_PLACEHOLDER)
        for index, piece in enumerate(pieces):
            if index > 0:
                ids.extend([self.image_token_id] * image_counts[next_image[0]])
                next_image[0] += 1
            ids.extend(self._encode_text(piece))
        return ids

    def encode(self, conversations: object, image_token_counts: list[int] | None = None,
               add_generation_prompt: bool = False) -> TokenizedSample:
        """Tokenize one record's conversation; ``image_token_counts[i]`` ids replace the i-th ``<image>``."""
        image_counts = list(image_token_counts or [])
        system, turns, indices = parse_turns_indexed(conversations)
        if add_generation_prompt:
            if turns[-1][0] != HUMAN:
                raise ConversationError(f"conversations[{indices[-1]}]: a generation prompt must end "
                                        f"with a human turn")
        else:
            check_ends_with_answer(turns, indices)
        check_image_count(turns, indices, len(image_counts))
        input_ids: list[int] = []
        labels: list[int] = []
        next_image = [0]
        segments = self.template.segments(turns, system=system, add_generation_prompt=add_generation_prompt)
        for segment in segments:
            ids = self._encode_segment(segment, image_counts, next_image)
            input_ids.extend(ids)
            labels.extend(ids if segment.trained else [IGNORE_INDEX] * len(ids))
        if next_image[0] != len(image_counts):
            # The plain template keeps only the placeholders of the human turn; count them all.
            raise ConversationError(f"template {self.template.name!r} placed {next_image[0]} of "
                                    f"{len(image_counts)} images")
        return TokenizedSample(input_ids, labels)

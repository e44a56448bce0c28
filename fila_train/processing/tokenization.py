"""A LLaVA conversation -> input ids and labels, tokenized as one string, exactly as served.

The conversation is rendered by its chat template into one prompt string, and that whole string is
tokenized once, as ``apply_chat_template`` and every serving stack tokenize it. Labels come from the
character spans the template marks as trained (each answer plus its end-of-turn marker): a token is
trained when it lies inside such a span. Training ids therefore equal the served prompt's ids by
construction. A token that straddles a span border (an answer whose first characters merge with the
template text into one token) would train a token the served prompt never has: that record is an
error naming the turn, never a silent shift.

Each ``<image>`` placeholder is one special token of the tokenizer (added if missing, as llava-hf
tokenizers have it). After tokenization it is expanded into as many image-context ids
(``image_token_id``) as the vision encoder produces for that image, so labels are final before the
model runs.
"""
from __future__ import annotations

import re

from transformers import AddedToken, PreTrainedTokenizerBase

from .chat_templates import IMAGE_PLACEHOLDER, ConversationTemplate, get_template
from .conversations import (
    HUMAN,
    IGNORE_INDEX,
    ConversationError,
    TokenizedSample,
    check_ends_with_answer,
    check_image_count,
    parse_turns_indexed,
    to_messages,
)
from ..utils.errors import ConfigError


def with_image_token(tokenizer: PreTrainedTokenizerBase) -> PreTrainedTokenizerBase:
    """``tokenizer`` (changed in place) with ``<image>`` as one special token; it is saved with it."""
    if IMAGE_PLACEHOLDER not in tokenizer.get_vocab():
        tokenizer.add_tokens([AddedToken(IMAGE_PLACEHOLDER, special=True, normalized=False)], special_tokens=True)
    return tokenizer


def special_token_texts(tokenizer: PreTrainedTokenizerBase) -> list[str]:
    """The tokenizer's special (control) tokens as text: any stack reads them in a prompt as control ids."""
    texts = {token.content for token in tokenizer.added_tokens_decoder.values() if token.special}
    return sorted(texts | set(tokenizer.all_special_tokens), key=len, reverse=True)


class ConversationTokenizer:
    """Turns conversations into ids/labels with one chat template and one tokenizer."""

    def __init__(self, tokenizer: PreTrainedTokenizerBase, template: ConversationTemplate, image_token_id: int):
        self.tokenizer = with_image_token(tokenizer)
        self.template = template
        self.image_token_id = image_token_id
        self.placeholder_id = self.tokenizer.convert_tokens_to_ids(IMAGE_PLACEHOLDER)
        # The template's own markers count even where a tokenizer does not flag them special.
        controls = sorted({text for text in special_token_texts(self.tokenizer) if text} | set(template.control_tokens),
                          key=len, reverse=True)
        self._control_re = re.compile("|".join(map(re.escape, controls))) if controls else None
        for token in template.control_tokens:  # a template the tokenizer cannot write fails here, not per record
            self.special_id(token)

    def with_template(self, name: str) -> ConversationTokenizer:
        """The same tokenizer under another template (a mixture source may name its own)."""
        if name == self.template.name:
            return self
        return ConversationTokenizer(self.tokenizer, get_template(name), self.image_token_id)

    def special_id(self, token: str) -> int:
        """The id of a control token the template writes; a clear error if the tokenizer lacks it."""
        token_id = self.tokenizer.convert_tokens_to_ids(token)
        if token_id is None or (token_id == self.tokenizer.unk_token_id and token != self.tokenizer.unk_token):
            raise ConfigError(f"template {self.template.name!r} needs the special token {token!r}, "
                              f"which tokenizer {self.tokenizer.name_or_path!r} does not have")
        return token_id

    def stop_strings(self) -> list[str]:
        """An end of turn that is text, not a control token (plain's "\\n"): byte-level tokenizers may merge
        it with the caption's last characters (".\\n"), so generation also stops on the string."""
        eot = self.template.end_of_turn
        return [] if eot in self.template.control_tokens else [eot]

    def stop_token_ids(self) -> list[int]:
        """The end-of-turn token (what training taught the model to emit), then EOS if different."""
        eot = self.template.end_of_turn
        if eot in self.template.control_tokens:
            ids = [self.special_id(eot)]
        else:  # plain's "\n": its own token after ordinary text, where the tokenizer keeps it apart
            before = self.tokenizer.encode("a", add_special_tokens=False)
            after = self.tokenizer.encode("a" + eot, add_special_tokens=False)
            ids = after[len(before):] if after[:len(before)] == before and len(after) == len(before) + 1 else []
        eos = self.tokenizer.eos_token_id
        return ids + ([eos] if eos is not None and eos not in ids else [])

    def render(self, conversations: object, add_generation_prompt: bool = False):
        """The chat-template rendering of a record's ``conversations`` (validated)."""
        system, turns, indices = parse_turns_indexed(conversations)
        self._check_text(system, turns, indices)
        return self.template.render(to_messages(system, turns), add_generation_prompt,
                                    bos_token=self.tokenizer.bos_token), turns, indices

    def _check_text(self, system: str | None, turns: list[tuple[str, str]], indices: list[int]) -> None:
        """No record text holds a control token: a stack given the rendered prompt would read it as one
        (a literal "</s>" would end the turn), so it could neither be trained as text nor served alike."""
        if self._control_re is None:
            return
        texts = ([] if system is None else [(0, "system", system)]) + [
            (index, role, text) for index, (role, text) in zip(indices, turns)]
        for index, role, text in texts:
            for found in self._control_re.finditer(text):
                if found.group() == IMAGE_PLACEHOLDER and role == HUMAN:
                    continue
                raise ConversationError(
                    f"conversations[{index}].value contains "
                    f"{found.group()!r}, a control token of the tokenizer: any stack given the prompt reads it "
                    f"as that token, not as text; remove or escape it")

    def encode(self, conversations: object, image_token_counts: list[int] | None = None,
               add_generation_prompt: bool = False) -> TokenizedSample:
        """Tokenize one record's conversation; ``image_token_counts[i]`` ids replace the i-th ``<image>``."""
        counts = list(image_token_counts or [])
        rendered, turns, indices = self.render(conversations, add_generation_prompt)
        if add_generation_prompt:
            if turns[-1][0] != HUMAN:
                raise ConversationError(f"conversations[{indices[-1]}]: a generation prompt must end "
                                        f"with a human turn")
        else:
            check_ends_with_answer(turns, indices)
        check_image_count(turns, indices, len(counts))
        answer_indices = [index for index, (role, _) in zip(indices, turns) if role != HUMAN]
        ids, labels = self._labelled_ids(rendered.text, rendered.trained_spans, answer_indices)
        return self.expand_images(ids, counts, labels)

    def _labelled_ids(self, text: str, spans: list[tuple[int, int]], answers: list[int]) -> tuple[list[int], list[int]]:
        if self.tokenizer.is_fast:
            encoded = self.tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
            return encoded["input_ids"], labels_from_offsets(encoded["input_ids"], encoded["offset_mapping"],
                                                              text, spans, answers)
        return self._labels_from_prefixes(text, spans, answers)

    def _labels_from_prefixes(self, text: str, spans: list[tuple[int, int]],
                              answers: list[int]) -> tuple[list[int], list[int]]:
        """Tokenizers without offsets: a span's tokens are those between the prefix tokenizations that
        end at its borders, which must be prefixes of the whole string's ids."""
        ids = self.tokenizer.encode(text, add_special_tokens=False)
        labels = [IGNORE_INDEX] * len(ids)
        for (start, end), index in zip(spans, answers):
            bounds = []
            for border in (start, end):
                prefix = self.tokenizer.encode(text[:border], add_special_tokens=False)
                if ids[:len(prefix)] != prefix:
                    raise straddle_error(index, text, border)
                bounds.append(len(prefix))
            labels[bounds[0]:bounds[1]] = ids[bounds[0]:bounds[1]]
        return ids, labels

    def expand_images(self, ids: list[int], counts: list[int], labels: list[int] | None = None) -> TokenizedSample:
        """Each ``<image>`` id becomes ``counts[i]`` image-context ids (untrained)."""
        labels = [IGNORE_INDEX] * len(ids) if labels is None else labels
        placed = ids.count(self.placeholder_id)
        if placed != len(counts):
            raise ConversationError(f"template {self.template.name!r} placed {placed} of {len(counts)} images")
        if not counts:
            return TokenizedSample(ids, labels)
        out_ids: list[int] = []
        out_labels: list[int] = []
        image = 0
        for token, label in zip(ids, labels):
            if token == self.placeholder_id:
                out_ids.extend([self.image_token_id] * counts[image])
                out_labels.extend([IGNORE_INDEX] * counts[image])
                image += 1
            else:
                out_ids.append(token)
                out_labels.append(label)
        return TokenizedSample(out_ids, out_labels)


def straddle_error(index: int, text: str, border: int) -> ConversationError:
    context = text[max(0, border - 12):border + 12]
    return ConversationError(
        f"conversations[{index}]: the answer's first or last characters merge with the template's text into "
        f"one token (around {context!r}), so the answer cannot be trained as it is served; remove the "
        f"leading/trailing whitespace of the answer")


def labels_from_offsets(ids: list[int], offsets: list[tuple[int, int]], text: str,
                        spans: list[tuple[int, int]], answers: list[int]) -> list[int]:
    """Each token whose characters lie inside a trained span keeps its id as label, the rest -100."""
    labels = [IGNORE_INDEX] * len(ids)
    span = 0
    for position, (token, (start, end)) in enumerate(zip(ids, offsets)):
        while span < len(spans) and start >= spans[span][1]:
            span += 1
        if span == len(spans):
            break
        low, high = spans[span]
        if end <= low:
            continue  # context before the span
        if start < low or end > high:
            raise straddle_error(answers[span], text, low if start < low else high)
        labels[position] = token
    return labels

"""Templates + tokenization: exactly the answers are trained, for every template.

Runs with the local demo byte-level BPE tokenizer and, where the asset folder exists, with the
real Llama-2 SentencePiece tokenizer (``<repo>/../shared/assets/llama2-tokenizer``).
"""
from __future__ import annotations

import re

import pytest

from distributed_utils import LLAMA2_DIR
from fila_train.processing.chat_templates import TEMPLATES, get_template
from fila_train.processing.conversations import IGNORE_INDEX, ConversationError, TokenizedSample
from fila_train.processing.tokenization import ConversationTokenizer
from fila_train.demo.tokenizer import CHAT_SPECIAL_TOKENS, build_demo_tokenizer
from fila_train.model.configuration import IMAGE_TOKEN_ID

TEMPLATE_NAMES = ("plain", "vicuna_v1", "llava_v1", "llama3", "llava_llama_3", "chatml")
# vicuna_v1 trains " answer</s>": the space after "ASSISTANT:" belongs to the first answer token,
# exactly as when the whole string is tokenized at once (and as the model generates it).
TRAINED_PREFIX = {"vicuna_v1": " ", "llava_v1": " "}

CORPUS_LINES = (
    "What is shown in the picture? A red apple on a wooden table.",
    "How many apples are there? There are 3 apples, all on one plate.",
    "USER: ASSISTANT: system user assistant human gpt",
    "Describe the chart. A bar chart of sales in paris and london.",
    "You are a helpful assistant. Answer briefly. Thanks! You're welcome.",
)


def human(text: str) -> dict:
    return {"from": "human", "value": text}


def gpt(text: str) -> dict:
    return {"from": "gpt", "value": text}


def system(text: str) -> dict:
    return {"from": "system", "value": text}


# name -> (conversations, image token counts)
RECORDS: dict[str, tuple[list[dict], list[int]]] = {
    "single": ([human("<image>\nWhat is shown in the picture?"), gpt("A red apple on a wooden table.")], [5]),
    "text_only": ([human("Say something."), gpt("Hello there!")], []),
    "multi_turn": ([
        human("<image>\nWhat color is the apple?"), gpt("It is red."),
        human("How many apples are there?"), gpt("There are 3 apples,\nall on one plate."),
        human("Thanks!"), gpt("You're welcome."),
    ], [4]),
    "multi_turn_system_two_images": ([
        system("Answer briefly."),
        human("<image>\n<image>\nCompare the two charts."), gpt("The left one is taller."),
        human("And the sales in paris?"), gpt("Sales in paris are 42."),
    ], [3, 2]),
    "image_in_later_turn": ([
        human("<image> Describe it."), gpt("A bar chart."),
        human("<image>\nAnd this one?"), gpt("A table of sales."),
    ], [2, 6]),
}


@pytest.fixture(scope="module")
def demo_tokenizer(tmp_path_factory: pytest.TempPathFactory):
    root = tmp_path_factory.mktemp("demo_tok")
    corpus = root / "corpus.txt"
    corpus.write_text("\n".join(CORPUS_LINES * 20) + "\n", encoding="utf-8")
    return build_demo_tokenizer([corpus], root / "tokenizer", vocab_size=400)


# "tokenizers": what LlamaTokenizer.from_pretrained builds from tokenizer.model in transformers 5;
# "sentencepiece": the sentencepiece library itself (legacy=True, the classic slow Llama-2 tokenizer,
# which turns a segment's own leading space into a second word-start marker unless it is stripped).
LLAMA2_BACKENDS = ("tokenizers", "sentencepiece")


def load_llama2_tokenizer(backend: str, with_chat_specials: bool):
    model_file = LLAMA2_DIR / "tokenizer.model"
    if not model_file.is_file():
        pytest.skip(f"no Llama-2 SentencePiece tokenizer at {LLAMA2_DIR}")
    if backend == "tokenizers":
        from transformers import LlamaTokenizer

        tokenizer = LlamaTokenizer.from_pretrained(str(LLAMA2_DIR))
    else:
        from transformers.tokenization_utils_sentencepiece import SentencePieceBackend

        tokenizer = SentencePieceBackend(vocab_file=str(model_file), bos_token="<s>", eos_token="</s>",
                                         unk_token="<unk>", legacy=True)
    assert tokenizer("Hello world", add_special_tokens=False)["input_ids"] == [15043, 3186]  # Llama-2 ids
    if with_chat_specials:
        added = tokenizer.add_special_tokens({"additional_special_tokens": list(CHAT_SPECIAL_TOKENS)})
        assert added == len(CHAT_SPECIAL_TOKENS)
    return tokenizer


@pytest.fixture(scope="module", params=LLAMA2_BACKENDS)
def llama2_tokenizer(request):
    return load_llama2_tokenizer(request.param, with_chat_specials=False)


@pytest.fixture(scope="module", params=LLAMA2_BACKENDS)
def llama2_chat_tokenizer(request):
    return load_llama2_tokenizer(request.param, with_chat_specials=True)


# ------------------------------------------------------------------------------------------------
# helpers
# ------------------------------------------------------------------------------------------------
def encode(tokenizer, template: str, conversations: list[dict], counts: list[int],
           add_generation_prompt: bool = False) -> TokenizedSample:
    conversation_tokenizer = ConversationTokenizer(tokenizer, get_template(template), IMAGE_TOKEN_ID)
    return conversation_tokenizer.encode(conversations, counts, add_generation_prompt=add_generation_prompt)


def runs(flags: list[bool]) -> list[tuple[int, int]]:
    """[start, end) of every maximal run of True."""
    out, start = [], None
    for position, flag in enumerate([*flags, False]):
        if flag and start is None:
            start = position
        elif not flag and start is not None:
            out.append((start, position))
            start = None
    return out


def decode(tokenizer, ids: list[int]) -> str:
    """Text of ``ids`` with special tokens written out, nothing cleaned up."""
    sp_model = getattr(tokenizer, "sp_model", None)
    if sp_model is None:
        return tokenizer.decode(ids, skip_special_tokens=False, clean_up_tokenization_spaces=False)
    # The generic SentencePieceBackend writes byte-fallback pieces literally ('<0x0A>'): let the
    # sentencepiece model decode the text pieces, and write the special tokens between them.
    specials = set(tokenizer.all_special_ids)
    text, pending = "", []
    for token in [*ids, None]:
        if token is None or token in specials or token >= sp_model.get_piece_size():
            text += sp_model.decode(pending)
            pending = []
            if token is not None:
                text += tokenizer.convert_ids_to_tokens(token)
        else:
            pending.append(token)
    return text


def split_after(ids: list[int], marker: int) -> list[list[int]]:
    pieces, current = [], []
    for token in ids:
        current.append(token)
        if token == marker:
            pieces.append(current)
            current = []
    return pieces + ([current] if current else [])


def answers(conversations: list[dict]) -> list[str]:
    return [turn["value"] for turn in conversations if turn["from"] == "gpt"]


def assert_trained_exactly_answers(tokenizer, template: str, conversations: list[dict], counts: list[int],
                                   sentencepiece: bool) -> TokenizedSample:
    """Decoding exactly the trained positions, per answer, gives answer + end-of-turn."""
    sample = encode(tokenizer, template, conversations, counts)
    ids, labels = sample.input_ids, sample.labels
    assert len(ids) == len(labels)
    assert all(label in (IGNORE_INDEX, token) for token, label in zip(ids, labels))
    trained = runs([label != IGNORE_INDEX for label in labels])
    n_answers = len(answers(conversations))
    if template != "plain":  # plain drops the human text, so consecutive answers may touch
        assert len(trained) == n_answers, f"{len(trained)} trained spans for {n_answers} answers"
    end_of_turn = get_template(template).end_of_turn
    if template == "plain":  # "\n" ends a caption but is inside answers too: compare the trained text whole
        texts = [decode(tokenizer, labels[start:end]) for start, end in trained]
        decoded = ["".join(t.removeprefix(" ") if sentencepiece else t for t in texts)]
    else:
        eot_id = tokenizer.convert_tokens_to_ids(end_of_turn)
        pieces = [piece for start, end in trained for piece in split_after(labels[start:end], eot_id)]
        decoded = [decode(tokenizer, piece) for piece in pieces]
    expected = [TRAINED_PREFIX.get(template, "") + answer + end_of_turn for answer in answers(conversations)]
    if template == "plain":
        expected = ["".join(expected)]
    if sentencepiece:  # decoding drops the word-start marker of a piece's first token
        expected, decoded = [t.removeprefix(" ") for t in expected], [t.removeprefix(" ") for t in decoded]
    assert decoded == expected
    return sample


def assert_image_runs(sample: TokenizedSample, counts: list[int]) -> None:
    """The i-th <image> became exactly counts[i] consecutive image ids, none of them trained.

    Placeholders with nothing between them (plain drops the text) give one run of their summed counts.
    """
    is_image = [token == IMAGE_TOKEN_ID for token in sample.input_ids]
    remaining = list(counts)
    for start, end in runs(is_image):
        length = 0
        while remaining and length < end - start:
            length += remaining.pop(0)
        assert length == end - start, f"image runs {runs(is_image)} do not match counts {counts}"
    assert not remaining, f"image runs {runs(is_image)} do not match counts {counts}"
    assert all(label == IGNORE_INDEX for label, flag in zip(sample.labels, is_image) if flag)
    assert IMAGE_TOKEN_ID not in sample.labels


# ------------------------------------------------------------------------------------------------
# label masking
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("record", sorted(RECORDS))
@pytest.mark.parametrize("template", TEMPLATE_NAMES)
def test_demo_tokenizer_trains_exactly_the_answers(demo_tokenizer, template: str, record: str) -> None:
    conversations, counts = RECORDS[record]
    sample = assert_trained_exactly_answers(demo_tokenizer, template, conversations, counts, sentencepiece=False)
    assert_image_runs(sample, counts)


@pytest.mark.parametrize("record", sorted(RECORDS))
@pytest.mark.parametrize("template", ["plain", "vicuna_v1"])
def test_llama2_sentencepiece_trains_exactly_the_answers(llama2_tokenizer, template: str, record: str) -> None:
    conversations, counts = RECORDS[record]
    sample = assert_trained_exactly_answers(llama2_tokenizer, template, conversations, counts, sentencepiece=True)
    assert_image_runs(sample, counts)


@pytest.mark.parametrize("record", sorted(RECORDS))
@pytest.mark.parametrize("template", ["llama3", "chatml"])
def test_llama2_with_added_chat_specials_trains_exactly_the_answers(llama2_chat_tokenizer, template: str,
                                                                    record: str) -> None:
    conversations, counts = RECORDS[record]
    sample = assert_trained_exactly_answers(llama2_chat_tokenizer, template, conversations, counts,
                                            sentencepiece=True)
    assert_image_runs(sample, counts)


@pytest.mark.parametrize(("template", "missing"), [("llama3", "<|begin_of_text|>"), ("chatml", "<|im_start|>")])
def test_llama2_without_chat_specials_raises_clear_error(llama2_tokenizer, template: str, missing: str) -> None:
    conversations, counts = RECORDS["single"]
    with pytest.raises(ValueError, match=re.escape(f"template {template!r} needs the special token {missing!r}")):
        encode(llama2_tokenizer, template, conversations, counts)


def assert_vicuna_answer_matches_whole_string(tokenizer) -> None:
    """Per-turn tokenization of the answer gives the ids the full LLaVA prompt string would give."""
    conversations, _ = RECORDS["text_only"]
    sample = encode(tokenizer, "vicuna_v1", conversations, [])
    trained = [label for label in sample.labels if label != IGNORE_INDEX]
    whole = tokenizer("USER: Say something. ASSISTANT: Hello there!</s>", add_special_tokens=False)["input_ids"]
    header = tokenizer("USER: Say something. ASSISTANT:", add_special_tokens=False)["input_ids"]
    assert whole[:len(header)] == header
    assert trained == whole[len(header):]


def test_vicuna_answer_tokens_match_whole_string_tokenization(demo_tokenizer) -> None:
    assert_vicuna_answer_matches_whole_string(demo_tokenizer)


def test_llama2_vicuna_answer_tokens_match_whole_string_tokenization(llama2_tokenizer) -> None:
    assert_vicuna_answer_matches_whole_string(llama2_tokenizer)


SPECIAL_LOOKALIKES = ("<s>struck</s>", "<|im_end|>", "<|eot_id|>", "<|im_start|>system")


@pytest.mark.parametrize("lookalike", SPECIAL_LOOKALIKES)
@pytest.mark.parametrize("template", TEMPLATE_NAMES)
def test_control_token_text_in_a_record_is_an_error_naming_the_field(demo_tokenizer, template: str,
                                                                     lookalike: str) -> None:
    """A record's literal '</s>' or '<|im_start|>' would be read as that control token by any stack given
    the prompt (ending a turn, forging a header): the record is refused, naming the field."""
    conversations, counts = RECORDS["multi_turn"]
    for index in (0, 3):
        tricky = [dict(turn) for turn in conversations]
        tricky[index]["value"] += " " + lookalike
        with pytest.raises(ConversationError, match=re.escape(f"conversations[{index}].value contains")):
            encode(demo_tokenizer, template, tricky, counts)


# ------------------------------------------------------------------------------------------------
# templates and errors
# ------------------------------------------------------------------------------------------------
def test_registered_templates_are_exactly_the_documented_ones() -> None:
    assert TEMPLATES.names() == sorted(TEMPLATE_NAMES)


def test_unknown_template_lists_the_known_names() -> None:
    with pytest.raises(ValueError) as error:
        get_template("vicuna_v2")
    message = str(error.value)
    assert "'vicuna_v2'" in message
    for name in TEMPLATE_NAMES:
        assert name in message


@pytest.mark.parametrize("template", TEMPLATE_NAMES)
def test_context_holds_every_prompt_and_no_answer(demo_tokenizer, template: str) -> None:
    """The untrained text ids render the system and human turns (plain: none) and no answer."""
    conversations, counts = RECORDS["multi_turn_system_two_images"]
    sample = encode(demo_tokenizer, template, conversations, counts)
    context = [token for token, label in zip(sample.input_ids, sample.labels)
               if label == IGNORE_INDEX and token != IMAGE_TOKEN_ID]
    if template == "plain":  # BOS, image tokens, captions: no system prompt, the human text is dropped
        assert context == [demo_tokenizer.bos_token_id]
        return
    text = decode(demo_tokenizer, context)
    for turn in conversations:
        value = turn["value"].replace("<image>", "").strip()
        assert (value in text) == (turn["from"] != "gpt"), (turn, text)


@pytest.mark.parametrize("template", TEMPLATE_NAMES)
def test_image_placeholder_expands_to_exact_count(demo_tokenizer, template: str) -> None:
    for counts in ([1], [7], [3, 5]):
        conversations = [human("<image>\n" * len(counts) + "Look."), gpt("Done.")]
        assert_image_runs(encode(demo_tokenizer, template, conversations, counts), counts)


ERROR_CASES = {
    "more_images_than_placeholders": ([human("<image>\nq"), gpt("a"), human("<image> q2"), gpt("b")],
                                      [4, 4, 4], "conversations[2]"),
    "fewer_images_than_placeholders": ([human("q"), gpt("a"), human("<image>\n<image>\nq2"), gpt("b")],
                                       [4], "conversations[2]: 2"),
    "image_but_no_placeholder": ([human("q"), gpt("a")], [4], "field 'image'"),
    "non_alternating": ([human("q"), human("q again"), gpt("a")], [], "conversations[1]"),
    "assistant_first": ([gpt("a"), human("q")], [], "conversations[0]"),
    "empty_answer": ([human("q"), gpt("a"), human("q2"), gpt("  \n")], [], "conversations[3]"),
    "system_shifts_indices": ([system("s"), human("q"), gpt("a"), gpt("b")], [], "conversations[3]"),
    "ends_with_human": ([human("q"), gpt("a"), human("q2")], [], "conversations[2]"),
    "image_in_answer": ([human("<image>\nq"), gpt("<image> a")], [4], "conversations[1]"),
    "system_not_first": ([human("q"), system("s"), gpt("a")], [], "conversations[1]"),
    "unknown_role": ([human("q"), {"from": "bot", "value": "a"}], [], "conversations[1]"),
    "value_not_string": ([human("q"), {"from": "gpt", "value": ["a"]}], [], "conversations[1]"),
    "image_in_system_prompt": ([system("<image>"), human("q"), gpt("a")], [4], "conversations[0]"),
    "system_only": ([system("s")], [], "conversations"),
    "not_a_list": ("human: q", [], "field 'conversations'"),
}


@pytest.mark.parametrize("case", sorted(ERROR_CASES))
@pytest.mark.parametrize("template", ["plain", "vicuna_v1"])
def test_bad_conversations_raise_naming_the_field(demo_tokenizer, template: str, case: str) -> None:
    conversations, counts, where = ERROR_CASES[case]
    with pytest.raises(ConversationError, match=re.escape(where)):
        encode(demo_tokenizer, template, conversations, counts)


# ------------------------------------------------------------------------------------------------
# generation prompt
# ------------------------------------------------------------------------------------------------
def assert_generation_prompt_is_training_prefix(tokenizer, template: str) -> None:
    conversations, counts = RECORDS["multi_turn_system_two_images"]
    full = encode(tokenizer, template, conversations, counts)
    # Up to the first answer, then up to the second one (index 3 = second human turn).
    for last_human in (1, 3):
        prompt = encode(tokenizer, template, conversations[:last_human + 1], counts, add_generation_prompt=True)
        n = len(prompt.input_ids)
        assert full.input_ids[:n] == prompt.input_ids
        assert prompt.labels == full.labels[:n]  # earlier answers are trained in both
        # The prompt ends exactly where an answer starts: the next id is trained, and the last one
        # is the assistant header (plain has none: there the previous answer's end-of-turn precedes).
        assert full.labels[n] != IGNORE_INDEX
        assert (full.labels[n - 1] == IGNORE_INDEX) == (template != "plain" or last_human == 1)
    with pytest.raises(ConversationError, match=re.escape("conversations[2]")):
        encode(tokenizer, template, conversations[:3], counts, add_generation_prompt=True)


@pytest.mark.parametrize("template", TEMPLATE_NAMES)
def test_generation_prompt_is_prefix_of_training_ids(demo_tokenizer, template: str) -> None:
    assert_generation_prompt_is_training_prefix(demo_tokenizer, template)


@pytest.mark.parametrize("template", ["plain", "vicuna_v1"])
def test_llama2_generation_prompt_is_prefix_of_training_ids(llama2_tokenizer, template: str) -> None:
    assert_generation_prompt_is_training_prefix(llama2_tokenizer, template)


@pytest.mark.parametrize("template", ["llama3", "chatml"])
def test_llama2_chat_specials_generation_prompt_is_prefix(llama2_chat_tokenizer, template: str) -> None:
    assert_generation_prompt_is_training_prefix(llama2_chat_tokenizer, template)


def test_template_markers_in_text_are_refused_even_where_the_tokenizer_does_not_flag_them_special(
        llama2_tokenizer) -> None:
    """A tokenizer may add <|im_start|> / <|im_end|> as ordinary (non-special) tokens: record text holding
    them would still forge ChatML turns."""
    import copy

    tokenizer = copy.deepcopy(llama2_tokenizer)
    tokenizer.add_tokens(["<|im_start|>", "<|im_end|>"])
    conversations = [human("q"), gpt("a<|im_end|>b")]
    with pytest.raises(ConversationError, match=re.escape("conversations[1].value contains '<|im_end|>'")):
        encode(tokenizer, "chatml", conversations, [])


@pytest.mark.parametrize("template", TEMPLATE_NAMES)
def test_only_a_text_end_of_turn_is_also_a_stop_string(demo_tokenizer, template: str) -> None:
    prompter = ConversationTokenizer(demo_tokenizer, get_template(template), IMAGE_TOKEN_ID)
    assert prompter.stop_strings() == (["\n"] if template == "plain" else [])

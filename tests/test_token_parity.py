"""Token parity: training ids equal the whole rendered prompt tokenized at once, for every template and
tokenizer family, on generated records (multi-turn, unicode, digits, whitespace, newlines, images).

The reference string is rendered by transformers' own ``apply_chat_template`` from the template's jinja,
and checked against LLaVA's own prompt formulas for plain and vicuna_v1; the reference ids are that
string, with each ``<image>`` repeated as many times as the image has tokens, tokenized in one call.
"""
from __future__ import annotations

import random
import zlib
from pathlib import Path

import pytest
from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

from distributed_utils import LLAMA2_DIR
from fila_train.model.configuration import IMAGE_TOKEN_ID
from fila_train.processing.chat_templates import IMAGE_PLACEHOLDER, get_template
from fila_train.processing.conversations import IGNORE_INDEX, ConversationError, parse_turns, to_messages
from fila_train.processing.tokenization import ConversationTokenizer

RECORDS_PER_FAMILY = 300
LLAMA3_PATTERN = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
                  r"|\s*[\r\n]+|\s+(?!\S)|\s+")
QWEN2_PATTERN = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
                 r"|\s*[\r\n]+|\s+(?!\S)|\s+")
WORDS = ("the", "chart", "shows", "total", "revenue", "in", "Q3", "café", "naïve", "日本語", "表格", "数字",
         "😀", "Ünïcödé", "A", "B", "yes", "no", "42", "3.14", "1,000", "2024-05-01", "ID:7731", "x", "—", "…",
         "(a)", "[b]", "don't", "it's", "USER", "ASSISTANT", "\t", "#", "$12.50")


# ------------------------------------------------------------------------------------------------
# records
# ------------------------------------------------------------------------------------------------
def sentence(rng: random.Random) -> str:
    words = [rng.choice(WORDS) for _ in range(rng.randint(1, 8))]
    text = ""
    for word in words:
        text += word + rng.choice([" ", " ", " ", "  ", "\n", "", ", ", ".\n\n"])
    return text.rstrip(" ") if rng.random() < 0.7 else text


def answer(rng: random.Random) -> str:
    text = sentence(rng).strip() or "ok"
    shape = rng.random()
    if shape < 0.12:
        return " " + text  # a leading space must survive
    if shape < 0.2:
        return text + rng.choice([" ", "\n", "  \n"])
    if shape < 0.25:
        return "\n" + text
    return text


def generated_records(seed: int, count: int = RECORDS_PER_FAMILY) -> list[tuple[list[dict], list[int]]]:
    rng = random.Random(seed)
    records = []
    for _ in range(count):
        turns = []
        system = rng.random()
        if system < 0.2:
            turns.append({"from": "system", "value": ""})
        elif system < 0.4:
            turns.append({"from": "system", "value": sentence(rng).strip() or "Be brief."})
        counts = []
        for turn in range(rng.randint(1, 3)):
            question = sentence(rng).strip() or "?"
            if rng.random() < (0.7 if turn == 0 else 0.15):
                question = rng.choice([f"{IMAGE_PLACEHOLDER}\n{question}", f"{question} {IMAGE_PLACEHOLDER}",
                                       f"{IMAGE_PLACEHOLDER}{question}"])
                counts.append(rng.randint(1, 5))
            turns += [{"from": "human", "value": question}, {"from": "gpt", "value": answer(rng)}]
        records.append((turns, counts))
    return records


# ------------------------------------------------------------------------------------------------
# tokenizer families
# ------------------------------------------------------------------------------------------------
def corpus(seed: int = 7) -> list[str]:
    rng = random.Random(seed)
    return [sentence(rng) for _ in range(3000)]


def byte_level_bpe(pattern: str, special_tokens: list[str], nfc: bool) -> Tokenizer:
    backend = Tokenizer(models.BPE())
    if nfc:
        backend.normalizer = normalizers.NFC()
    backend.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(pattern), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=700, special_tokens=special_tokens, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    backend.train_from_iterator(corpus(), trainer)
    return backend


def llama3_style(tmp_path: Path):
    specials = ["<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"]
    wrapped = PreTrainedTokenizerFast(tokenizer_object=byte_level_bpe(LLAMA3_PATTERN, specials, nfc=False),
                                      bos_token="<|begin_of_text|>", eos_token="<|eot_id|>",
                                      extra_special_tokens=specials[2:4], clean_up_tokenization_spaces=False)
    return saved_and_loaded(wrapped, tmp_path / "llama3")


def qwen2_style(tmp_path: Path):
    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    wrapped = PreTrainedTokenizerFast(tokenizer_object=byte_level_bpe(QWEN2_PATTERN, specials, nfc=True),
                                      eos_token="<|im_end|>", pad_token="<|endoftext|>",
                                      extra_special_tokens=["<|im_start|>"], clean_up_tokenization_spaces=False)
    return saved_and_loaded(wrapped, tmp_path / "qwen2")


def saved_and_loaded(tokenizer, folder: Path):
    from transformers import AutoTokenizer

    tokenizer.save_pretrained(folder)
    return AutoTokenizer.from_pretrained(folder)


def llama2(backend: str, legacy: bool):
    model_file = LLAMA2_DIR / "tokenizer.model"
    if not model_file.is_file():
        pytest.skip(f"no Llama-2 SentencePiece tokenizer at {LLAMA2_DIR}")
    if backend == "fast":
        from transformers import LlamaTokenizer

        return LlamaTokenizer.from_pretrained(str(LLAMA2_DIR), legacy=legacy)
    from transformers.tokenization_utils_sentencepiece import SentencePieceBackend

    return SentencePieceBackend(vocab_file=str(model_file), bos_token="<s>", eos_token="</s>", unk_token="<unk>",
                                legacy=legacy)


def with_chat_tokens(tokenizer):
    tokenizer.add_special_tokens({"additional_special_tokens": [
        "<|begin_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>", "<|im_start|>", "<|im_end|>"]})
    return tokenizer


FAMILIES = {  # name -> (templates it serves, builder)
    "llama2-fast-legacy": (("plain", "vicuna_v1"), lambda tmp: llama2("fast", True)),
    "llama2-fast": (("plain", "vicuna_v1"), lambda tmp: llama2("fast", False)),
    "llama2-slow-legacy": (("plain", "vicuna_v1"), lambda tmp: llama2("slow", True)),
    "llama2-slow": (("plain", "vicuna_v1"), lambda tmp: llama2("slow", False)),
    # Llama-2 given the chat markers as added special tokens (a Llama-2 LLM trained with those templates).
    "llama2-fast+chat-tokens": (("llama3", "chatml"), lambda tmp: with_chat_tokens(llama2("fast", False))),
    "llama3-bpe": (("plain", "llama3"), llama3_style),
    "qwen2-bpe": (("plain", "chatml"), qwen2_style),
}
CASES = [(family, template) for family, (templates, _) in FAMILIES.items() for template in templates]


@pytest.fixture(scope="module")
def tokenizers_by_family(tmp_path_factory):
    cache = {}

    def get(family: str):
        if family not in cache:
            cache[family] = FAMILIES[family][1](tmp_path_factory.mktemp(family))
        return cache[family]
    return get


# ------------------------------------------------------------------------------------------------
# references
# ------------------------------------------------------------------------------------------------
def llava_multimodal(text: str) -> str:
    """LLaVA-NeXT's preprocess_multimodal (llava/train/train.py), run on every turn before its prompt is built: a
    turn's one <image> not at its start goes first. LLaVA-1.5's does the same for those turns."""
    if text.count(IMAGE_PLACEHOLDER) == 1 and not text.startswith(IMAGE_PLACEHOLDER):
        text = (IMAGE_PLACEHOLDER + "\n" + text.replace(IMAGE_PLACEHOLDER, "").strip()).strip()
    return text


def llava_prompt(template: str, conversations: list[dict], bos: str) -> str | None:
    """LLaVA's own formulas: preprocess_plain (image + caption + "\\n") and conv_vicuna_v1.get_prompt(), after
    preprocess_multimodal."""
    system, turns = parse_turns(conversations)
    turns = [(role, llava_multimodal(text)) for role, text in turns]
    if template == "plain":
        return bos + "".join(IMAGE_PLACEHOLDER * text.count(IMAGE_PLACEHOLDER) if role == "human" else text + "\n"
                             for role, text in turns)
    if template == "vicuna_v1":
        system = get_template("vicuna_v1").default_system if system is None else system
        out = "<s>" + system + " "
        for role, text in turns:
            out += f"USER: {text} " if role == "human" else f"ASSISTANT: {text}</s>"
        return out
    return None


def reference_ids(tokenizer, template: str, conversations: list[dict], counts: list[int]) -> list[int]:
    system, turns = parse_turns(conversations)
    rendered = tokenizer.apply_chat_template(to_messages(system, turns), chat_template=get_template(template).jinja,
                                             tokenize=False)
    expected = llava_prompt(template, conversations, tokenizer.bos_token or "")
    if expected is not None:
        assert rendered == expected
    pieces = rendered.split(IMAGE_PLACEHOLDER)
    expanded = pieces[0] + "".join(IMAGE_PLACEHOLDER * count + piece for count, piece in zip(counts, pieces[1:]))
    image_id = tokenizer.convert_tokens_to_ids(IMAGE_PLACEHOLDER)
    ids = tokenizer(expanded, add_special_tokens=False)["input_ids"]
    return [IMAGE_TOKEN_ID if token == image_id else token for token in ids]


def decode(tokenizer, ids: list[int]) -> str:
    if not hasattr(tokenizer, "sp_model"):
        return tokenizer.decode(ids)
    # The slow backend's decode leaves byte-fallback pieces as "<0x0A>": SentencePiece decodes the text,
    # special ids stay their text.
    special = set(tokenizer.all_special_ids)
    out, run = "", []
    for token in [*ids, None]:
        if token is not None and token not in special:
            run.append(token)
            continue
        out += tokenizer.sp_model.decode(run) if run else ""
        out += "" if token is None else tokenizer.convert_ids_to_tokens(token)
        run = []
    return out


def trained_texts(tokenizer, labels: list[int]) -> list[str]:
    runs, current = [], []
    for label in [*labels, IGNORE_INDEX]:
        if label != IGNORE_INDEX:
            current.append(label)
        elif current:
            runs.append(decode(tokenizer, current))
            current = []
    return runs


def expected_trained_texts(template: str, conversations: list[dict]) -> list[str]:
    _, turns = parse_turns(conversations)
    prefix, eot = {"vicuna_v1": (" ", "</s>"), "plain": ("", "\n"), "llama3": ("", "<|eot_id|>"),
                   "chatml": ("", "<|im_end|>")}[template]
    texts = [prefix + text + eot for role, text in turns if role == "gpt"]
    if template == "plain":  # the human text is dropped: answers without an image between them touch
        merged, previous_human_has_image = [], True
        for role, text in turns:
            if role == "human":
                previous_human_has_image = IMAGE_PLACEHOLDER in text
            elif merged and not previous_human_has_image:
                merged[-1] += text + eot
            else:
                merged.append(text + eot)
        texts = merged
    return texts


@pytest.mark.parametrize(("family", "template"), CASES)
def test_training_ids_equal_the_whole_prompt_tokenized_at_once(tokenizers_by_family, family: str,
                                                              template: str) -> None:
    tokenizer = tokenizers_by_family(family)
    prompter = ConversationTokenizer(tokenizer, get_template(template), IMAGE_TOKEN_ID)
    sentencepiece = family.startswith("llama2")
    equal, refused = 0, []
    for conversations, counts in generated_records(seed=zlib.crc32(f"{family}/{template}".encode())):
        try:
            sample = prompter.encode(conversations, counts)
        except ConversationError as error:
            refused.append(str(error))
            continue
        assert sample.input_ids == reference_ids(tokenizer, template, conversations, counts), conversations
        assert all(label in (IGNORE_INDEX, token) for token, label in zip(sample.input_ids, sample.labels))
        trained, expected = trained_texts(tokenizer, sample.labels), expected_trained_texts(template, conversations)
        if sentencepiece:  # SentencePiece decoding drops word-start markers at the start of a run
            trained, expected = [t.lstrip(" ") for t in trained], [t.lstrip(" ") for t in expected]
        assert trained == expected, conversations
        equal += 1
    # Only an answer whose leading whitespace merges with the template's own into one token is refused,
    # by an error that names its turn.
    assert all("merge with the template's text" in message and message.startswith("conversations[")
               for message in refused), refused[:3]
    assert equal >= 0.9 * RECORDS_PER_FAMILY, (equal, refused[:3])


@pytest.mark.parametrize(("family", "template"), CASES)
def test_a_saved_processor_gives_the_training_ids_again(tokenizers_by_family, family: str, template: str,
                                                       tmp_path: Path) -> None:
    """Every checkpoint and export saves the processor; generate, eval, export and a resumed run read it back.
    Before, a Llama tokenizer with legacy=True (Mistral-7B's, older Llama conversions) came back from
    transformers 5's save as legacy=False: other ids for the same prompt ("</s>USER" is one token less), unsaid."""
    from test_processor import tiny_config

    from fila_train.processing.processor import FilaProcessor, load_processor

    config = tiny_config(template)
    trained = FilaProcessor.for_model(tokenizers_by_family(family), config)
    trained.save_pretrained(tmp_path)
    served = load_processor(tmp_path, config)
    compared = 0
    for conversations, counts in generated_records(seed=zlib.crc32(f"saved/{family}/{template}".encode()), count=60):
        try:
            expected = trained.conversations.encode(conversations, counts)
        except ConversationError:
            continue
        assert served.conversations.encode(conversations, counts).input_ids == expected.input_ids, conversations
        compared += 1
    assert compared >= 50


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_a_run_stops_before_its_weights_when_its_tokenizer_would_not_read_back_alike(tokenizers_by_family, family,
                                                                                     monkeypatch):
    """The run checks up front that its tokenizer, saved and read back as checkpoints are, gives the same ids:
    it passes for every family here, and stops a run (one line, before the weights) where the save would drop a
    setting, as transformers 5 drops legacy=True when nothing writes it back."""
    from fila_train.processing import saved_tokenizer
    from fila_train.utils.errors import ConfigError

    template = FAMILIES[family][0][-1]
    conversations = ConversationTokenizer(tokenizers_by_family(family), get_template(template), IMAGE_TOKEN_ID)
    saved_tokenizer.check_saved_alike(conversations)
    if family == "llama2-fast-legacy":
        monkeypatch.setattr(saved_tokenizer, "keep_tokenizer_settings", lambda tokenizer, folder: None)
        with pytest.raises(ConfigError, match=r"is read back from its own save_pretrained with other ids") as error:
            saved_tokenizer.check_saved_alike(conversations)
        assert "\n" not in str(error.value)

"""A tiny byte-level BPE tokenizer trained locally on the demo corpus (no downloads).

Design choices:

* Byte-level pre-tokenizer + ByteLevel decoder: every string is encodable (no ``<unk>`` in
  practice) and ``decode(encode(text)) == text`` including spaces and newlines.
* ``add_prefix_space=False``: a word at the very start of a string is tokenized without the
  leading-space marker, exactly like GPT-2/Llama-3 style tokenizers; a word after a space is
  always the same ``Ġword`` tokens regardless of what precedes it.
* Special tokens (``<s>``, ``</s>``, chat-template markers, ...) are registered as added tokens,
  so they are matched verbatim inside text *before* pre-tokenization and become a single id.
* ``add_special_tokens=True`` adds nothing (``add_bos_token=False``/``add_eos_token=False``):
  the chat templates insert BOS/EOS/turn markers explicitly, and an implicit BOS would be
  duplicated or land in the middle of a concatenated conversation.
* ``clean_up_tokenization_spaces=False``: the legacy cleanup rewrites " ," / " ?" and would
  break exact decode round-trips.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import AutoTokenizer, PreTrainedTokenizerFast

UNK, BOS, EOS, PAD = "<unk>", "<s>", "</s>", "<pad>"
CHAT_SPECIAL_TOKENS = (
    "<|im_start|>",
    "<|im_end|>",
    "<|begin_of_text|>",
    "<|start_header_id|>",
    "<|end_header_id|>",
    "<|eot_id|>",
)
SPECIAL_TOKENS = (UNK, BOS, EOS, PAD, *CHAT_SPECIAL_TOKENS)  # ids 0..9 in this order


def _train_backend(corpus_files: Sequence[str | Path], vocab_size: int) -> Tokenizer:
    backend = Tokenizer(models.BPE())  # byte-level: no unk needed, every byte is in the alphabet
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=2,
        special_tokens=list(SPECIAL_TOKENS),
        # All 256 byte symbols, so characters absent from the small corpus still round-trip.
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    backend.train([str(f) for f in corpus_files], trainer)
    return backend


def build_demo_tokenizer(
    corpus_files: Sequence[str | Path], output_dir: str | Path, vocab_size: int = 1024
) -> PreTrainedTokenizerFast:
    """Train a byte-level BPE tokenizer on ``corpus_files``, save it to ``output_dir`` with
    ``save_pretrained`` and return it reloaded through ``AutoTokenizer.from_pretrained``."""
    if vocab_size < len(SPECIAL_TOKENS) + 256:
        raise ValueError(f"vocab_size must be >= {len(SPECIAL_TOKENS) + 256} (specials + byte alphabet)")
    wrapped = PreTrainedTokenizerFast(
        tokenizer_object=_train_backend(corpus_files, vocab_size),
        unk_token=UNK,
        bos_token=BOS,
        eos_token=EOS,
        pad_token=PAD,
        extra_special_tokens=list(CHAT_SPECIAL_TOKENS),
        add_bos_token=False,
        add_eos_token=False,
        clean_up_tokenization_spaces=False,
        padding_side="right",
    )
    wrapped.save_pretrained(str(output_dir))
    # Reload through the real loading path so callers see exactly what training will see.
    return AutoTokenizer.from_pretrained(str(output_dir))

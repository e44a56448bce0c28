"""A tokenizer without a pad token gets one of its own that is never trained (anchors.md, silent failure 2:
LLaVA pads with unk, which Llama-3 does not have), and the LLM keeps its shape wherever it can.

The real Llama-2 tokenizer has no pad token. On an LLM with exactly its 32000 rows, '<pad>' is id 32000 and
the embeddings and head grow by one row; the logits of every existing token stay as they were, and the
saved model loads back with that vocabulary. On an LLM padded past its tokenizer (Phi-2 has 51200 rows for
50295 tokens; many pad to a multiple of 64), the new id already has a row: nothing is resized.
"""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
from transformers import AutoTokenizer

from distributed_utils import LLAMA2_DIR, build_tiny_model
from fila_train.demo.tiny_models import save_tiny_llm
from fila_train.model.builder import load_tokenizer

LLAMA2_TOKENS = 32000


@pytest.fixture(scope="module")
def llama2_tokenizer():
    tokenizer = AutoTokenizer.from_pretrained(str(LLAMA2_DIR))
    assert tokenizer.pad_token is None and len(tokenizer) == LLAMA2_TOKENS  # the case under test
    return tokenizer


def model_with_rows(tiny_assets, tokenizer, rows: int, folder: Path):
    llm = save_tiny_llm(folder / "llm", tokenizer, hidden_size=64, vocab_size=rows)
    return build_tiny_model(tiny_assets, hybrid=False, fuser=False, extra={"model_name_or_path": str(llm)}), llm


def existing_token_logits(model) -> torch.Tensor:
    ids = torch.tensor([[1, 450, 2910, 338, 29871, 13, 31999, 2]])  # bos, words, the last id, eos
    with torch.no_grad():
        return model.language_model(input_ids=ids).logits[..., :LLAMA2_TOKENS]


def rows_of(model) -> tuple[int, int, int]:
    llm = model.language_model
    return (llm.get_input_embeddings().weight.shape[0], llm.get_output_embeddings().weight.shape[0],
            model.config.text_config.vocab_size)


def test_a_dedicated_pad_token_grows_an_exact_vocabulary_by_one_row(tiny_assets, llama2_tokenizer, tmp_path):
    model, llm = model_with_rows(tiny_assets, llama2_tokenizer, LLAMA2_TOKENS, tmp_path)
    before = existing_token_logits(model)
    tokenizer = load_tokenizer(str(llm), model, 512)
    assert tokenizer.pad_token == "<pad>" and tokenizer.pad_token_id == LLAMA2_TOKENS
    assert tokenizer.pad_token_id not in (tokenizer.unk_token_id, tokenizer.bos_token_id, tokenizer.eos_token_id)
    assert rows_of(model) == (LLAMA2_TOKENS + 1,) * 3
    assert torch.equal(existing_token_logits(model), before)
    # Saved as a run saves it, the model and its tokenizer load back together, with nothing left to add.
    model.save_pretrained(tmp_path / "saved")
    tokenizer.save_pretrained(tmp_path / "saved")
    from fila_train.model.modeling import FilaForConditionalGeneration

    loaded = FilaForConditionalGeneration.from_pretrained(tmp_path / "saved")
    assert load_tokenizer(str(tmp_path / "saved"), loaded, 512).pad_token_id == LLAMA2_TOKENS
    assert rows_of(loaded) == (LLAMA2_TOKENS + 1,) * 3
    assert torch.equal(existing_token_logits(loaded), before)


def test_an_llm_padded_past_its_tokenizer_keeps_its_rows(tiny_assets, llama2_tokenizer, tmp_path):
    rows = LLAMA2_TOKENS + 64
    model, llm = model_with_rows(tiny_assets, llama2_tokenizer, rows, tmp_path)
    embeddings = model.language_model.get_input_embeddings().weight.detach().clone()
    tokenizer = load_tokenizer(str(llm), model, 512)
    assert tokenizer.pad_token_id == LLAMA2_TOKENS < rows
    assert rows_of(model) == (rows,) * 3
    assert torch.equal(model.language_model.get_input_embeddings().weight, embeddings)

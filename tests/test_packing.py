"""Padding-free packing (--packing): a packed batch trains exactly what the padded batch trains.

Per-sample losses (summed token NLL) of a packed row equal those of the padded batch, for the
plain CLIP and the FILA hybrid composite, with samples of very different lengths and a
text-only one; eager and sdpa attention agree on the packed row; a 2-process ZeRO-2 run with
--packing learns. Tiny models (distributed_utils), CPU fp32; ~30 s, most of it the torchrun.
"""
from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F
from distributed_utils import (  # noqa: F401  (assets is a fixture)
    assert_loss_falls,
    assets,
    build_tiny_model,
    distributed_train,
    train_args,
)

from fila_train.data.collator import ConversationCollator
from fila_train.data.dataset import ConversationDataset, DatasetOptions
from fila_train.data.packing import PackingCollator, build_collator, flash_attention_kwargs
from fila_train.processing.chat_templates import get_template
from fila_train.processing.conversations import IGNORE_INDEX
from fila_train.processing.tokenization import ConversationTokenizer
from fila_train.model.builder import build_model, load_tokenizer

QUESTION = "What is written in the document?"
LONG_ANSWER = ("The document is a receipt from a small shop listing several items with their prices, "
               "a subtotal, the tax and the total amount paid, followed by the date and the cashier name.")


def records(image_names: list[str]) -> list[dict]:
    """Very different lengths: a one-word answer, a long multi-turn chat, text only, two images."""
    turn = lambda who, text: {"from": who, "value": text}  # noqa: E731
    return [
        {"id": "short", "image": image_names[0],
         "conversations": [turn("human", "<image>\nYes?"), turn("gpt", "Yes.")]},
        {"id": "long", "image": image_names[1],
         "conversations": [turn("human", f"<image>\n{QUESTION}"), turn("gpt", LONG_ANSWER)]
         + [turn(who, text) for _ in range(4) for who, text in (("human", QUESTION), ("gpt", LONG_ANSWER))]},
        {"id": "text", "conversations": [turn("human", "Name a colour."), turn("gpt", "Blue, like the sky.")]},
        {"id": "two_images", "image": image_names[2:4],
         "conversations": [turn("human", "<image>\n<image>\nSame?"), turn("gpt", "They differ in layout.")]},
    ]


@pytest.fixture(scope="module")
def annotation_file(assets, tmp_path_factory):  # noqa: F811
    names = sorted(p.name for p in assets.image_folder.iterdir())[:4]
    path = tmp_path_factory.mktemp("packing") / "mixed.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in records(names)))
    return path


def samples_for(model, assets, annotation_file, ids=None) -> tuple[list[dict], int]:  # noqa: F811
    tokenizer = load_tokenizer(str(assets.llm), model, 2048)
    dataset = ConversationDataset(
        annotation_file, assets.image_folder,
        ConversationTokenizer(tokenizer, get_template("vicuna_v1"), model.config.image_token_id),
        model.image_processor(), DatasetOptions(2048))
    samples = [dataset[i] for i in range(len(dataset))]
    return [s for s in samples if ids is None or s["id"] in ids], tokenizer.pad_token_id


def token_nll(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """[R, T] NLL of the label each position predicts (labels[t + 1]); 0 where there is none."""
    targets = F.pad(labels[:, 1:], (0, 1), value=IGNORE_INDEX)
    return F.cross_entropy(logits.transpose(1, 2), targets, ignore_index=IGNORE_INDEX, reduction="none")


def without_ids(batch: dict) -> dict:
    return {k: v for k, v in batch.items() if k != "sample_ids"}


@torch.no_grad()
def padded_losses(model, samples, pad_id) -> tuple[torch.Tensor, torch.Tensor]:
    batch = without_ids(ConversationCollator(pad_id, model.image_processor())(samples))
    out = model(**batch)
    return token_nll(out.logits, batch["labels"]).sum(dim=1), out.loss


@torch.no_grad()
def packed_losses(model, samples, pad_id) -> tuple[torch.Tensor, torch.Tensor]:
    batch = without_ids(PackingCollator(pad_id, model.image_processor())(samples))
    out = model(**batch)
    position = batch["position_ids"][0]
    sample_of = (position == 0).cumsum(0) - 1
    nll = token_nll(out.logits, batch["labels"])[0]
    return torch.zeros(len(samples)).index_add_(0, sample_of, nll), out.loss


@pytest.mark.parametrize("hybrid", [False, True], ids=["clip", "fila_hybrid"])
def test_packed_losses_equal_padded_per_sample(assets, annotation_file, hybrid):  # noqa: F811
    model = build_tiny_model(assets, hybrid=hybrid, fuser=False).eval()
    samples, pad_id = samples_for(model, assets, annotation_file)
    lengths = [len(s["input_ids"]) for s in samples]
    assert max(lengths) > 5 * min(lengths), lengths  # very different lengths (the system prompt is ~90)
    assert [len(s["images"]) for s in samples] == [1, 1, 0, 2]

    padded, padded_loss = padded_losses(model, samples, pad_id)
    packed, packed_loss = packed_losses(model, samples, pad_id)
    assert (padded > 0).all()
    torch.testing.assert_close(packed, padded, rtol=1e-5, atol=1e-5)
    # The model's own loss (what the trainer optimises): the mean over the same trained tokens.
    torch.testing.assert_close(packed_loss, padded_loss, rtol=1e-6, atol=1e-6)


def test_packed_batch_layout(assets, annotation_file):  # noqa: F811
    model = build_tiny_model(assets, hybrid=True, fuser=False)
    samples, pad_id = samples_for(model, assets, annotation_file)
    batch = PackingCollator(pad_id, model.image_processor())(samples)
    lengths = [len(s["input_ids"]) for s in samples]
    assert "attention_mask" not in batch  # transformers only looks at position_ids without one
    assert batch["input_ids"].shape == batch["labels"].shape == batch["position_ids"].shape == (1, sum(lengths))
    assert not (batch["input_ids"] == pad_id).any()
    assert torch.equal(batch["input_ids"][0], torch.cat([s["input_ids"] for s in samples]))
    starts = [0, *torch.tensor(lengths).cumsum(0)[:-1].tolist()]
    assert torch.nonzero(batch["position_ids"][0] == 0).flatten().tolist() == starts
    assert (batch["labels"][0, starts] == IGNORE_INDEX).all()
    # Images stay in sample order: the padded collator gives the same image batch.
    padded = ConversationCollator(pad_id, model.image_processor())(samples)
    assert torch.equal(batch["images"]["pixel_values"], padded["images"]["pixel_values"])
    assert not batch["images_are_placeholders"] and batch["sample_ids"] == [s["id"] for s in samples]

    text_only = PackingCollator(pad_id, model.image_processor())([s for s in samples if not s["images"]])
    assert text_only["images_are_placeholders"]


def test_flash_attention_kwargs_mark_the_boundaries():
    kwargs = flash_attention_kwargs([5, 1, 3])
    assert kwargs["cu_seq_lens_q"].tolist() == kwargs["cu_seq_lens_k"].tolist() == [0, 5, 6, 9]
    assert kwargs["cu_seq_lens_q"].dtype == torch.int32
    assert kwargs["max_length_q"] == kwargs["max_length_k"] == 5
    assert isinstance(build_collator(True, "flash_attention_2", 0, None), PackingCollator)
    assert build_collator(True, "flash_attention_2", 0, None).flash_attn_kwargs
    assert not build_collator(True, "sdpa", 0, None).flash_attn_kwargs
    assert type(build_collator(False, "sdpa", 0, None)) is ConversationCollator


def test_eager_and_sdpa_agree_on_packed_rows(assets, annotation_file):  # noqa: F811
    losses = {}
    for attention in ("eager", "sdpa"):
        torch.manual_seed(0)  # the same fresh connector for both
        model = build_model(str(assets.llm), str(assets.clip), attn_implementation=attention).eval()
        assert model.language_model.config._attn_implementation == attention
        samples, pad_id = samples_for(model, assets, annotation_file)
        losses[attention], _ = packed_losses(model, samples, pad_id)
    torch.testing.assert_close(losses["eager"], losses["sdpa"], rtol=1e-5, atol=1e-5)


def test_packed_training_run_learns(assets, tmp_path):  # noqa: F811
    """2 processes, ZeRO-2, FILA hybrid, stage 2 (LLM tuned) with --packing: the loss falls."""
    args = train_args(assets, hybrid=True, fuser=False, stage=2, zero=2, steps=8) + ["--packing", "True"]
    summary = distributed_train(args, tmp_path / "packed")
    assert_loss_falls(summary)
    assert "--packing with attn_implementation=sdpa" in summary["log"]

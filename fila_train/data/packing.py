"""Padding-free packing: a batch's samples concatenated into one row, attention kept per sample.

``position_ids`` restart at 0 for every sample; that is how transformers finds the sample
boundaries. ``flash_attention_2`` runs varlen attention on them (as with
``DataCollatorWithFlattening``); ``sdpa`` / ``eager`` get a block-diagonal causal mask from
``masking_utils.find_packed_sequence_indices``, which only looks at ``position_ids`` when no
``attention_mask`` and no KV cache is given -- so a packed batch carries no mask (it has no
padding) and ``use_cache=False``.
The first label of every sample is -100, so no token is trained to predict across a boundary.
Images of all samples stay in sample order, so the model's one ``masked_scatter`` fills them in.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from itertools import accumulate
from typing import Any

import torch

from .collator import ConversationCollator
from ..processing.conversations import IGNORE_INDEX

logger = logging.getLogger(__name__)


def packed_text(samples: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
    """input_ids, labels, position_ids of shape [1, total tokens], samples back to back."""
    labels = []
    for sample in samples:
        sample_labels = sample["labels"].clone()
        sample_labels[0] = IGNORE_INDEX  # its target would be predicted from the previous sample's last token
        labels.append(sample_labels)
    return {
        "input_ids": torch.cat([s["input_ids"] for s in samples]).unsqueeze(0),
        "labels": torch.cat(labels).unsqueeze(0),
        "position_ids": torch.cat([torch.arange(len(s["input_ids"])) for s in samples]).unsqueeze(0),
    }


def flash_attention_kwargs(lengths: list[int]) -> dict[str, Any]:
    """Sample boundaries as flash-attention varlen arguments: computed once here, transformers
    would otherwise derive them from position_ids in every layer (a device sync each time)."""
    cu_seq_lens = torch.tensor([0, *accumulate(lengths)], dtype=torch.int32)
    return {"cu_seq_lens_q": cu_seq_lens, "cu_seq_lens_k": cu_seq_lens,
            "max_length_q": max(lengths), "max_length_k": max(lengths)}


@dataclass
class PackingCollator(ConversationCollator):
    """ConversationCollator's batch (images, placeholders, sample ids) with packed text fields."""

    flash_attn_kwargs: bool = False  # add cu_seq_lens / max_length (flash_attention_* only)

    def __call__(self, samples: list[dict[str, Any]]) -> dict[str, Any]:
        # The padded text tensors built by the parent are small next to the images; they are
        # replaced, so images and placeholders are batched by exactly one piece of code.
        batch = super().__call__(samples)
        del batch["attention_mask"]
        batch.update(packed_text(samples))
        # transformers only detects packing when there is no KV cache; an LLM config with
        # use_cache=True would otherwise create one and silently run a plain causal mask.
        batch["use_cache"] = False
        if self.flash_attn_kwargs:
            batch.update(flash_attention_kwargs([len(s["input_ids"]) for s in samples]))
        return batch


def build_collator(packing: bool, attn_implementation: str, pad_token_id: int,
                   image_processor: Any) -> ConversationCollator:
    """The training collator: padded rows, or (``--packing``) one packed row per batch."""
    if not packing:
        return ConversationCollator(pad_token_id, image_processor)
    flash = attn_implementation.startswith("flash_attention")
    if not flash:
        logger.warning("--packing with attn_implementation=%s: attention is masked block-diagonally, but "
                       "it still computes (and materialises a mask over) the whole packed row, quadratic "
                       "in its length; flash_attention_2 skips the masked blocks", attn_implementation)
    return PackingCollator(pad_token_id, image_processor, flash_attn_kwargs=flash)

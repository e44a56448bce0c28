"""Batching: right-pad ids (labels with -100), batch all images of the batch in order."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from PIL import Image

from ..processing.conversations import IGNORE_INDEX


@dataclass
class ConversationCollator:
    pad_token_id: int
    image_processor: Any

    def __post_init__(self) -> None:
        if self.pad_token_id is None:
            raise ValueError("the tokenizer has no pad token: give it one (load_tokenizer adds '<pad>') "
                             "before building the collator")

    def __call__(self, samples: list[dict[str, Any]]) -> dict[str, Any]:
        length = max(len(s["input_ids"]) for s in samples)
        input_ids = torch.full((len(samples), length), self.pad_token_id, dtype=torch.long)
        labels = torch.full((len(samples), length), IGNORE_INDEX, dtype=torch.long)
        attention_mask = torch.zeros((len(samples), length), dtype=torch.long)
        for row, sample in enumerate(samples):
            n = len(sample["input_ids"])
            input_ids[row, :n] = sample["input_ids"]
            labels[row, :n] = sample["labels"]
            attention_mask[row, :n] = 1
        processed = [image for sample in samples for image in sample["images"]]
        placeholders = not processed
        if placeholders:
            # Text-only batch: one blank image keeps the vision path (and its collectives) running.
            processed = [self.image_processor(Image.new("RGB", (32, 32)))]
        return {
            "input_ids": input_ids,
            "labels": labels,
            "attention_mask": attention_mask,
            "images": self.image_processor.collate(processed),
            "images_are_placeholders": placeholders,
            "sample_ids": [s["id"] for s in samples],
            # (kind, record) of the records skipped to reach these samples (counted by the trainer, so
            # skips made inside dataloader workers are not lost).
            "skipped": [skip for s in samples for skip in s.get("skipped", [])],
        }

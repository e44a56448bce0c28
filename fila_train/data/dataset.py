"""LLaVA conversation records -> model-ready samples (ids, final labels, processed images)."""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import Dataset

from .annotations import AnnotationFile
from .images import load_rgb_image, resolve_image_path
from .tokenization import ConversationTokenizer

logger = logging.getLogger(__name__)

OVERLONG_POLICIES = ("drop", "error")


class SampleError(ValueError):
    """A record that cannot be trained on; the message names file, record and field."""


@dataclass
class DatasetOptions:
    max_length: int
    on_overlong: str = "drop"  # "drop": replace by the next sample and count it; "error": raise

    def __post_init__(self) -> None:
        if self.on_overlong not in OVERLONG_POLICIES:
            raise ValueError(f"on_overlong must be one of {OVERLONG_POLICIES}, got {self.on_overlong!r}")


class ConversationDataset(Dataset):
    """Reads one annotation file lazily; a sample is built only when it is asked for."""

    def __init__(self, annotation_path: str | Path, image_folder: str | Path | None,
                 tokenizer: ConversationTokenizer, image_processor: Any, options: DatasetOptions):
        self.annotations = AnnotationFile(annotation_path)
        self.image_folder = Path(image_folder) if image_folder else None
        self.tokenizer = tokenizer
        self.image_processor = image_processor
        self.options = options
        self.dropped_overlong = 0

    def __len__(self) -> int:
        return len(self.annotations)

    def _images(self, record: dict, where: str) -> list:
        field = record.get("image")
        if field is None:
            return []
        paths = field if isinstance(field, list) else [field]
        if not all(isinstance(p, str) and p for p in paths):
            raise SampleError(f"{where}: field 'image' must be a path or a list of paths")
        if self.image_folder is None:
            raise SampleError(f"{where}: the record has an image but no --image_folder was given")
        images = []
        for path in paths:
            try:
                images.append(load_rgb_image(resolve_image_path(self.image_folder, path)))
            except ValueError as error:
                raise SampleError(f"{where}: field 'image': {error}") from None
        return images

    def build(self, index: int) -> dict[str, Any]:
        """The sample at ``index``, or SampleError naming the file, record and field."""
        record = self.annotations[index]
        where = f"{self.annotations.location(index)} (id {record.get('id', '?')!r})"
        processed = [self.image_processor(image) for image in self._images(record, where)]
        counts = [self.image_processor.num_image_tokens(p) for p in processed]
        try:
            sample = self.tokenizer.encode(record.get("conversations"), counts)
        except ValueError as error:
            raise SampleError(f"{where}: {error}") from None
        if sample.num_trained == 0:
            raise SampleError(f"{where}: no token is trained (it would train with loss 0)")
        return {
            "id": str(record.get("id", index)),
            "input_ids": torch.tensor(sample.input_ids, dtype=torch.long),
            "labels": torch.tensor(sample.labels, dtype=torch.long),
            "images": processed,
            "where": where,
        }

    def __getitem__(self, index: int) -> dict[str, Any]:
        # Over-long samples are never cut (that loses answers or image tokens): they are
        # replaced by the next sample in file order, deterministically, and counted.
        for offset in range(len(self)):
            sample = self.build((index + offset) % len(self))
            length = len(sample["input_ids"])
            if length <= self.options.max_length:
                return sample
            if self.options.on_overlong == "error":
                raise SampleError(f"{sample['where']}: {length} tokens after image expansion exceed "
                                  f"model_max_length {self.options.max_length}")
            self.dropped_overlong += 1
            logger.warning("dropped over-long sample %s: %d tokens > model_max_length %d "
                           "(%d dropped so far in this process)", sample["where"], length,
                           self.options.max_length, self.dropped_overlong)
        raise SampleError(f"{self.annotations.path}: every sample exceeds model_max_length "
                          f"{self.options.max_length}")

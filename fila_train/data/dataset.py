"""LLaVA conversation records -> model-ready samples (ids, final labels, processed images).

An unusable record is an error naming file, line/index, record id and field, or, with
``on_bad_sample="skip"``, it is replaced by another record and counted by kind. The skipped
records travel with the sample (``skipped``) so skips made in dataloader workers reach the trainer.
"""
from __future__ import annotations

import logging
import math
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from ..utils.errors import ConfigError, DataRecordError
from .annotations import AnnotationChangedError, AnnotationError, AnnotationSet
from .images import DEFAULT_MAX_PIXELS, ImageLoadError, load_rgb_image, resolve_image_path
from .sampler import image_side
from ..processing.tokenization import ConversationTokenizer
from .validation import RecordError, check_caption_record, check_record

logger = logging.getLogger(__name__)

OVERLONG_POLICIES = ("drop", "error")
BAD_SAMPLE_POLICIES = ("error", "skip")


class SampleError(DataRecordError):
    """A record that cannot be trained on; the message names file, record and field."""


@dataclass
class DatasetOptions:
    max_length: int
    on_overlong: str = "drop"  # "drop": replace by another sample and count it; "error": raise
    on_bad_sample: str = "error"  # "skip": replace by another sample and count it by kind
    max_image_pixels: int | None = DEFAULT_MAX_PIXELS

    def __post_init__(self) -> None:
        if self.on_overlong not in OVERLONG_POLICIES:
            raise ConfigError(f"on_overlong must be one of {OVERLONG_POLICIES}, got {self.on_overlong!r}")
        if self.on_bad_sample not in BAD_SAMPLE_POLICIES:
            raise ConfigError(f"on_bad_sample must be one of {BAD_SAMPLE_POLICIES}, got {self.on_bad_sample!r}")


# Skips of one kind that each process warns of, naming the record; the rest are counted (the run's end gives the
# total over all ranks), so 1% bad records do not fill the progress bar with a warning per step.
SKIPS_WARNED = 5


def replacement_order(index: int, size: int) -> Iterator[int]:
    """``index``, then every other position of ``size`` once, in an order drawn from ``index`` (a random start
    and a stride prime to ``size``): the replacements of a run of bad records spread over the data. The next
    position instead piled a whole bad source onto the one record after it."""
    yield index
    if size < 2:
        return
    rng = np.random.default_rng(index)  # from the index alone: a resumed run rebuilds the same samples
    stride = int(rng.integers(1, size))
    while math.gcd(stride, size) != 1:
        stride = int(rng.integers(1, size))
    start = int(rng.integers(size))
    for step in range(size):
        position = (start + step * stride) % size
        if position != index:
            yield position


class ReplacesUnusableSamples(Dataset):
    """``__getitem__`` for datasets whose unusable samples are replaced by others.

    Never cut (that loses answers or image tokens), never trained with loss 0: an over-long
    or (when skipping) bad sample is replaced by a usable one drawn deterministically from its
    position (replacement_order). An unusable record is built once per process, counted and
    logged once, and remembered; the samples that replace it carry (kind, record) so the run
    counts each bad record once, whichever ranks, workers and epochs met it.
    """

    options: DatasetOptions

    def __init__(self) -> None:
        self.skip_counts: Counter[str] = Counter()  # distinct unusable records met in this process, by kind
        self.unusable: dict[str, str] = {}  # record_key -> kind
        # Signed lengths (+ image, - text-only, 0 unusable) when batches are grouped by modality:
        # a replacement is then drawn from the same side (sampler.image_side) as the position it replaces.
        self._modality_lengths: np.ndarray | None = None
        self._image_side: np.ndarray | None = None

    def build(self, index: int) -> dict[str, Any]:
        raise NotImplementedError

    def record_key(self, index: int) -> str:
        """The record at ``index``, the same for every position that holds it (a mixture repeats records)."""
        raise NotImplementedError

    @property
    def modality_lengths(self) -> np.ndarray | None:
        return self._modality_lengths

    @modality_lengths.setter
    def modality_lengths(self, lengths: np.ndarray | None) -> None:
        self._modality_lengths = lengths
        self._image_side = None if lengths is None else image_side(lengths)

    @property
    def dropped_overlong(self) -> int:
        return self.skip_counts["overlong"]

    def _skip(self, kind: str, key: str, message: str) -> None:
        self.unusable[key] = kind
        self.skip_counts[kind] += 1
        count = self.skip_counts[kind]
        further = (f"; further {kind} skips in this process are counted, and logged at debug level"
                   if count == SKIPS_WARNED else "")
        logger.log(logging.WARNING if count <= SKIPS_WARNED else logging.DEBUG,
                   "skipped sample (%s): %s (%d %s skipped so far in this process%s)", kind, message, count, kind,
                   further)

    def __getitem__(self, index: int) -> dict[str, Any]:
        skipped: list[tuple[str, str]] = []
        for position in replacement_order(index, len(self)):
            if position != index and not self._same_modality(index, position):
                continue  # image and text-only samples never share a grouped batch, even after a skip
            key = self.record_key(position)
            if key not in self.unusable:
                sample = self._usable_sample(position, key)
                if sample is not None:
                    sample["skipped"] = skipped
                    return sample
            skipped.append((self.unusable[key], key))
        if set(self.unusable.values()) == {"overlong"}:
            raise SampleError(f"{self.describe()}: every sample exceeds model_max_length "
                              f"{self.options.max_length}", "overlong")
        side, why = "", ""
        if self._image_side is not None:  # the other side may be fine: say which one ran out
            side = " with an image" if self._image_side[index] else " without an image"
            why = ("; batches are grouped by modality (--group_by_modality_length), so a skipped sample is "
                   "replaced only from its own side")
        raise SampleError(f"no usable sample{side} in {self.describe()}: every record{side} was skipped "
                          f"({dict(self.skip_counts)}){why}", "no_usable_sample")

    def _usable_sample(self, position: int, key: str) -> dict[str, Any] | None:
        """The sample at ``position``, or None once it is skipped (by the policies) and remembered as unusable."""
        try:
            sample = self.build(position)
        except SampleError as error:
            if self.options.on_bad_sample != "skip":
                raise
            self._skip(error.kind, key, str(error))
            return None
        length = len(sample["input_ids"])
        if length <= self.options.max_length:
            return sample
        message = (f"{sample['where']}: {length} tokens after image expansion exceed "
                   f"model_max_length {self.options.max_length}")
        if self.options.on_overlong == "error":
            raise SampleError(message, "overlong")
        self._skip("overlong", key, message)
        return None

    def _same_modality(self, index: int, position: int) -> bool:
        if self._image_side is None:
            return True
        return bool(self._image_side[index]) == bool(self._image_side[position])

    def describe(self) -> str:
        return type(self).__name__


class ConversationDataset(ReplacesUnusableSamples):
    """One source: annotation file(s) read lazily; a sample is built only when it is asked for."""

    def __init__(self, annotation_path: str | Path | list[str | Path], image_folder: str | Path | None,
                 tokenizer: ConversationTokenizer, image_processor: Any, options: DatasetOptions,
                 allow_absolute_paths: bool = False, name: str | None = None):
        super().__init__()
        paths = annotation_path if isinstance(annotation_path, list) else [annotation_path]
        self.annotations = AnnotationSet(paths)
        self.image_folder = Path(image_folder) if image_folder else None
        self.tokenizer = tokenizer
        self.image_processor = image_processor
        self.options = options
        self.allow_absolute_paths = allow_absolute_paths
        self.name = name or Path(paths[0]).stem

    def __len__(self) -> int:
        return len(self.annotations)

    def record_key(self, index: int) -> str:
        return f"{self.name}#{index}"

    def describe(self) -> str:
        return f"source {self.name!r} ({', '.join(map(str, self.annotations.paths))})"

    def checked_record(self, index: int) -> tuple[dict, str, list[Path]]:
        """Record ``index``, where it is (file:line (id ...)), and its resolved image paths."""
        try:
            record = self.annotations[index]
        except AnnotationChangedError:
            raise  # the file's fault, not the record's: never skipped as one
        except AnnotationError as error:
            raise SampleError(str(error), "malformed_json") from None
        where = f"{self.annotations.location(index)} (id {record.get('id', '?')!r})"
        try:
            paths = check_record(record, where, allow_absolute_images=self.allow_absolute_paths)
            if not self.tokenizer.template.reads_human_text:
                check_caption_record(record, where, self.tokenizer.template.name, len(paths))
        except RecordError as error:
            raise SampleError(str(error), "invalid_record") from None
        if paths and self.image_folder is None:
            raise SampleError(f"{where}: the record has an image but no --image_folder (or mixture image_root) "
                              f"was given",
                              "invalid_record")
        return record, where, [resolve_image_path(self.image_folder, p, self.allow_absolute_paths) for p in paths]

    def build(self, index: int) -> dict[str, Any]:
        """The sample at ``index``, or SampleError naming the file, record and field."""
        record, where, paths = self.checked_record(index)
        try:
            images = [load_rgb_image(path, self.options.max_image_pixels, self.image_processor.decode_size)
                      for path in paths]
        except ImageLoadError as error:
            raise SampleError(f"{where}: field 'image': {error}", error.kind) from None
        processed = [self.image_processor(image) for image in images]
        counts = [self.image_processor.num_image_tokens(p) for p in processed]
        try:
            sample = self.tokenizer.encode(record["conversations"], counts)
        except DataRecordError as error:  # a tokenizer/template mismatch is not one record's fault
            raise SampleError(f"{where}: {error}", "invalid_record") from None
        if sample.num_trained == 0:
            raise SampleError(f"{where}: no token is trained (it would train with loss 0)", "nothing_trained")
        return {
            "id": str(record.get("id", index)),
            "input_ids": torch.tensor(sample.input_ids, dtype=torch.long),
            "labels": torch.tensor(sample.labels, dtype=torch.long),
            "images": processed,
            "where": where,
        }

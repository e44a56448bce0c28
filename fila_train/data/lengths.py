"""Real token lengths of every record (text tokens + the encoder's image-token expansion).

Used by the modality-length grouped sampler and ``fila-train data inspect``. Computed once
per (annotation files, tokenizer, template, processor) and cached as .npy: 665K LLaVA
records take minutes to tokenize, and every later run reads them in milliseconds.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from ..utils.errors import DataRecordError
from ..utils.files import replace_atomically
from ..utils.processes import share_temp_folder_with_workers
from .dataset import ConversationDataset, SampleError
from .images import ImageLoadError, image_size, load_rgb_image, require_file

logger = logging.getLogger(__name__)

DEFAULT_CACHE_DIR = Path.home() / ".cache" / "fila_train" / "lengths"


@dataclass
class RecordMeasure:
    length: int  # tokens after image expansion; positive with images, negative text-only (LLaVA's sign)
    image_sizes: list[tuple[int, int]]


# How measure_record looks at each image: decode it fully (finds truncated and corrupt files),
# read its header (size; finds files that are no image), or only check that the file exists.
IMAGE_CHECKS = ("decode", "header", "exists")


def measure_record(source: ConversationDataset, index: int, check: str | None = None) -> RecordMeasure:
    """Token count and image sizes of record ``index``; SampleError (with its kind) if unusable.

    ``check`` is one of IMAGE_CHECKS; by default the header when the encoder's token count depends
    on the image size (FILA's anyres canvas), else only the file's existence. A missing image is
    always found; sizes come with "decode" and "header".
    """
    if check is None:
        check = "header" if source.image_processor.image_size_matters else "exists"
    if check not in IMAGE_CHECKS:
        raise ValueError(f"check must be one of {IMAGE_CHECKS}, got {check!r}")
    record, where, paths = source.checked_record(index)
    max_pixels = source.options.max_image_pixels
    sizes = []
    for path in paths:
        try:
            if check == "decode":
                sizes.append(load_rgb_image(path, max_pixels).size)
            elif check == "header":
                sizes.append(image_size(path, max_pixels))
            else:
                require_file(path)
        except ImageLoadError as error:
            raise SampleError(f"{where}: field 'image': {error}", error.kind) from None
    counts = [source.image_processor.num_image_tokens_for_size(*size) for size in (sizes or [(0, 0)] * len(paths))]
    try:
        ids = source.tokenizer.encode(record["conversations"], counts).input_ids
    except DataRecordError as error:  # a tokenizer/template mismatch is not one record's fault
        raise SampleError(f"{where}: {error}", "invalid_record") from None
    return RecordMeasure(len(ids) if paths else -len(ids), sizes)


def record_length(source: ConversationDataset, index: int) -> int:
    return measure_record(source, index).length


def cache_key(source: ConversationDataset) -> str:
    tokenizer = source.tokenizer.tokenizer
    parts = {
        "files": [(str(p.resolve()), p.stat().st_size, p.stat().st_mtime_ns) for p in source.annotations.paths],
        "image_root": str(source.image_folder.resolve()) if source.image_folder else None,
        "tokenizer": [tokenizer.name_or_path, len(tokenizer), type(tokenizer).__name__],
        "template": source.tokenizer.template.name,
        "image_token_id": source.tokenizer.image_token_id,
        "processor": repr(source.image_processor),
        "max_image_pixels": source.options.max_image_pixels,
        "allow_absolute_paths": source.allow_absolute_paths,  # decides whether a record is usable
        # 2: missing images are unusable for every encoder; 3: whole-prompt tokenization; 4: cut surrogates and
        # invisible answers are unusable; 5: multi-turn or image-less records under plain are unusable; 6: a turn's
        # one image goes first (LLaVA's preprocess_multimodal)
        "version": 6,
    }
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:20]


# A large source is measured by worker processes: one process per node measures while the node's other ranks
# wait for it (at 0.8 ms a record, LLaVA-665K alone takes 9 minutes in one process, a 2M-record document
# mixture half the default 30-minute collective timeout).
PARALLEL_FROM_RECORDS = 5000
MAX_LENGTH_WORKERS = 16
LENGTHS_PER_BATCH = 256


class RecordLengths(Dataset):
    """Record index -> signed length; 0 for a record skipped under --on_bad_sample skip (a usable record has
    tokens). A DataLoader over it measures a source in ordered batches, in worker processes or in this one."""

    def __init__(self, source: ConversationDataset):
        self.source = source

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, index: int) -> int:
        try:
            return record_length(self.source, index)
        except SampleError:
            if self.source.options.on_bad_sample != "skip":
                raise
            return 0


def length_workers(records: int) -> int:
    if records < PARALLEL_FROM_RECORDS:
        return 0
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return min(cpus, MAX_LENGTH_WORKERS)


def compute_lengths(source: ConversationDataset, workers: int | None = None) -> np.ndarray:
    """Every record's signed length; a bad record raises, or is 0 (and counted) when skipping. ``workers``:
    processes that measure (0: this one); by default the CPUs, for a source of PARALLEL_FROM_RECORDS or more."""
    workers = length_workers(len(source)) if workers is None else workers
    share_temp_folder_with_workers(workers)
    loader = DataLoader(RecordLengths(source), batch_size=LENGTHS_PER_BATCH, num_workers=workers)
    batches = []
    with tqdm(total=len(source), desc=f"lengths {source.name}", unit="rec", mininterval=2,
              disable=len(source) < PARALLEL_FROM_RECORDS) as progress:
        try:
            for batch in loader:
                batches.append(batch.numpy())
                progress.update(len(batch))
        except SampleError as error:  # its frames would keep the loader's workers alive as long as the error
            raise error.with_traceback(None) from None
    lengths = np.concatenate(batches) if batches else np.zeros(0, dtype=np.int64)
    bad = int((lengths == 0).sum())
    if bad:
        logger.warning("source %s: %d record(s) are unusable (length 0); they will be skipped and counted "
                       "when drawn", source.name, bad)
    return lengths


def save_npy(path: str, array: np.ndarray) -> None:
    with open(path, "wb") as handle:  # np.save would add ".npy" to the temporary's name
        np.save(handle, array, allow_pickle=False)


def source_lengths(source: ConversationDataset, cache_dir: str | Path | None = DEFAULT_CACHE_DIR) -> np.ndarray:
    if cache_dir is None:
        return compute_lengths(source)
    path = Path(cache_dir) / f"{source.name}-{cache_key(source)}.npy"
    cached = np.load(path, allow_pickle=False) if path.is_file() else None
    if cached is not None and len(cached) == len(source) and cached.all():
        return cached
    # A skipping run's cache holds its unusable records as 0. Under "error" every record is measured again, so a
    # bad record still stops the run before it trains. Under skip those alone are (the key holds no image file):
    # one mended since (its image put back) was grouped with the text-only samples and hid from the over-long
    # check, in every later run.
    if cached is not None and len(cached) == len(source) and source.options.on_bad_sample == "skip":
        lengths = remeasured_unusable(source, cached)
        if lengths is cached:
            return cached
    else:
        lengths = compute_lengths(source)
    replace_atomically(path, lambda temporary: save_npy(temporary, lengths))  # readable as the umask allows
    logger.info("source %s: cached %d record lengths in %s", source.name, len(lengths), path)
    return lengths


def remeasured_unusable(source: ConversationDataset, lengths: np.ndarray) -> np.ndarray:
    """``lengths`` with its unusable records (0) measured again; the same array where none has changed."""
    unusable = np.flatnonzero(lengths == 0)
    again = RecordLengths(source)
    now = np.array([again[int(index)] for index in unusable], dtype=lengths.dtype)
    if not now.any():
        return lengths
    mended = lengths.copy()
    mended[unusable] = now
    logger.info("source %s: %d of its %d unusable record(s) are usable now", source.name, int((now != 0).sum()),
                len(unusable))
    return mended

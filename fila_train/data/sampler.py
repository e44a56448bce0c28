"""Modality-length grouped sampling (LLaVA's ``group_by_modality_length``, on real token counts).

Image and text-only samples never share a batch (a text-only batch would otherwise run the
vision side on a placeholder beside real images), and samples of similar length are batched
together so little compute goes to padding. The order is a pure function of (lengths, seed,
epoch): identical on every rank, and a resumed run skips into the same sequence.
"""
from __future__ import annotations

import numpy as np
from torch.utils.data import Sampler

STEPS_PER_GROUP = 50  # steps whose samples are sorted together: wider groups, narrower batches


def image_side(lengths: np.ndarray) -> np.ndarray:
    """Which positions are batched with the image samples, from signed lengths (+ image, - text-only, 0 unusable).

    An unusable record (0) is replaced by a usable one of its batch's side when drawn, so it goes with the
    text-only samples only where there are some: in data where every record has an image (LLaVA's captions) that
    side was empty, and the first missing image stopped a skipping run. The sampler and the dataset's
    replacements both decide by this, so they agree."""
    lengths = np.asarray(lengths)
    return lengths > 0 if (lengths < 0).any() else lengths >= 0


def _even_chunks(indices: np.ndarray, lengths: np.ndarray, parts: int) -> list[list[int]]:
    """Split ``indices`` (longest first) into ``parts`` equal-size chunks of similar total length."""
    if len(indices) % parts:
        return [indices[i::parts].tolist() for i in range(parts)]
    size = len(indices) // parts
    chunks: list[list[int]] = [[] for _ in range(parts)]
    totals = [0] * parts
    for index in indices:
        open_chunks = [c for c in range(parts) if len(chunks[c]) < size]
        target = min(open_chunks, key=lambda c: totals[c])
        chunks[target].append(int(index))
        totals[target] += int(lengths[index])
    return chunks


def length_grouped(indices: np.ndarray, lengths: np.ndarray, step: int, world_size: int,
                   rng: np.random.Generator, steps_per_group: int = STEPS_PER_GROUP) -> list[list[int]]:
    """Steps of ``step`` (= world_size x batch) samples of similar length, split evenly across ranks.

    Random groups of ``steps_per_group`` steps are sorted by length and cut into consecutive
    steps (as HF's LengthGroupedSampler does with its megabatches): each step's batches are
    then narrow in length, and every rank in a step gets a similar number of tokens.
    """
    shuffled = rng.permutation(indices)
    steps = []
    for start in range(0, len(shuffled), step * steps_per_group):
        group = shuffled[start:start + step * steps_per_group]
        group = group[np.argsort(-lengths[group], kind="stable")]
        for offset in range(0, len(group), step):
            chunk = group[offset:offset + step]
            steps.append([i for part in _even_chunks(chunk, lengths, world_size) for i in part])
    return steps


class ModalityLengthGroupedSampler(Sampler[int]):
    """``lengths``: signed token counts (+ with images, - text-only), as data.lengths computes them."""

    def __init__(self, lengths: np.ndarray, batch_size: int, world_size: int, seed: int = 0):
        self.lengths = np.abs(np.asarray(lengths, dtype=np.int64))
        self.has_image = image_side(lengths)
        self.batch_size = batch_size
        self.world_size = world_size
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.lengths)

    def order(self) -> list[int]:
        rng = np.random.default_rng([self.seed, self.epoch])
        step = self.batch_size * self.world_size
        modalities = [np.flatnonzero(self.has_image), np.flatnonzero(~self.has_image)]
        steps: list[list[int]] = []
        leftovers: list[int] = []
        for indices in (m for m in modalities if len(m)):
            for chunk in length_grouped(indices, self.lengths, step, self.world_size, rng):
                # Partial steps (at most one per sorted group) are pooled and go last, as in LLaVA.
                if len(chunk) == step:
                    steps.append(chunk)
                else:
                    leftovers.extend(chunk)
        steps = [steps[i] for i in rng.permutation(len(steps))]
        leftovers.sort(key=lambda i: -self.lengths[i])
        steps.extend(leftovers[i:i + step] for i in range(0, len(leftovers), step))
        return [i for chunk in steps for i in chunk]

    def __iter__(self):
        return iter(self.order())

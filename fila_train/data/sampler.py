"""Modality-length grouped sampling (LLaVA's ``group_by_modality_length``, on real token counts).

Image and text-only samples never share a batch (a text-only batch would otherwise run the
vision side on a placeholder beside real images), and samples of similar length are batched
together so little compute goes to padding. The order is a pure function of (lengths, seed,
epoch): identical on every rank, and a resumed run skips into the same sequence.
"""
from __future__ import annotations

import numpy as np
from torch.utils.data import Sampler


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


def length_grouped(indices: np.ndarray, lengths: np.ndarray, megabatch: int, world_size: int,
                   rng: np.random.Generator) -> list[list[int]]:
    """Random megabatches (``world_size`` x batch), each sorted longest first and split across ranks."""
    shuffled = rng.permutation(indices)
    megabatches = []
    for start in range(0, len(shuffled), megabatch):
        chunk = shuffled[start:start + megabatch]
        chunk = chunk[np.argsort(-lengths[chunk], kind="stable")]
        megabatches.append([i for part in _even_chunks(chunk, lengths, world_size) for i in part])
    return megabatches


class ModalityLengthGroupedSampler(Sampler[int]):
    """``lengths``: signed token counts (+ with images, - text-only), as data.lengths computes them."""

    def __init__(self, lengths: np.ndarray, batch_size: int, world_size: int, seed: int = 0):
        self.lengths = np.abs(np.asarray(lengths, dtype=np.int64))
        self.has_image = np.asarray(lengths) > 0
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
        megabatch = self.batch_size * self.world_size
        groups = [np.flatnonzero(self.has_image), np.flatnonzero(~self.has_image)]
        groups = [g for g in groups if len(g)]
        megabatches: list[list[int]] = []
        leftovers: list[int] = []
        for group in groups:
            batches = length_grouped(group, self.lengths, megabatch, self.world_size, rng)
            if len(batches[-1]) < megabatch:  # partial megabatches of both modalities go last
                leftovers.extend(batches.pop())
            megabatches.extend(batches)
        megabatches = [megabatches[i] for i in rng.permutation(len(megabatches))]
        if leftovers:
            megabatches.append(sorted(leftovers, key=lambda i: -self.lengths[i]))
        return [i for batch in megabatches for i in batch]

    def __iter__(self):
        return iter(self.order())

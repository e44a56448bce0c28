"""A mixture of sources as one dataset: position -> (source, record) from the seeded plan."""
from __future__ import annotations

import hashlib
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from .dataset import ConversationDataset, DatasetOptions, ReplacesUnusableSamples
from .lengths import source_lengths
from .mixture import MixtureError, MixtureSpec, SourceSpec, resolve_plan
from ..processing.tokenization import ConversationTokenizer


def source_processor(processor: Any, source: SourceSpec, where: str) -> Any:
    """The model's image processor, with the source's canvas set / tile cap applied.

    Only a subset of the model's canvases is allowed: the model (and FILA's ConvNeXt, which
    runs once per configured canvas) knows no others.
    """
    if source.canvases is None and source.max_tiles is None:
        return processor
    anyres = getattr(processor, "anyres", None)
    if anyres is None:
        raise MixtureError(f"{where}: source {source.name!r} sets canvases/max_tiles, but the vision "
                           f"encoder's processor ({type(processor).__name__}) has no anyres canvases")
    canvases = source.canvases or anyres.canvases
    unknown = [f"{w}x{h}" for w, h in canvases if (w, h) not in anyres.canvases]
    if unknown:
        raise MixtureError(f"{where}: source {source.name!r}: canvases {unknown} are not among the model's "
                           f"canvases {[f'{w}x{h}' for w, h in anyres.canvases]}")
    if source.max_tiles is not None:
        tile = anyres.tile_size
        canvases = [(w, h) for w, h in canvases if (w // tile) * (h // tile) <= source.max_tiles]
        if not canvases:
            raise MixtureError(f"{where}: source {source.name!r}: no canvas has at most "
                               f"{source.max_tiles} tiles")
    return replace(processor, anyres=replace(anyres, canvases=tuple(canvases)))


class MixtureDataset(ReplacesUnusableSamples):
    """Every source is a ConversationDataset with its own image root, template and processor."""

    def __init__(self, spec: MixtureSpec, conversations: ConversationTokenizer, image_processor: Any,
                 options: DatasetOptions):
        """``conversations`` and ``image_processor``: a FilaProcessor's (``.conversations`` and
        ``.image_processor.encoder_processor``); a source may name another template or restrict canvases."""
        super().__init__()
        self.spec = spec
        self.options = options
        self.sources = [
            ConversationDataset(
                list(source.annotations), source.image_root,
                conversations.with_template(source.template or conversations.template.name),
                source_processor(image_processor, source, spec.describe()), options,
                allow_absolute_paths=source.allow_absolute_paths, name=source.name)
            for source in spec.sources]
        self.plan = resolve_plan(spec, [len(source) for source in self.sources])

    def __len__(self) -> int:
        return len(self.plan)

    def records_fingerprint(self) -> str:
        """Which records the sources' indices hold (AnnotationSet.sample_fingerprint), for resume checks."""
        return hashlib.sha256("".join(source.annotations.sample_fingerprint()
                                      for source in self.sources).encode()).hexdigest()

    def describe(self) -> str:
        return self.spec.describe()

    def build(self, position: int) -> dict[str, Any]:
        source = int(self.plan.source_of[position])
        sample = self.sources[source].build(int(self.plan.record_of[position]))
        sample["source"] = self.sources[source].name
        return sample

    def record_key(self, position: int) -> str:
        return self.sources[int(self.plan.source_of[position])].record_key(int(self.plan.record_of[position]))

    def lengths(self, cache_dir: str | Path | None) -> np.ndarray:
        """Signed token lengths of every position (+ with images, - text-only; 0 unusable)."""
        per_source = [source_lengths(source, cache_dir) for source in self.sources]
        lengths = np.zeros(len(self), dtype=np.int64)
        for index, source in enumerate(per_source):
            mask = self.plan.source_of == index
            lengths[mask] = source[self.plan.record_of[mask]]
        return lengths

"""Converters from public document/OCR dataset releases to LLaVA-format JSONL.

One module per source family registers its converters in ``CONVERTERS`` under exact source
names; ``cli.main`` is ``fila-train data convert``.
"""
from . import ai2d, charts, llava, ocrvqa, rrc, textvqa  # noqa: F401  (each registers its sources)
from .base import CONVERTERS, Converter, Sample

__all__ = ["CONVERTERS", "Converter", "Sample"]

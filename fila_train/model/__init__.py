"""Model: vision encoders -> connector -> LLM, as one transformers PreTrainedModel.

The names below load on first use: the preflight reads the registered part names (contracts.py) without
paying for torch and transformers. The Auto classes learn model_type "fila" in fila_train/registration.py.
"""
from __future__ import annotations

import importlib

_EXPORTS = {"IMAGE_TOKEN_ID": "configuration", "FilaConfig": "configuration",
            "FilaForConditionalGeneration": "modeling", "part_of": "modeling", "known_parts": "contracts"}

__all__ = ["IMAGE_TOKEN_ID", "PARTS", "FilaConfig", "FilaForConditionalGeneration", "known_parts", "part_of"]


def __getattr__(name: str):
    if name == "PARTS":  # every registered part, so it includes parts registered after this import
        return importlib.import_module(f"{__name__}.contracts").known_parts()
    if name in _EXPORTS:
        return getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

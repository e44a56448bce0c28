"""Connectors: vision features -> LLM embedding space, chosen by exact name."""
from .projectors import CONNECTORS, build_connector

__all__ = ["CONNECTORS", "build_connector"]

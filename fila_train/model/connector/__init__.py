"""Connectors: vision features -> LLM embedding space, chosen by exact name."""
from . import mmfuser_connector  # noqa: F401  (registers "mmfuser")
from .projectors import CONNECTORS, Connector, build_connector

__all__ = ["CONNECTORS", "Connector", "build_connector"]

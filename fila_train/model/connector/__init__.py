"""Connectors: vision features -> LLM embedding space, chosen by exact name (model/contracts.py)."""
from .projectors import Connector, build_connector

__all__ = ["Connector", "build_connector"]

"""How a benchmark score is printed, everywhere: percent with two decimals. Files keep the fraction (0-1)."""
from __future__ import annotations


def format_score(metric: str, fraction: float) -> str:
    """("anls", 0.0804) -> "anls 8.04%"."""
    return f"{metric} {100 * fraction:.2f}%"

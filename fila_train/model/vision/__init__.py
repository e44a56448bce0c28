"""Vision encoders, chosen by exact name: each turns images into views of patch tokens."""
from .registry import VISION_ENCODERS, build_vision_encoder

__all__ = ["VISION_ENCODERS", "build_vision_encoder"]

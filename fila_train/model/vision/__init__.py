"""Vision encoders, chosen by exact name (model/contracts.py): each turns images into views of patch tokens."""
from .registry import build_image_processor, build_vision_encoder

__all__ = ["build_image_processor", "build_vision_encoder"]

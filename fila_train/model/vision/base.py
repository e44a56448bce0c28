"""The contract between a vision encoder, its image processor and the connector.

A vision encoder turns each image into one or more *views* (the plain CLIP tower:
one view; the FILA hybrid encoder: a global view plus tiles). Every view yields
the same number of patch tokens, so the LLM sees ``num_views * tokens_per_view``
image-context tokens for that image. The image processor runs in the dataloader
(CPU, picklable) and knows that count before the model runs, so the dataset can
expand the ``<image>`` placeholder and make labels final.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

import torch
from PIL import Image


@dataclass
class VisionOutput:
    """Features of all views of all images in a batch, in image order then view order."""

    features: torch.Tensor  # [num_views, tokens_per_view, d]: the selected layer, patch tokens only
    # Patch tokens of every hidden state ([0] = embeddings, [i] = after block i),
    # each [num_views, tokens_per_view, d]; only filled when a connector asks for it.
    hidden_states: tuple[torch.Tensor, ...] | None = None


class ImageProcessor(Protocol):
    """Preprocesses one PIL image for a vision encoder (runs in dataloader workers)."""

    def __call__(self, image: Image.Image) -> dict[str, Any]:
        """Return the tensors for one image (e.g. ``{"pixel_values": [V, 3, H, W]}``)."""

    def num_image_tokens(self, processed: dict[str, Any]) -> int:
        """How many image-context tokens this processed image becomes in the LLM input."""

    def image_token_counts(self) -> dict[str, int]:
        """Every count an image can have, by the shape it is given ("WxH": the view or the canvas), from the
        configs alone: a run checks them against its model_max_length before any weights load."""

    def decode_size(self, width: int, height: int) -> tuple[int, int]:
        """The smallest (W, H) a (W, H) file can be decoded at without changing what this returns
        beyond resampling noise (the loader then decodes JPEGs at reduced size)."""

    def collate(self, processed: list[dict[str, Any]]) -> dict[str, Any]:
        """Batch processed images (image order is kept) into the encoder's forward input."""

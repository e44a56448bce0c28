"""The vision encoder's image processor as a transformers image processor (preprocessor_config.json).

It stores what the encoder's own processor is built from (encoder name, ViT input and patch size, the
encoder options), so ``AutoImageProcessor`` / ``FilaProcessor.from_pretrained`` rebuild exactly the
preprocessing training used, with no model weights.
"""
from __future__ import annotations

from typing import Any

from PIL import Image
from transformers.image_processing_utils import BaseImageProcessor


class FilaImageProcessor(BaseImageProcessor):
    model_input_names = ["images"]

    def __init__(self, vision_encoder: str = "clip", image_size: int = 336, patch_size: int = 14,
                 vision_options: dict | None = None, **kwargs):
        super().__init__(**kwargs)
        self.vision_encoder = vision_encoder
        self.image_size = image_size
        self.patch_size = patch_size
        self.vision_options = vision_options

    @classmethod
    def for_model_config(cls, config) -> FilaImageProcessor:
        """From a FilaConfig: the preprocessing of that model's vision encoder."""
        return cls(vision_encoder=config.vision_encoder, image_size=config.vision_config.image_size,
                   patch_size=config.vision_config.patch_size, vision_options=config.vision_options)

    @property
    def encoder_processor(self) -> Any:
        """The encoder's own (picklable, dataclass) processor: what the dataloader calls per image."""
        if "_encoder_processor" not in self.__dict__:
            from transformers import CLIPVisionConfig

            from ..model.vision.registry import build_image_processor

            vision_config = CLIPVisionConfig(image_size=self.image_size, patch_size=self.patch_size)
            self.__dict__["_encoder_processor"] = build_image_processor(self.vision_encoder, vision_config,
                                                                       self.vision_options)
        return self.__dict__["_encoder_processor"]

    def to_dict(self) -> dict[str, Any]:
        return {key: value for key, value in super().to_dict().items() if key != "_encoder_processor"}

    def __call__(self, images: Image.Image | list[Image.Image]) -> list[dict[str, Any]]:
        """Each image processed as the encoder needs it (views, canvases), in order."""
        images = images if isinstance(images, list) else [images]
        return [self.encoder_processor(image) for image in images]

"""fila's classes in transformers' Auto registries (model_type "fila"), done once at ``import fila_train``."""
from __future__ import annotations


def register_with_transformers() -> None:
    from transformers import AutoImageProcessor, AutoProcessor

    from .model import FilaConfig  # the model package registers the config and the model itself
    from .processing.image_processing import FilaImageProcessor
    from .processing.processor import FilaProcessor

    # One class for both backends: it has no torchvision path, and asking for one must not fall back noisily.
    backends = {"pil": FilaImageProcessor, "torchvision": FilaImageProcessor}
    AutoImageProcessor.register(FilaConfig, image_processor_classes=backends, exist_ok=True)
    AutoProcessor.register(FilaConfig, FilaProcessor, exist_ok=True)

"""fila_train: FILA-style vision-language training.

Importing it registers the model, its config and its processors with transformers' Auto classes, so a
saved fila folder loads with AutoConfig / AutoModelForImageTextToText / AutoProcessor, with no remote code.
"""
from .registration import register_with_transformers

register_with_transformers()

"""fila_train: FILA-style vision-language training.

Importing it registers the model, its config and its processors with transformers' Auto classes (as soon
as transformers is imported), so a saved fila folder loads with AutoConfig / AutoModelForImageTextToText /
AutoProcessor, with no remote code.
"""
from .registration import register_when_transformers_loads

register_when_transformers_loads()

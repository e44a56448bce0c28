"""Model: vision encoders -> connector -> LLM, as one transformers PreTrainedModel."""
from .configuration import IMAGE_TOKEN_ID, FilaConfig
from .modeling import PARTS, FilaForConditionalGeneration, part_of

# After `import fila_train.model`, AutoConfig / AutoModelForImageTextToText load a saved fila folder
# (model_type "fila") like any transformers model, with no remote code.
from transformers import AutoConfig, AutoModelForImageTextToText  # noqa: E402

AutoConfig.register(FilaConfig.model_type, FilaConfig, exist_ok=True)
AutoModelForImageTextToText.register(FilaConfig, FilaForConditionalGeneration, exist_ok=True)

__all__ = ["IMAGE_TOKEN_ID", "PARTS", "FilaConfig", "FilaForConditionalGeneration", "part_of"]

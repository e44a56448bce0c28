"""Model: vision encoders -> connector -> LLM, as one transformers PreTrainedModel."""
from .configuration import IMAGE_TOKEN_ID, FilaConfig
from .modeling import PARTS, FilaForConditionalGeneration, part_of

__all__ = ["IMAGE_TOKEN_ID", "PARTS", "FilaConfig", "FilaForConditionalGeneration", "part_of"]

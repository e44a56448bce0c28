"""Command-line arguments, in the HF TrainingArguments style LLaVA users know."""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
import transformers

from ..model import PARTS


@dataclass
class ModelArguments:
    model_name_or_path: str = field(metadata={"help": "LLM folder or hub id (or a saved fila model folder)"})
    vision_tower: str | None = field(default=None, metadata={"help": "CLIP vision folder or hub id"})
    vision_encoder: str = field(default="clip", metadata={"help": "registered vision encoder name"})
    vision_feature_layer: int = -2
    connector_type: str = field(default="mlp2x_gelu", metadata={"help": "registered connector name"})
    pretrained_connector: str | None = field(
        default=None, metadata={"help": "stage-1 connector artifact (connector.safetensors) to start from"})
    conversation_template: str = field(default="vicuna_v1", metadata={"help": "plain, vicuna_v1, llama3, chatml"})
    attn_implementation: str = field(default="sdpa", metadata={"help": "sdpa, eager or flash_attention_2"})


@dataclass
class DataArguments:
    data_path: str = field(metadata={"help": "LLaVA annotation file (JSON list or JSONL)"})
    image_folder: str | None = None
    on_overlong: str = field(default="drop", metadata={
        "help": "over-long samples (after image expansion): 'drop' (counted, logged) or 'error'"})


@dataclass
class TrainingArguments(transformers.TrainingArguments):
    tune_parts: str = field(default="connector", metadata={
        "help": f"comma-separated parts to train, of: {', '.join(PARTS)}"})
    connector_lr: float | None = field(default=None, metadata={"help": "learning rate of the connector"})
    cvfm_lr: float | None = field(default=None, metadata={"help": "learning rate of FILA's CVFM"})
    fuser_lr: float | None = field(default=None, metadata={"help": "learning rate of the MMFuser fuser"})
    vision_lr: float | None = field(default=None, metadata={"help": "learning rate of the vision tower"})
    model_max_length: int = 2048
    log_sample_ids: bool = field(default=False, metadata={
        "help": "write the record ids each rank trains on to OUTPUT_DIR/sample_ids/rank<R>.txt"})
    warmup_ratio: float | None = field(default=None, metadata={
        "help": "LLaVA-style warmup fraction of the total steps (transformers 5 spells it --warmup_steps 0.03)"})
    remove_unused_columns: bool = False
    output_dir: str = "output"

    def __post_init__(self) -> None:
        # Without a GPU, HF Trainer + DeepSpeed must be told to use the CPU, or it runs but is
        # silently not data parallel (environment.md).
        if not torch.cuda.is_available():
            self.use_cpu = True
        if self.warmup_ratio is not None:
            if not 0 <= self.warmup_ratio < 1:
                raise ValueError(f"--warmup_ratio must be in [0, 1), got {self.warmup_ratio}")
            self.warmup_steps = self.warmup_ratio
        if self.gradient_checkpointing_kwargs is None:
            self.gradient_checkpointing_kwargs = {"use_reentrant": False}
        super().__post_init__()
        unknown = sorted(set(self.parts()) - set(PARTS))
        if unknown:
            raise ValueError(f"--tune_parts: unknown part(s) {unknown}; known parts: {list(PARTS)}")

    def parts(self) -> list[str]:
        return [p.strip() for p in self.tune_parts.split(",") if p.strip()]

    def part_learning_rate(self, part: str) -> float:
        specific = {"connector": self.connector_lr, "cvfm": self.cvfm_lr, "fuser": self.fuser_lr,
                    "vision": self.vision_lr}.get(part)
        return self.learning_rate if specific is None else specific

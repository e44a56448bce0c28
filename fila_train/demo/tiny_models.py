"""Tiny random-init components (CLIP tower, ConvNeXt, LLMs) saved like real checkpoints, for demo and tests.

They are written with ``save_pretrained`` and read back by the same loading code a
real run uses, so nothing here bypasses the production path.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from transformers import (
    AutoModelForCausalLM,
    CLIPVisionConfig,
    CLIPVisionModel,
    LlamaConfig,
    MistralConfig,
    PreTrainedTokenizerBase,
    Qwen2Config,
)

from ..utils.registry import Registry

TINY_LLMS: Registry = Registry("tiny LLM family")
TINY_LLMS.register("llama")(LlamaConfig)
TINY_LLMS.register("mistral")(MistralConfig)
TINY_LLMS.register("qwen2")(Qwen2Config)


def tiny_clip_config(
    image_size: int = 56, patch_size: int = 14, hidden_size: int = 64, num_layers: int = 4
) -> CLIPVisionConfig:
    return CLIPVisionConfig(
        hidden_size=hidden_size,
        intermediate_size=hidden_size * 2,
        num_hidden_layers=num_layers,
        num_attention_heads=4,
        image_size=image_size,
        patch_size=patch_size,
        projection_dim=hidden_size,
    )


def save_tiny_clip(output_dir: str | Path, seed: int = 0, **config) -> Path:
    import torch

    torch.manual_seed(seed)
    CLIPVisionModel(tiny_clip_config(**config)).save_pretrained(output_dir)
    return Path(output_dir)


def _joined(values) -> str:
    return ",".join(str(v) for v in values)


@dataclass(frozen=True)
class TinyFila:
    """A tiny FILA (+ MMFuser) set-up: every layer choice valid for a ``clip_layers``-deep tiny ViT.

    Canvases are multiples of the ``tile``; CVFM fuses after ViT blocks 1-4 (all before the
    feature layer -2); the fuser reads blocks 1-4 like MMFuser reads blocks 3/8/13/18 of 24.
    """

    tile: int = 56
    clip_width: int = 64
    clip_layers: int = 6
    convnext_dims: tuple[int, ...] = (16, 32, 64, 128)
    convnext_depths: tuple[int, ...] = (1, 1, 1, 1)
    # 2x2, 1x2 and 2x1 tiles (+ the global view): batches mix images with different tile counts.
    canvases: tuple[tuple[int, int], ...] = ((112, 112), (56, 112), (112, 56))
    cvfm_layers: tuple[int, ...] = (1, 2, 3, 4)
    fuser_key_layers: tuple[int, ...] = (-6, -5, -4, -3)

    def save_clip(self, output_dir: str | Path, seed: int = 0) -> Path:
        return save_tiny_clip(output_dir, seed=seed, image_size=self.tile, hidden_size=self.clip_width,
                              num_layers=self.clip_layers)

    def save_convnext(self, output_dir: str | Path, seed: int = 0) -> Path:
        """Random tiny ConvNeXt written through the branch's own save path (an OpenCLIP HF-format folder)."""
        import torch

        from ..model.vision.convnext_branch import ConvNeXtBranch, ConvNeXtBranchConfig

        torch.manual_seed(seed)
        branch = ConvNeXtBranch(ConvNeXtBranchConfig(dims=self.convnext_dims, depths=self.convnext_depths))
        return branch.save(output_dir)

    def hybrid_flags(self, convnext_checkpoint: str | Path) -> dict[str, str]:
        """``fila-train train`` option flags (names without ``--``) of this tiny hybrid encoder."""
        return {"convnext_checkpoint": str(convnext_checkpoint),
                "convnext_dims": _joined(self.convnext_dims), "convnext_depths": _joined(self.convnext_depths),
                "anyres_canvases": _joined(f"{w}x{h}" for w, h in self.canvases),
                "cvfm_layers": _joined(self.cvfm_layers)}

    def fuser_flags(self) -> dict[str, str]:
        """Option flags of an MMFuser connector on this tiny ViT."""
        return {"fuser_key_layers": _joined(self.fuser_key_layers), "fuser_query_layer": "-2"}


def as_cli(flags: dict[str, str]) -> list[str]:
    # "--name=value": argparse would take a value such as "-6,-5" for an option of its own.
    return [f"--{name}={value}" for name, value in flags.items()]


def save_tiny_llm(
    output_dir: str | Path,
    tokenizer: PreTrainedTokenizerBase,
    family: str = "llama",
    hidden_size: int = 128,
    num_layers: int = 2,
    seed: int = 0,
    vocab_size: int | None = None,
) -> Path:
    """A small causal LM of ``family`` with the tokenizer's vocabulary (or ``vocab_size`` embedding rows, as
    LLMs padded past their tokenizer have), saved with the tokenizer."""
    import torch

    torch.manual_seed(seed)
    config = TINY_LLMS.get(family)(
        vocab_size=vocab_size or len(tokenizer),
        hidden_size=hidden_size,
        intermediate_size=hidden_size * 3,
        num_hidden_layers=num_layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=2048,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=False,
    )
    AutoModelForCausalLM.from_config(config).save_pretrained(output_dir)
    tokenizer.save_pretrained(output_dir)
    return Path(output_dir)

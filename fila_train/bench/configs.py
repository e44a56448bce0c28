"""Named benchmark configurations: tiny ones for a CPU, real sizes with random weights.

Tiny configurations save the demo's tiny components to a folder and load them through
``build_model`` exactly as ``fila-train train`` does. Real sizes are built from their configs alone
(random weights, never a download), on the benchmark device or on the meta device for counting.
"""
from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import torch
from transformers import AutoTokenizer, CLIPVisionConfig, LlamaConfig

from ..demo.tiny_models import TinyFila, as_cli, save_tiny_llm
from ..model.builder import build_model
from ..model.configuration import DEFAULT_ATTENTION, FilaConfig
from ..model.modeling import FilaForConditionalGeneration
from ..model.vision.registry import build_vision_encoder
from ..utils.registry import Registry
from ..model.arguments import ModelArguments
from ..utils.argument_parser import StrictArgumentParser
from ..utils.errors import ConfigError

# CLIP ViT-L/14-336 (openai/clip-vit-large-patch14-336), the tower of LLaVA-1.5 and FILA.
CLIP_VIT_L_336 = dict(hidden_size=1024, intermediate_size=4096, num_hidden_layers=24, num_attention_heads=16,
                      image_size=336, patch_size=14, projection_dim=768, hidden_act="quick_gelu")
_LLAMA2 = dict(vocab_size=32000, max_position_embeddings=4096, rms_norm_eps=1e-5, tie_word_embeddings=False)
LLAMA_SIZES = {
    # TinyLlama-1.1B's shape: a ~1B Llama for GPUs that cannot hold a 7B with AdamW states.
    "1b": dict(_LLAMA2, hidden_size=2048, intermediate_size=5632, num_hidden_layers=22, num_attention_heads=32,
               num_key_value_heads=4),
    # Llama-2-7B / Vicuna-7B v1.5.
    "7b": dict(_LLAMA2, hidden_size=4096, intermediate_size=11008, num_hidden_layers=32, num_attention_heads=32,
               num_key_value_heads=32),
    # Llama-2-13B / Vicuna-13B v1.5.
    "13b": dict(_LLAMA2, hidden_size=5120, intermediate_size=13824, num_hidden_layers=40, num_attention_heads=40,
                num_key_value_heads=40),
}
TINY = TinyFila()


@contextmanager
def default_dtype(dtype: torch.dtype) -> Iterator[None]:
    """Parameters are created in ``dtype``: a 13B model is never materialised in fp32 first."""
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(previous)


@dataclass(frozen=True)
class BenchConfig:
    name: str
    description: str
    vision_encoder: str  # "clip", "anyres" or "fila_hybrid"
    connector_type: str = "mlp2x_gelu"
    llm_size: str | None = None  # a LLAMA_SIZES key; None: the demo's tiny LLM
    vision_options: dict = field(default_factory=dict)  # real sizes: partial options, the encoder completes them

    @property
    def tiny(self) -> bool:
        return self.llm_size is None

    def stage_parts(self, stage: int) -> list[str]:
        """LLaVA's stages: the connector side (projector, + CVFM, + fuser) in stage 1, + the LLM in stage 2."""
        if stage not in (1, 2):
            raise ConfigError(f"--stage must be 1 or 2, got {stage}")
        parts = ["connector"] + ["cvfm"] * (self.vision_encoder == "fila_hybrid")
        parts += ["fuser"] * (self.connector_type == "mmfuser")
        return parts + ["llm"] * (stage == 2)

    def fila_config(self, attn_implementation: str = DEFAULT_ATTENTION) -> FilaConfig:
        """The real-size composite config (CLIP ViT-L/14-336 + a Llama of ``llm_size``)."""
        if self.tiny:
            raise ConfigError(f"{self.name} is built from saved tiny components, not from a config")
        tiled = self.vision_encoder != "clip"  # fila_hybrid and anyres take options (their defaults: FILA's)
        return FilaConfig(
            vision_config=CLIPVisionConfig(**CLIP_VIT_L_336), text_config=LlamaConfig(**LLAMA_SIZES[self.llm_size]),
            vision_encoder=self.vision_encoder, vision_options=dict(self.vision_options) if tiled else None,
            connector_type=self.connector_type, attn_implementation=attn_implementation)

    def build(self, workdir: Path, tokenizer_dir: Path, device: torch.device, dtype: torch.dtype,
              attn_implementation: str = DEFAULT_ATTENTION) -> tuple[FilaForConditionalGeneration, str]:
        """(model with random weights on ``device``, the folder its tokenizer loads from). A tiny
        model is small enough to be built for real where ``device`` is meta."""
        if self.tiny:
            model, llm = self._build_tiny(workdir, tokenizer_dir, dtype, attn_implementation)
            return (model if device.type == "meta" else model.to(device)), llm
        with torch.device(device), default_dtype(dtype):
            model = FilaForConditionalGeneration(self.fila_config(attn_implementation))
        return model.to(dtype), str(tokenizer_dir)

    def build_vision(self, workdir: Path, tokenizer_dir: Path, device: torch.device,
                     dtype: torch.dtype) -> torch.nn.Module:
        """The vision encoder alone, as ``build`` makes it: at real size without the LLM, whose 13.5 GB (7B,
        bf16) would otherwise count in the vision bench's memory and build time. A tiny one still comes through
        the real loading code."""
        if self.tiny:
            return self.build(workdir, tokenizer_dir, device, dtype)[0].vision_tower
        with torch.device(device), default_dtype(dtype):
            encoder = build_vision_encoder(self.fila_config())
        return encoder.to(dtype)

    def _build_tiny(self, workdir: Path, tokenizer_dir: Path, dtype: torch.dtype, attn_implementation: str):
        """Tiny LLM + CLIP (+ ConvNeXt) saved like real checkpoints, loaded through the training flags."""
        tokenizer = AutoTokenizer.from_pretrained(str(tokenizer_dir))
        flags = {"model_name_or_path": str(save_tiny_llm(workdir / "tiny-llm", tokenizer)),
                 "vision_tower": str(TINY.save_clip(workdir / "tiny-clip")), "vision_encoder": self.vision_encoder,
                 "connector_type": self.connector_type, "attn_implementation": attn_implementation}
        if self.vision_encoder == "fila_hybrid":
            flags |= TINY.hybrid_flags(TINY.save_convnext(workdir / "tiny-convnext"))
        if self.vision_encoder == "anyres":  # FILA's tiny views on the ViT alone
            flags["anyres_canvases"] = TINY.hybrid_flags("")["anyres_canvases"]
        if self.connector_type == "mmfuser":
            flags |= TINY.fuser_flags()
        (args,) = StrictArgumentParser(ModelArguments).parse(as_cli(flags))
        model = build_model(args.model_name_or_path, args.vision_tower, vision_encoder=args.vision_encoder,
                            vision_options=args.vision_options(), connector_type=args.connector_type,
                            connector_options=args.connector_options(), dtype=dtype,
                            attn_implementation=args.attn_implementation)
        return model, args.model_name_or_path


BENCH_CONFIGS: Registry[BenchConfig] = Registry("benchmark configuration")


for _config in (
    BenchConfig("tiny-clip", "tiny CLIP + tiny Llama, mlp2x_gelu (CPU)", "clip"),
    BenchConfig("tiny-fila", "tiny FILA hybrid (CLIP + ConvNeXt + CVFM) + tiny Llama (CPU)", "fila_hybrid"),
    BenchConfig("tiny-mmfuser", "tiny CLIP + MMFuser + tiny Llama (CPU)", "clip", "mmfuser"),
    BenchConfig("tiny-anyres", "tiny FILA views on the ViT alone (no ConvNeXt, no CVFM) + tiny Llama (CPU)", "anyres"),
    BenchConfig("llava-1b", "CLIP ViT-L/14-336 + mlp2x_gelu + ~1B Llama (TinyLlama shape)", "clip", llm_size="1b"),
    BenchConfig("fila-1b", "FILA hybrid (ViT-L/14-336 + ConvNeXt-L-d-320, CVFM 2/6/12/20) + ~1B Llama",
                "fila_hybrid", llm_size="1b"),
    BenchConfig("llava-7b", "LLaVA-1.5-7B: ViT-L/14-336 + mlp2x_gelu + Vicuna-7B (Llama-2-7B shape)", "clip",
                llm_size="7b"),
    BenchConfig("fila-7b", "FILA-7B: FILA hybrid + mlp2x_gelu + Vicuna-7B", "fila_hybrid", llm_size="7b"),
    BenchConfig("anyres-7b", "FILA-7B's views on the ViT alone (crop-only anyres, no ConvNeXt/CVFM) + Vicuna-7B",
                "anyres", llm_size="7b"),
    BenchConfig("mmfuser-7b", "ViT-L/14-336 + MMFuser + Vicuna-7B", "clip", "mmfuser", llm_size="7b"),
    BenchConfig("llava-13b", "LLaVA-1.5-13B: ViT-L/14-336 + mlp2x_gelu + Vicuna-13B", "clip", llm_size="13b"),
    BenchConfig("fila-13b", "FILA-13B: FILA hybrid + mlp2x_gelu + Vicuna-13B", "fila_hybrid", llm_size="13b"),
):
    BENCH_CONFIGS.register(_config.name)(_config)

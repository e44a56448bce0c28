"""A fresh connector's projector starts as LLaVA's does: PyTorch's own nn.Linear init.

LLaVA (and the public MMFuser code, a LLaVA fork) build the projector after the LLM has loaded, so no
transformers init ever touches it: every Linear(in, out) keeps weight and bias drawn from
U(-1/sqrt(in), 1/sqrt(in)) (torch.nn.Linear's documented init). The expected values below come from
that formula, not from our code.
"""
from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from fila_train.demo.tiny_models import save_tiny_clip, save_tiny_llm
from fila_train.demo.tokenizer import build_demo_tokenizer
from fila_train.model.builder import build_model

CLIP_WIDTH, LLM_WIDTH = 64, 96
# MMFuser options a 2-layer tiny ViT has (the defaults name ViT-L's layers).
FUSER_OPTIONS = {"key_layers": [0, 1], "query_layer": -1, "num_heads": 4, "num_points": 2}


@pytest.fixture(scope="module")
def assets(tmp_path_factory: pytest.TempPathFactory) -> dict:
    root = tmp_path_factory.mktemp("connector_init")
    corpus = root / "corpus.txt"
    corpus.write_text("What is in the image? A red square. USER: ASSISTANT: green blue.\n" * 50)
    tokenizer = build_demo_tokenizer([corpus], root / "tokenizer", vocab_size=300)
    clip = save_tiny_clip(root / "clip", image_size=28, patch_size=14, hidden_size=CLIP_WIDTH, num_layers=2)
    llm = save_tiny_llm(root / "llm", tokenizer, family="llama", hidden_size=LLM_WIDTH, num_layers=1, seed=1)
    return {"clip": str(clip), "llm": str(llm)}


def assert_torch_linear_init(linear: nn.Linear, name: str) -> None:
    bound = 1 / math.sqrt(linear.in_features)
    uniform_std = bound / math.sqrt(3)  # std of U(-bound, bound)
    weight, bias = linear.weight.detach(), linear.bias.detach()
    assert weight.abs().max() <= bound, name
    assert abs(weight.std().item() - uniform_std) < 0.05 * uniform_std, (name, weight.std().item(), uniform_std)
    assert bias.abs().max() <= bound, name
    assert bias.std().item() > 0.5 * uniform_std, (name, bias.std().item(), uniform_std)  # not zeros


@pytest.mark.parametrize(("connector", "options", "linears"), [
    ("linear", None, 1), ("mlp2x_gelu", None, 2), ("mmfuser", FUSER_OPTIONS, 2)])
def test_a_fresh_projector_has_llava_s_init(assets: dict, connector: str, options: dict | None, linears: int) -> None:
    torch.manual_seed(0)
    model = build_model(assets["llm"], assets["clip"], vision_encoder="clip", connector_type=connector,
                        connector_options=options)
    found = [(name, module) for name, module in model.connector.projector.named_modules()
             if isinstance(module, nn.Linear)]
    assert len(found) == linears
    for name, linear in found:
        assert_torch_linear_init(linear, f"{connector}.projector.{name}")

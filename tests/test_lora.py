"""LoRA on the LLM (PEFT): full-path targeting, trainable set, save/load, merge, ZeRO-3 resume, QLoRA gate.

Tiny models from distributed_utils (LLM width 64, 2 decoder layers: 14 adapted projections); the
two 2-process ZeRO-3 runs take ~20-30 s each on CPU.
"""
from __future__ import annotations

import importlib.util
import re

import pytest
import torch
from distributed_utils import (  # noqa: F401  (assets is a fixture)
    assets,
    build_tiny_model,
    run_torchrun,
    tiny_batch,
    train_args,
    train_steps,
)
from torch import nn
from transformers import HfArgumentParser

from fila_train.model import FilaForConditionalGeneration
from fila_train.model.builder import build_model
from fila_train.model.lora import KBIT_REQUIREMENT, LoraSettings, add_lora, lora_layers, merge_lora
from fila_train.training.arguments import DataArguments, ModelArguments, TrainingArguments
from fila_train.training.parts import apply_tune_parts, parameter_table
from fila_train.training.train import train

LLM_PROJECTIONS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
STEPS = 6
CHECKPOINT_STEP = 3


def llm_projections(model) -> set[str]:
    """Every decoder-layer projection of the LLM, found by walking the modules (not by the pattern)."""
    layers = model.language_model.model.layers
    return {f"language_model.model.layers.{i}.{block}.{name}"
            for i, layer in enumerate(layers) for block in ("self_attn", "mlp")
            for name in LLM_PROJECTIONS if hasattr(getattr(layer, block), name)}


def adapter_names(model) -> set[str]:
    return {name for name, _ in model.named_parameters() if ".lora_" in name}


def logits(model, batch) -> torch.Tensor:
    model.eval()
    with torch.no_grad():
        return model(**batch).logits


@pytest.mark.parametrize("hybrid", [False, True], ids=["clip", "fila_hybrid"])
def test_adapters_sit_only_in_llm_linear_layers(assets, hybrid):
    model = build_tiny_model(assets, hybrid=hybrid, fuser=False)
    expected = llm_projections(model)
    vision_attention = [n for n, m in model.named_modules()
                        if n.startswith("vision_tower.") and n.endswith(("q_proj", "k_proj", "v_proj", "out_proj"))]
    assert len(expected) == 14 and vision_attention  # the tower has the names suffix matching would hit
    add_lora(model, LoraSettings(r=4))

    assert set(lora_layers(model)) == expected  # searched over the WHOLE composite, vision tower included
    assert all(name.startswith("language_model.model.layers.") for name in adapter_names(model))
    for name, module in model.named_modules():
        if name.startswith(("vision_tower.", "connector.")):
            assert not any(".lora_" in n for n, _ in module.named_parameters(prefix=name)), name
    assert all(type(dict(model.named_modules())[n]) is nn.Linear for n in vision_attention)


def test_patterns_outside_the_llm_or_matching_nothing_are_refused(assets):
    model = build_tiny_model(assets, hybrid=True, fuser=False)
    with pytest.raises(ValueError, match=r"outside the LLM.*vision_tower"):
        add_lora(model, LoraSettings(r=4, target_modules=r".*\.(q|k|v)_proj"))
    with pytest.raises(ValueError, match="matches no module"):
        add_lora(model, LoraSettings(r=4, target_modules=r"q_proj"))
    with pytest.raises(ValueError, match="not nn.Linear"):
        add_lora(model, LoraSettings(r=4, target_modules=r"language_model\.model\.layers\.0\.self_attn"))
    assert model.config.lora is None and not lora_layers(model)
    add_lora(model, LoraSettings(r=4))
    with pytest.raises(ValueError, match="already has LoRA adapters"):
        add_lora(model, LoraSettings(r=8))
    with pytest.raises(ValueError, match="not a valid regex"):
        LoraSettings(r=4, target_modules="language_model\\.(")


def test_fresh_build_from_flags_starts_as_the_base_model(assets):
    (model_args,) = HfArgumentParser(ModelArguments).parse_args_into_dataclasses(
        args=["--model_name_or_path", str(assets.llm), "--lora_r", "8", "--lora_dropout", "0.1"])
    lora = model_args.lora_settings()
    assert lora == {"r": 8, "alpha": 16.0, "dropout": 0.1, "target_modules": LoraSettings(r=1).target_modules,
                    "bits": 16}
    plain = build_model(str(assets.llm), str(assets.clip))
    model = build_model(str(assets.llm), str(assets.clip), lora=lora)
    assert model.config.lora == lora
    assert all(not p.any() for n, p in model.named_parameters() if ".lora_B." in n)  # adapters start as no-ops
    assert all(p.std() > 0 for n, p in model.named_parameters() if ".lora_A." in n)
    model.load_state_dict({n: p for n, p in plain.state_dict().items() if n.startswith("connector.")}, strict=False)
    batch = tiny_batch(model, assets, size=2, stage2=True)
    assert torch.equal(logits(model, batch), logits(plain, batch))


def test_trainable_parameters_are_the_adapters_and_the_tuned_parts(assets):
    model = build_tiny_model(assets, hybrid=True, fuser=False)
    add_lora(model, LoraSettings(r=4))
    connector = {n for n, _ in model.named_parameters() if n.startswith("connector.")}
    apply_tune_parts(model, ["connector", "llm"])
    assert {n for n, p in model.named_parameters() if p.requires_grad} == adapter_names(model) | connector
    rows = {part: (total, trainable) for part, total, trainable in parameter_table(model)}
    adapters = sum(p.numel() for n, p in model.named_parameters() if ".lora_" in n)
    assert rows["llm (lora)"] == (adapters, adapters) and rows["llm"][1] == 0 and rows["llm"][0] > adapters
    apply_tune_parts(model, ["connector", "cvfm"])
    assert not any(p.requires_grad for n, p in model.named_parameters() if ".lora_" in n)


@pytest.fixture(scope="module")
def trained(assets, tmp_path_factory):
    """A LoRA model after 3 optimizer steps on connector + llm, its pre-training state, a batch, its save."""
    model = build_tiny_model(assets, hybrid=False, fuser=False)
    add_lora(model, LoraSettings(r=4, alpha=8, dropout=0.0))
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    batch = tiny_batch(model, assets, size=2, stage2=True)
    train_steps(model, batch, ["connector", "llm"], steps=3, lr=1e-2)
    folder = tmp_path_factory.mktemp("lora_model")
    model.save_pretrained(folder)
    return model, before, batch, folder


def test_training_changes_the_adapters_and_not_the_base_weights(trained):
    model, before, _, _ = trained
    for name, parameter in model.named_parameters():
        changed = not torch.equal(parameter, before[name])
        if ".lora_" in name or name.startswith("connector."):
            assert changed, f"{name} did not train"
        else:
            assert not changed, f"frozen {name} changed"


def test_save_and_reload_gives_identical_logits(trained):
    model, _, batch, folder = trained
    reloaded = FilaForConditionalGeneration.from_pretrained(folder)
    assert reloaded.config.lora == model.config.lora
    assert reloaded.state_dict().keys() == model.state_dict().keys()
    assert torch.equal(logits(reloaded, batch), logits(model, batch))


def test_merged_model_matches_and_loads_as_a_plain_fila_model(trained, tmp_path):
    model, _, batch, folder = trained
    merged = merge_lora(FilaForConditionalGeneration.from_pretrained(folder))
    assert merged.config.lora is None
    assert not [n for n in merged.state_dict() if "lora_" in n or "base_layer" in n]
    torch.testing.assert_close(logits(merged, batch), logits(model, batch), rtol=1e-5, atol=1e-5)
    merged.save_pretrained(tmp_path)
    plain, info = FilaForConditionalGeneration.from_pretrained(tmp_path, output_loading_info=True)
    assert plain.config.lora is None and not lora_layers(plain)
    assert not info["missing_keys"] and not info["unexpected_keys"]
    # The same names as a FILA model that never had adapters.
    assert plain.state_dict().keys() == FilaForConditionalGeneration(plain.config).state_dict().keys()
    assert torch.equal(logits(plain, batch), logits(merged, batch))
    with pytest.raises(ValueError, match="no LoRA adapters"):
        merge_lora(plain)


def test_lora_resume_under_zero3_reproduces_the_uninterrupted_losses(assets, tmp_path):
    args = train_args(assets, hybrid=False, fuser=False, stage=2, zero=3, steps=STEPS) + [
        "--lora_r", "4", "--learning_rate", "2e-2", "--connector_lr", "2e-3", "--report_to", "none",
        "--save_strategy", "steps", "--save_steps", str(CHECKPOINT_STEP)]
    full = run_torchrun(args, tmp_path / "full")
    log = full.rank_log(0)
    assert re.search(r"llm \(lora\)\s+[\d,]+\s+[\d,]+\s+100\.0%", log), log[-2000:]
    resumed = run_torchrun(args + ["--resume_from_checkpoint", str(full.output_dir / f"checkpoint-{CHECKPOINT_STEP}")],
                           tmp_path / "resumed")
    expected = full.summary()["losses"][CHECKPOINT_STEP:]
    got = resumed.summary()["losses"][CHECKPOINT_STEP:]
    assert len(got) == STEPS - CHECKPOINT_STEP
    assert got == pytest.approx(expected, rel=1e-5, abs=1e-6)
    # The consolidated ZeRO-3 save rebuilds as a LoRA model with trained adapters.
    saved = FilaForConditionalGeneration.from_pretrained(resumed.output_dir)
    assert saved.config.lora["r"] == 4
    assert all(p.any() for n, p in saved.named_parameters() if ".lora_B." in n)


QLORA_RUNNABLE = importlib.util.find_spec("bitsandbytes") is not None and torch.cuda.is_available()


@pytest.mark.skipif(QLORA_RUNNABLE, reason="bitsandbytes and a GPU are present: QLoRA can run here")
def test_qlora_without_bitsandbytes_or_gpu_is_a_clear_error(assets):
    with pytest.raises(RuntimeError, match=re.escape(KBIT_REQUIREMENT)):
        HfArgumentParser(ModelArguments).parse_args_into_dataclasses(
            args=["--model_name_or_path", str(assets.llm), "--lora_r", "8", "--bits", "4"])
    with pytest.raises(RuntimeError, match=re.escape(KBIT_REQUIREMENT)):
        build_model(str(assets.llm), str(assets.clip), lora={"r": 8, "bits": 4})


def test_lora_flags_without_lora_or_without_llm_are_refused(assets, tmp_path):
    parser = HfArgumentParser(ModelArguments)
    with pytest.raises(ValueError, match="--lora_alpha.*only apply with LoRA"):
        parser.parse_args_into_dataclasses(args=["--model_name_or_path", "x", "--lora_alpha", "32"])
    with pytest.raises(ValueError, match="bits must be one of"):
        parser.parse_args_into_dataclasses(args=["--model_name_or_path", "x", "--lora_r", "8", "--bits", "3"])
    model_args = ModelArguments(model_name_or_path=str(assets.llm), lora_r=8)
    training_args = TrainingArguments(output_dir=str(tmp_path), tune_parts="connector", report_to="none")
    with pytest.raises(ValueError, match="has no 'llm'"):
        train(model_args, DataArguments(data_path=str(assets.stage2_data)), training_args)

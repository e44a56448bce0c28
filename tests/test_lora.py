"""LoRA on the LLM (PEFT): full-path targeting, trainable set, save/load, merge, ZeRO-3 resume; QLoRA
(bitsandbytes on CPU, the dev group installs it): training, export (dequantize + merge), ZeRO-2 resume.

Tiny models from distributed_utils (LLM width 64, 2 decoder layers: 14 adapted projections); each
2-process run (two ZeRO-3 LoRA, two ZeRO-2 QLoRA) takes ~20-40 s on CPU.
"""
from __future__ import annotations

import json
import math
import re
import shutil
import sys

import pytest
import torch
from distributed_utils import (  # noqa: F401  (assets and runs are fixtures)
    SHARED_CHECKPOINT as CHECKPOINT_STEP,
    SHARED_STEPS as STEPS,
    assets,
    build_tiny_model,
    run_distributed,
    runs,
    tiny_batch,
    train_args,
    train_steps,
)
from safetensors.torch import load_file, save_file
from torch import nn
from transformers import HfArgumentParser

from fila_train.export.errors import ExportError
from fila_train.export.exporter import ExportOptions, export_checkpoint
from fila_train.model import FilaForConditionalGeneration
from fila_train.model.builder import build_model, load_tokenizer
from fila_train.model.lora import KBIT_REQUIREMENT, LoraSettings, add_lora, lora_layers, merge_lora
from fila_train.training.arguments import DataArguments, ModelArguments, TrainingArguments
from fila_train.training.parts import apply_tune_parts, parameter_table
from fila_train.training.train import train
from fila_train.utils.errors import ConfigError

LLM_PROJECTIONS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


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


def test_lora_resume_under_zero3_reproduces_the_uninterrupted_losses(runs, tmp_path):
    # The shared LoRA run: 8 records, 2 steps an epoch, so the checkpoint lies in the second epoch.
    full, args = runs["baseline_zero3_lora"].run, runs["baseline_zero3_lora"].args
    log = full.rank_log(0)
    assert re.search(r"llm \(lora\)\s+[\d,]+\s+[\d,]+\s+100\.0%", log), log[-2000:]
    resumed = run_distributed(args + ["--resume_from_checkpoint", str(full.output_dir / f"checkpoint-{CHECKPOINT_STEP}")],
                              tmp_path / "resumed")
    expected = full.summary()["losses"][CHECKPOINT_STEP:]
    got = resumed.summary()["losses"][CHECKPOINT_STEP:]
    assert len(got) == STEPS - CHECKPOINT_STEP
    assert got == pytest.approx(expected, rel=1e-5, abs=1e-6)
    # The consolidated ZeRO-3 save rebuilds as a LoRA model with trained adapters.
    saved = FilaForConditionalGeneration.from_pretrained(resumed.output_dir)
    assert saved.config.lora["r"] == 4
    assert all(p.any() for n, p in saved.named_parameters() if ".lora_B." in n)


def test_qlora_without_bitsandbytes_is_a_clear_error(assets, monkeypatch):
    monkeypatch.setitem(sys.modules, "bitsandbytes", None)  # what an environment without it looks like to find_spec
    with pytest.raises(ConfigError, match=re.escape(KBIT_REQUIREMENT) + ".*qlora extra.*--bits 16"):
        HfArgumentParser(ModelArguments).parse_args_into_dataclasses(
            args=["--model_name_or_path", str(assets.llm), "--lora_r", "8", "--bits", "4"])
    with pytest.raises(ConfigError, match=re.escape(KBIT_REQUIREMENT)):
        build_model(str(assets.llm), str(assets.clip), lora={"r": 8, "bits": 4})


# ----------------------------------------------------------------------------- QLoRA


def test_qlora_under_zero3_is_refused_naming_the_zero2_config(assets):
    from transformers.integrations.deepspeed import HfDeepSpeedConfig, unset_hf_deepspeed_config

    zero3 = HfDeepSpeedConfig({"zero_optimization": {"stage": 3}, "train_batch_size": 2})  # noqa: F841 (weakly held)
    try:
        with pytest.raises(ValueError, match=r"ZeRO-2, not ZeRO-3.*zero_configs/zero2\.json"):
            build_model(str(assets.llm), str(assets.clip), lora={"r": 4, "bits": 4})
    finally:
        unset_hf_deepspeed_config()


def train_mode_logits(model, batch) -> torch.Tensor:
    """Logits on the path QLoRA trains on (dropout 0, so deterministic). bitsandbytes' CPU inference path
    approximates the same weights (4-bit: repacked in place with bf16 scales on AVX512-BF16 CPUs; 8-bit:
    int8 activations), so it is never the reference, and never run on the model before it is saved."""
    model.train()
    with torch.no_grad():
        return model(**batch).logits


@pytest.fixture(scope="module", params=[4, 8], ids=["4bit", "8bit"])
def qlora_trained(request, assets, tmp_path_factory):
    """A QLoRA model (the LLM loaded in k-bit by bitsandbytes, on CPU) after 3 optimizer steps on connector
    + llm; its state dict before training, a batch, its loss before and after, and its training output
    folder (what trainer.save_model leaves: weights + config, tokenizer)."""
    torch.manual_seed(0)
    model = build_model(str(assets.llm), str(assets.clip),
                        lora={"r": 4, "alpha": 8.0, "dropout": 0.0, "bits": request.param})
    before = {name: value.clone() for name, value in model.state_dict().items()}
    batch = tiny_batch(model, assets, size=2, stage2=True)
    with torch.no_grad():
        loss_before = model.train()(**batch).loss.item()
    train_steps(model, batch, ["connector", "llm"], steps=3, lr=1e-2)
    with torch.no_grad():
        loss_after = model.train()(**batch).loss.item()
    folder = tmp_path_factory.mktemp(f"qlora_{request.param}bit")
    model.save_pretrained(folder)
    load_tokenizer(str(assets.llm), model, 512).save_pretrained(folder)
    return model, before, batch, (loss_before, loss_after), folder


def test_qlora_trains_the_adapters_over_frozen_quantized_weights(qlora_trained):
    model, before, _, (loss_before, loss_after), _ = qlora_trained
    bits = model.config.lora["bits"]
    base = model.language_model.model.layers[0].self_attn.q_proj.base_layer
    assert type(base).__name__ == {4: "Linear4bit", 8: "Linear8bitLt"}[bits]
    assert base.weight.dtype == {4: torch.uint8, 8: torch.int8}[bits]
    assert torch.isfinite(torch.tensor([loss_before, loss_after])).all() and loss_after < loss_before
    after = model.state_dict()
    quantized = [name for name in after if ".base_layer." in name]
    assert len(quantized) >= 14 * 2  # each packed weight comes with its statistics
    for name, value in after.items():
        if ".lora_" in name or name.startswith("connector."):
            assert not torch.equal(value, before[name]), f"{name} did not train"
        else:  # the quantized weights and statistics, and every other frozen tensor
            assert torch.equal(value, before[name]), f"frozen {name} changed"


def test_qlora_export_dequantizes_and_merges_into_a_plain_model(qlora_trained, tmp_path):
    model, _, batch, _, folder = qlora_trained
    out = export_checkpoint(folder, tmp_path / "export", ExportOptions(dtype="fp32"))
    exported = FilaForConditionalGeneration.from_pretrained(out)
    config = json.loads((out / "config.json").read_text())
    assert config["lora"] is None and "quantization_config" not in config["text_config"]
    state = exported.state_dict()
    assert state.keys() == FilaForConditionalGeneration(exported.config).state_dict().keys()
    assert all(value.dtype == torch.float32 for value in state.values() if value.is_floating_point())
    # Tight: the compute dtype is fp32 and the dequantized weights are exactly what the quantized layers
    # multiply by; W x + s B (A x) against (W + s B A) x differs only by fp32 rounding, as for 16-bit LoRA.
    torch.testing.assert_close(exported.eval()(**batch).logits.detach(), train_mode_logits(model, batch),
                               rtol=1e-5, atol=1e-5)


def test_loading_a_qlora_output_says_to_export_it_first(qlora_trained):
    *_, folder = qlora_trained
    with pytest.raises(ValueError, match=r"config.lora.bits = \d: this is a QLoRA model.*Export it first"):
        FilaForConditionalGeneration.from_pretrained(folder)


def test_qlora_model_loads_its_own_checkpoint_and_refuses_another_base(qlora_trained):
    model, _, _, _, folder = qlora_trained
    saved = load_file(folder / "model.safetensors")
    # What Trainer / DeepSpeed resume does: a strict load, quantization statistics included.
    result = model.load_state_dict(saved, strict=True)
    assert not result.missing_keys and not result.unexpected_keys
    statistic = next(name for name in saved if name.endswith((".absmax", ".SCB")))
    other_base = dict(saved) | {statistic: saved[statistic] + 1}
    with pytest.raises(ValueError, match=re.escape(statistic) + ".*differ from this model's"):
        model.load_state_dict(other_base, strict=True)


@pytest.mark.parametrize("qlora_trained", [4], indirect=True)
def test_qlora_export_errors_name_what_is_missing(qlora_trained, tmp_path, monkeypatch):
    *_, folder = qlora_trained
    stripped = tmp_path / "stripped"
    shutil.copytree(folder, stripped)
    weights = load_file(stripped / "model.safetensors")
    statistics = [name for name in weights if ".base_layer.weight." in name]
    save_file({name: value for name, value in weights.items() if name not in statistics},
              stripped / "model.safetensors")
    with pytest.raises(ExportError, match=r"cannot dequantize the 4-bit LLM.*without their bitsandbytes statistics"
                                          r".*base_layer\.weight \(torch\.uint8\)"):
        export_checkpoint(stripped, tmp_path / "export")
    monkeypatch.setitem(sys.modules, "bitsandbytes", None)
    with pytest.raises(ExportError, match=r"cannot dequantize the 4-bit LLM.*" + re.escape(KBIT_REQUIREMENT)):
        export_checkpoint(folder, tmp_path / "export")


def test_qlora_under_zero2_resumes_and_its_checkpoint_exports(assets, tmp_path):
    steps, checkpoint_step = 4, 2
    args = train_args(assets, hybrid=False, fuser=False, stage=2, zero=2, steps=steps) + [
        "--lora_r", "4", "--bits", "4", "--learning_rate", "2e-2", "--report_to", "none",
        "--save_strategy", "steps", "--save_steps", str(checkpoint_step)]
    full = run_distributed(args, tmp_path / "full")
    checkpoint = full.output_dir / f"checkpoint-{checkpoint_step}"
    # DeepSpeed loads the checkpoint's quantized weights and statistics back into the k-bit layers.
    resumed = run_distributed(args + ["--resume_from_checkpoint", str(checkpoint)], tmp_path / "resumed")
    expected = full.summary()["losses"][checkpoint_step:]
    got = resumed.summary()["losses"][checkpoint_step:]
    assert len(got) == steps - checkpoint_step and all(map(math.isfinite, got))
    assert got == pytest.approx(expected, rel=1e-5, abs=1e-6)
    # zero_to_fp32 keeps the packed weights but not their statistics: taken from the ZeRO-2 model states,
    # the fp32 masters export exactly as the checkpoint's safetensors save (fp32 training: same values).
    exports = {source: FilaForConditionalGeneration.from_pretrained(export_checkpoint(
        checkpoint, tmp_path / source, ExportOptions(dtype="fp32", source=source))).state_dict()
        for source in ("deepspeed", "safetensors")}
    assert exports["deepspeed"].keys() == exports["safetensors"].keys()
    assert all(torch.equal(value, exports["safetensors"][name]) for name, value in exports["deepspeed"].items())


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

"""FILA's hybrid encoder as a trainable choice: flags -> config, init, save/load, gradients, artifact, ZeRO.

Tiny models (CLIP tile 28 with 6 layers, ConvNeXt dims 16..128, LLM width 64) built once per
session by distributed_utils; the 2-process runs are the session's shared FILA + MMFuser stage 1 (ZeRO-2) and
stage 2 (ZeRO-3) runs.
"""
from __future__ import annotations

import json
import shutil

import pytest
import torch
from distributed_utils import (  # noqa: F401  (assets and runs are fixtures)
    SHARED_STEPS,
    TINY,
    aligned_state,
    assert_loss_falls,
    assets,
    build_tiny_model,
    runs,
    tiny_batch,
    train_steps,
    with_mlp_connector,
)
from safetensors.torch import load_file, save_file

from fila_train.model import FilaForConditionalGeneration
from fila_train.model.connector.deformable_attention import (
    MultiScaleDeformableAttention,
)
from fila_train.model.vision.cvfm import CVFMBlock
from fila_train.training.arguments import DataArguments, ModelArguments, TrainingArguments
from fila_train.training.connector_artifact import (
    load_connector_artifact,
    save_connector_artifact,
)
from fila_train.training.parts import apply_tune_parts, optimizer_groups
from fila_train.utils.errors import CheckpointError


def assert_same_as_plain_clip(model, plain, batch) -> None:
    """Hybrid composite == plain CLIP composite fed the same views (global view + tiles as images)."""
    with torch.no_grad():
        ours = model(**batch).logits
        views_only = {**batch, "images": {"pixel_values": batch["images"]["pixel_values"]}}
        theirs = plain(**views_only).logits
        torch.testing.assert_close(model.vision_tower(batch["images"]).features,
                                   plain.vision_tower(views_only["images"]).features, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-5)


def assert_spec_init(model) -> None:
    """CVFM gates 0 (strided conv = average pooling); MMFuser offsets/attention as Deformable-DETR, gammas 0."""
    for block in model.vision_tower.cvfm:
        assert not block.fusion.gate.alpha.any()
        if hasattr(block.align, "conv"):
            conv = block.align.conv.weight
            expected = torch.zeros_like(conv)
            expected[range(conv.shape[0]), range(conv.shape[0])] = 1.0 / block.align.factor ** 2
            assert torch.equal(conv, expected) and not block.align.conv.bias.any()
    fuser = getattr(model.connector, "fuser", None)
    if fuser is None:
        return
    assert not fuser.gamma1.any() and not fuser.gamma2.any()
    for attention in (fuser.cross_attn, fuser.self_attn):
        reference = MultiScaleDeformableAttention(attention.dim, attention.num_levels, attention.num_heads,
                                                  attention.num_points)
        assert torch.equal(attention.sampling_offsets.bias, reference.sampling_offsets.bias)
        for linear in (attention.sampling_offsets, attention.attention_weights):
            assert not linear.weight.any()
        assert not attention.attention_weights.bias.any()
        for linear in (attention.value_proj, attention.output_proj):  # xavier-uniform bound, bias 0
            bound = (6 / sum(linear.weight.shape)) ** 0.5
            assert linear.weight.abs().max() <= bound and linear.weight.std() > bound / 3
            assert not linear.bias.any()


# ---------------------------------------------------------------- flags -> config


def test_flags_become_complete_saved_options(assets) -> None:
    model = build_tiny_model(assets, hybrid=True, fuser=False, extra={"cvfm_align": "strided_conv"})
    options = model.config.vision_options
    assert options["anyres"] == {"tile_size": 28, "canvases": [[56, 56], [28, 56], [56, 28]], "global_view": "image"}
    assert options["convnext"]["checkpoint"] is None  # the weights are in the state dict now
    assert options["convnext"]["dims"] == list(TINY.convnext_dims)
    assert options["cvfm"] == {"vit_layers": list(TINY.cvfm_layers), "align": "strided_conv", "fusion": "concat",
                               "gate": "scalar"}
    with pytest.raises(ValueError, match="--cvfm_layers only apply to --vision_encoder fila_hybrid"):
        ModelArguments(model_name_or_path="x", cvfm_layers="1,2,3,4")
    # Unset flags leave the part's dataclass defaults (the spec's) in charge.
    defaults = ModelArguments(model_name_or_path="x", vision_encoder="fila_hybrid").vision_options()
    assert defaults == {}


def test_fresh_build_keeps_the_llm_causal(assets) -> None:
    model = build_tiny_model(assets, hybrid=True, fuser=False).eval()
    assert model.language_model.config._attn_implementation == "sdpa"
    ids = torch.arange(3, 15).unsqueeze(0)
    changed = ids.clone()
    changed[0, -1] = 200
    with torch.no_grad():  # a later token must not change earlier logits
        assert torch.equal(model(input_ids=ids).logits[0, :-1], model(input_ids=changed).logits[0, :-1])


# ---------------------------------------------------------------- init


def test_init_runs_children_first_and_keeps_the_spec_init(assets, monkeypatch) -> None:
    from fila_train.model.modeling import FilaPreTrainedModel

    order = []
    original = FilaPreTrainedModel._init_weights
    monkeypatch.setattr(FilaPreTrainedModel, "_init_weights",
                        lambda self, module: (order.append(module), original(self, module))[1])
    model = build_tiny_model(assets, hybrid=True, fuser=True, extra={"cvfm_align": "strided_conv"})
    position = {id(m): i for i, m in enumerate(order)}
    blocks = [m for m in model.modules() if isinstance(m, CVFMBlock)] + [model.connector.fuser]
    for block in blocks:  # post-order: every child's generic init comes before the parent's own reset
        assert id(block) in position
        assert all(position[id(child)] < position[id(block)] for child in block.modules()
                   if child is not block and id(child) in position)
    assert_spec_init(model)
    # The ConvNeXt keeps its checkpoint weights (the generic init must not touch them).
    checkpoint = load_file(assets.convnext / "open_clip_model.safetensors")
    for name, value in model.vision_tower.convnext.trunk.state_dict().items():
        assert torch.equal(value, checkpoint[f"visual.trunk.{name}"]), name


def test_identity_at_init_through_the_composite(assets) -> None:
    model = build_tiny_model(assets, hybrid=True, fuser=False).eval()
    assert_same_as_plain_clip(model, with_mlp_connector(assets, model, hybrid=False), tiny_batch(model, assets))


def test_from_pretrained_with_missing_keys_starts_at_the_spec_init(assets, tmp_path) -> None:
    model = build_tiny_model(assets, hybrid=True, fuser=True)
    with torch.no_grad():  # trained-looking values, so a reload to init is visible
        for name, parameter in model.named_parameters():
            if name.startswith(("vision_tower.cvfm.", "connector.fuser.")):
                parameter.add_(0.1)
    model.save_pretrained(tmp_path / "saved")
    weights = load_file(tmp_path / "saved" / "model.safetensors")
    aligned = [k for k in weights if k.startswith(("vision_tower.cvfm.", "connector.fuser."))]
    save_file({k: v for k, v in weights.items() if k not in aligned}, str(tmp_path / "saved" / "model.safetensors"),
              metadata={"format": "pt"})
    reloaded = FilaForConditionalGeneration.from_pretrained(tmp_path / "saved").eval()
    assert_spec_init(reloaded)
    plain = with_mlp_connector(assets, reloaded, hybrid=False)
    assert_same_as_plain_clip(reloaded, plain, tiny_batch(reloaded, assets))

    # Partly missing: the module's own reset must not overwrite what was loaded (e.g. the
    # offsets' directional bias, which reset_parameters writes directly).
    save_file({k: v for k, v in weights.items() if not k.endswith(("fuser.gamma1", "cvfm.0.fusion.gate.alpha"))},
              str(tmp_path / "saved" / "model.safetensors"), metadata={"format": "pt"})
    partial = FilaForConditionalGeneration.from_pretrained(tmp_path / "saved")
    state = partial.state_dict()
    assert not state["connector.fuser.gamma1"].any() and not state["vision_tower.cvfm.0.fusion.gate.alpha"].any()
    for name, value in weights.items():
        if not name.endswith(("fuser.gamma1", "cvfm.0.fusion.gate.alpha")):
            assert torch.equal(state[name], value), name


def test_save_and_reload_need_no_training_code_nor_convnext_checkpoint(assets, tmp_path) -> None:
    convnext = shutil.copytree(assets.convnext, tmp_path / "convnext")
    model = build_tiny_model(assets, hybrid=True, fuser=True, convnext=convnext).eval()
    with torch.no_grad():  # open the gates so the ConvNeXt and CVFM shape the output
        for name, parameter in model.named_parameters():
            if name.endswith(("gate.alpha", "gamma1", "gamma2")):
                parameter.fill_(0.5)
    model.save_pretrained(tmp_path / "saved")
    shutil.rmtree(convnext)
    saved = json.loads((tmp_path / "saved" / "config.json").read_text())
    assert saved["vision_options"]["convnext"]["checkpoint"] is None
    reloaded = FilaForConditionalGeneration.from_pretrained(tmp_path / "saved").eval()
    batch = tiny_batch(model, assets)
    with torch.no_grad():
        assert torch.equal(model(**batch).logits, reloaded(**batch).logits)


# ---------------------------------------------------------------- training


def test_training_steps_reach_cvfm_and_projector_only(assets) -> None:
    model = build_tiny_model(assets, hybrid=True, fuser=False)
    batch = tiny_batch(model, assets)
    grads = train_steps(model, batch, ["connector", "cvfm"], steps=1)
    for name, grad in grads.items():
        if name.startswith(("vision_tower.clip.", "vision_tower.convnext.", "language_model.")):
            assert grad is None, f"frozen {name} got a gradient"
        elif name.startswith("connector.") or name.endswith("gate.alpha"):
            assert grad is not None and grad.abs().sum() > 0, name  # at init only the gates can move
    # Once the gates are open every CVFM parameter learns.
    grads = train_steps(model, batch, ["connector", "cvfm"], steps=1)
    for name, grad in grads.items():
        if name.startswith("vision_tower.cvfm."):
            assert grad is not None and grad.abs().sum() > 0, name


def test_the_convnext_is_its_own_part(assets) -> None:
    """`--tune_parts ...,convnext` trains FILA's ConvNeXt (built frozen, without grad) and nothing else of the
    vision side; `vision` is the ViT alone. A ConvNeXt that required grad but ran under no_grad would silently
    never train."""
    model = build_tiny_model(assets, hybrid=True, fuser=False)
    batch = tiny_batch(model, assets)
    grads = train_steps(model, batch, ["connector", "cvfm", "convnext"], steps=2)
    convnext = {name: grad for name, grad in grads.items() if name.startswith("vision_tower.convnext.")}
    assert convnext and all(grad is not None and grad.abs().sum() > 0 for grad in convnext.values())
    assert all(grads[name] is None for name in grads if name.startswith("vision_tower.clip."))
    model.zero_grad(set_to_none=True)
    grads = train_steps(model, batch, ["vision"], steps=1)
    assert all(grads[name] is None for name in convnext)
    assert grads["vision_tower.clip.encoder.layers.0.mlp.fc1.weight"] is not None

    args = TrainingArguments(output_dir="unused", tune_parts="connector,convnext", learning_rate=1e-3,
                             convnext_lr=2e-6, report_to="none")
    apply_tune_parts(model, args.parts())
    rates = {group["part"]: group["lr"] for group in optimizer_groups(model, args, set())}
    assert rates == {"connector": 1e-3, "convnext": 2e-6}

def test_a_trainable_convnext_must_be_a_tuned_part(tmp_path) -> None:
    """The old spelling (`convnext.trainable=true`) without `convnext` in --tune_parts would leave the ConvNeXt
    frozen: one line, before any weights."""
    from fila_train.training.train import train
    from fila_train.utils.errors import ConfigError

    model_args = ModelArguments(model_name_or_path="no/such/llm", vision_encoder="fila_hybrid",
                                vision_option=["convnext.trainable=true"])
    args = TrainingArguments(output_dir=str(tmp_path), tune_parts="connector,llm,cvfm", report_to="none")
    with pytest.raises(ConfigError, match="has no 'convnext': add it"):
        train(model_args, DataArguments(data_path="no/such.jsonl"), args)

def test_artifact_round_trip_is_bit_exact(assets, tmp_path) -> None:
    model = build_tiny_model(assets, hybrid=True, fuser=True)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(torch.randn_like(parameter) * 0.01)
    save_connector_artifact(model, tmp_path)
    fresh = build_tiny_model(assets, hybrid=True, fuser=True)
    load_connector_artifact(fresh, tmp_path)
    expected, got = aligned_state(model), aligned_state(fresh)
    assert any(k.startswith("vision_tower.cvfm.") for k in got) and any(k.startswith("connector.fuser.") for k in got)
    assert expected.keys() == got.keys()
    for name in expected:
        assert torch.equal(expected[name], got[name]), name


def test_artifact_of_other_part_options_is_refused_whole(assets, tmp_path) -> None:
    """A scalar CVFM gate (1,) would broadcast into a per-channel gate (dim,) without a word; a fuser with
    other sampling points would stop with torch's traceback. Both are one line, and nothing is loaded."""
    save_connector_artifact(build_tiny_model(assets, hybrid=True, fuser=True), tmp_path)
    for options, message in (({"vision_option": "cvfm.gate=channel"}, r"cvfm\.0\.fusion\.gate\.alpha has shape \(1,\), "
                                                                       r"the model expects \(32,\)"),
                             ({"connector_option": "num_points=2"}, r"sampling_offsets\.weight has shape \(\d+, 32\)")):
        other = build_tiny_model(assets, hybrid=True, fuser=True, extra=options)
        before = aligned_state(other)
        with pytest.raises(CheckpointError, match=message):
            load_connector_artifact(other, tmp_path)
        after = aligned_state(other)
        assert all(torch.equal(before[name], after[name]) for name in before)


def test_vision_flops_cover_every_view_and_part(assets) -> None:
    from fila_train.model.vision.flops import vision_flops

    model = build_tiny_model(assets, hybrid=True, fuser=False)
    flops = vision_flops(model.config)
    assert flops.canvas == (56, 56) and flops.views == 5
    assert flops.parts["total"] == pytest.approx(flops.parts["vit"] + flops.parts["convnext"] + flops.parts["cvfm"])


# ---------------------------------------------------------------- 2-process runs


def test_zero2_fila_mmfuser_stage1_trains_and_its_artifact_loads_bit_exact(runs, assets) -> None:
    output = runs["fila_mmfuser_zero2"].output_dir
    summary = runs["fila_mmfuser_zero2"].run.summary()
    assert (summary["vision_encoder"], summary["connector_type"]) == ("fila_hybrid", "mmfuser")
    assert summary["tune_parts"] == ["connector", "cvfm", "fuser"]
    assert_loss_falls(summary)
    fresh = build_tiny_model(assets, hybrid=True, fuser=True)
    before = aligned_state(fresh)
    load_connector_artifact(fresh, output)
    trained = aligned_state(FilaForConditionalGeneration.from_pretrained(output))
    loaded = aligned_state(fresh)
    assert loaded.keys() == trained.keys()
    for name in loaded:
        assert torch.equal(loaded[name], trained[name]), name
    for prefix in ("vision_tower.cvfm.", "connector.fuser.", "connector.projector."):
        assert any(not torch.equal(loaded[k], before[k]) for k in loaded if k.startswith(prefix)), prefix


def test_zero3_fila_mmfuser_stage2_loss_falls(runs) -> None:
    """Stage 2 (+ LLM) from the stage-1 run's connector artifact."""
    run = runs["fila_mmfuser_zero3"].run
    summary = run.summary() | {"log": run.rank_log(0)}
    assert summary["vision_encoder"] == "fila_hybrid" and summary["steps"] == SHARED_STEPS
    assert_loss_falls(summary)
    # The start-of-run summary: parameters by part and the vision FLOPs, hybrid and ViT alone.
    for marker in ("cvfm ", "vision forward per image (56x56, 5 view(s))", "ViT alone"):
        assert marker in summary["log"], marker
    flops = summary["vision_tflops_per_image"]
    assert flops["total"] > flops["vit"] > 0
    # The output carries its processor: tokenizer, chat template and image preprocessing, as served.
    from transformers import AutoProcessor

    from fila_train.processing.chat_templates import get_template

    processor = AutoProcessor.from_pretrained(run.output_dir)
    assert type(processor).__name__ == "FilaProcessor" and processor.image_processor.vision_encoder == "fila_hybrid"
    assert (run.output_dir / "chat_template.jinja").read_text() == get_template("vicuna_v1").jinja

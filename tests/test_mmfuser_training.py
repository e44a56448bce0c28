"""MMFuser as a trainable connector: layer checks, identity at init, gradients, artifact, ZeRO-3.

Shares the tiny session assets and the shared runs of distributed_utils with test_fila_training.py.
"""
from __future__ import annotations

import pytest
import torch
from distributed_utils import (  # noqa: F401  (assets and runs are fixtures)
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

from fila_train.model.connector import build_connector
from fila_train.training.connector_artifact import (
    load_connector_artifact,
    save_connector_artifact,
)


def test_default_layers_on_a_tiny_vit_fail_naming_the_option(assets) -> None:
    model = build_tiny_model(assets, hybrid=False, fuser=True)
    vision = model.config.vision_config  # 6 layers: 7 hidden states
    with pytest.raises(ValueError, match=r"key_layers=\(-22, -17, -12, -7\) \(--fuser_key_layers\): layer -22"):
        build_connector("mmfuser", vision, 64, {})
    with pytest.raises(ValueError, match=r"query_layer=7 \(--fuser_query_layer\)"):
        build_connector("mmfuser", vision, 64, {"key_layers": [1, 2], "query_layer": 7})
    assert model.config.connector_options["key_layers"] == list(TINY.fuser_key_layers)
    assert model.connector.needs_hidden_states
    connector_children = {n.split(".")[1] for n, _ in model.named_parameters() if n.startswith("connector.")}
    assert connector_children == {"fuser", "projector"}
    assert all(name.startswith("connector.fuser.") for name, _ in model.named_parts()["fuser"])


@pytest.mark.parametrize("hybrid", [False, True], ids=["clip", "fila"])
def test_identity_at_init_projector_sees_layer_minus_2(assets, hybrid: bool) -> None:
    model = build_tiny_model(assets, hybrid=hybrid, fuser=True).eval()
    plain = with_mlp_connector(assets, model, hybrid)
    batch = tiny_batch(model, assets)
    seen = []
    handle = model.connector.projector.register_forward_hook(lambda _m, inputs, _o: seen.append(inputs[0]))
    with torch.no_grad():
        fused = model.encode_images(batch["images"])
        layer_minus_2 = model.vision_tower(batch["images"], output_hidden_states=True).hidden_states[-2]
        expected = plain.encode_images(batch["images"])
        logits, plain_logits = model(**batch).logits, plain(**batch).logits
    handle.remove()
    assert torch.equal(seen[0], layer_minus_2)  # gammas 0: the fuser hands on its query exactly
    assert torch.equal(fused, expected)
    torch.testing.assert_close(logits, plain_logits, rtol=0, atol=0)


def test_training_steps_reach_the_whole_fuser(assets) -> None:
    model = build_tiny_model(assets, hybrid=False, fuser=True)
    batch = tiny_batch(model, assets)
    # Step 1 moves gamma1, step 2 then gamma2 (its gradient is scaled by gamma1), step 3 sees all.
    grads = train_steps(model, batch, ["connector", "fuser"], steps=3)
    for name, grad in grads.items():
        if name.startswith("connector."):
            assert grad is not None and grad.abs().sum() > 0, name
        else:
            assert grad is None, f"frozen {name} got a gradient"


def test_fuser_artifact_round_trip_is_bit_exact(assets, tmp_path) -> None:
    model = build_tiny_model(assets, hybrid=False, fuser=True)
    train_steps(model, tiny_batch(model, assets), ["connector", "fuser"], steps=2)
    save_connector_artifact(model, tmp_path)
    fresh = build_tiny_model(assets, hybrid=False, fuser=True)
    load_connector_artifact(fresh, tmp_path)
    expected, got = aligned_state(model), aligned_state(fresh)
    assert expected.keys() == got.keys() and any(k.startswith("connector.fuser.") for k in got)
    for name in expected:
        assert torch.equal(expected[name], got[name]), name
    # A plain mlp2x_gelu model refuses the artifact instead of loading part of it.
    with pytest.raises(ValueError, match="was trained for"):
        load_connector_artifact(build_tiny_model(assets, hybrid=False, fuser=False), tmp_path)


def test_zero3_mmfuser_stage1_loss_falls(runs) -> None:
    run = runs["mmfuser_zero3"].run
    summary = run.summary() | {"log": run.rank_log(0)}
    assert (summary["vision_encoder"], summary["connector_type"]) == ("clip", "mmfuser")
    assert summary["tune_parts"] == ["connector", "fuser"]
    assert_loss_falls(summary)
    assert "vision forward per image (28x28, 1 view(s))" in summary["log"]

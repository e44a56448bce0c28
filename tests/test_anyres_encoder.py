"""The crop-only ``anyres`` encoder is exactly FILA's ViT side: the same views, tokens and feature layer, the
same features when FILA's CVFM gates are zero, and weights that move between the two models."""
from __future__ import annotations

import pytest
import torch
from PIL import Image

from distributed_utils import TINY, build_tiny_model, tiny_batch
from fila_train.model import FilaForConditionalGeneration
from fila_train.model.builder import build_model


def tiny_anyres(assets):
    torch.manual_seed(0)
    return build_model(str(assets.llm), str(assets.clip), vision_encoder="anyres",
                       vision_options={"anyres": {"canvases": [list(c) for c in TINY.canvases]}})


@pytest.fixture(scope="module")
def fila(tiny_assets):
    return build_tiny_model(tiny_assets, hybrid=True, fuser=False).eval()


def test_same_views_and_token_counts_as_fila_without_the_convnext_canvas(tiny_assets, fila):
    anyres = tiny_anyres(tiny_assets)
    theirs, ours = fila.image_processor(), anyres.image_processor()
    for size in ((61, 37), (20, 90), (300, 300)):
        image = Image.new("RGB", size, (120, 40, 200))
        fila_views, anyres_views = theirs(image), ours(image)
        assert torch.equal(fila_views["pixel_values"], anyres_views["pixel_values"])
        assert fila_views["grid"] == anyres_views["grid"] and "hr_pixel_values" not in anyres_views
        assert theirs.num_image_tokens(fila_views) == ours.num_image_tokens(anyres_views)
    assert anyres.config.vision_feature_layer == fila.config.vision_feature_layer


def test_fila_with_closed_gates_gives_exactly_the_anyres_features(tiny_assets, fila):
    from fila_train.model.vision.anyres_encoder import AnyresEncoderConfig, AnyresVisionEncoder

    anyres = AnyresVisionEncoder(fila.config.vision_config, AnyresEncoderConfig.from_dict(fila.config.vision_options),
                                 fila.config.vision_feature_layer, tower=fila.vision_tower.clip).eval()
    images = tiny_batch(fila, tiny_assets, size=4)["images"]
    gates = [block.fusion.gate.alpha for block in fila.vision_tower.cvfm]
    assert all(gate.abs().sum() == 0 for gate in gates)  # FILA's init: gates closed
    with torch.no_grad():
        assert torch.equal(fila.vision_tower(images).features, anyres(images).features)
        gates[0].fill_(0.5)  # an open gate: the ConvNeXt's detail comes in
        try:
            assert not torch.equal(fila.vision_tower(images).features, anyres(images).features)
        finally:
            gates[0].zero_()


def test_weights_move_between_fila_and_anyres_with_the_same_logits(tiny_assets, fila, tmp_path):
    batch = tiny_batch(fila, tiny_assets, size=2, stage2=True)
    with torch.no_grad():
        expected = fila(**batch).logits
    # FILA -> anyres: the ViT, projector and LLM load; the ConvNeXt and CVFM weights are left out.
    fila.save_pretrained(tmp_path / "fila")
    config = FilaForConditionalGeneration.config_class.from_pretrained(tmp_path / "fila")
    config.vision_encoder, config.vision_options = "anyres", {"anyres": fila.config.vision_options["anyres"]}
    anyres, info = FilaForConditionalGeneration.from_pretrained(tmp_path / "fila", config=config,
                                                                output_loading_info=True)
    assert not info["missing_keys"] and all(key.startswith(("vision_tower.convnext.", "vision_tower.cvfm."))
                                            for key in info["unexpected_keys"])
    with torch.no_grad():
        assert torch.equal(anyres.eval()(**batch).logits, expected)
    # anyres -> FILA: a FILA model (its own ConvNeXt, fresh CVFM) takes all the anyres weights; its closed
    # gates change nothing.
    again = build_tiny_model(tiny_assets, hybrid=True, fuser=False)
    missing, unexpected = again.load_state_dict(anyres.state_dict(), strict=False)
    assert not unexpected and missing and all(key.startswith(("vision_tower.convnext.", "vision_tower.cvfm."))
                                              for key in missing)
    with torch.no_grad():
        assert torch.equal(again.eval()(**batch).logits, expected)


def anyres_flags() -> dict[str, str]:
    return {"vision_encoder": "anyres", "vision_option": f"anyres.canvases={TINY.hybrid_flags('')['anyres_canvases']}"}


def test_an_anyres_stage1_artifact_starts_fila_and_not_the_reverse(tiny_assets, fila, tmp_path, caplog):
    """anyres -> FILA: the connector loads, CVFM keeps its closed gates, so FILA starts as the anyres model.
    FILA -> anyres would drop a trained CVFM: refused, naming the encoders."""
    from fila_train.training.connector_artifact import load_connector_artifact, save_connector_artifact
    from fila_train.utils.errors import CheckpointError

    anyres = tiny_anyres(tiny_assets).eval()
    with torch.no_grad():
        for parameter in anyres.connector.parameters():
            parameter.add_(torch.randn_like(parameter) * 0.05)  # a "trained" connector, unlike any fresh one
    save_connector_artifact(anyres, tmp_path / "anyres")
    started = build_tiny_model(tiny_assets, hybrid=True, fuser=False).eval()
    before = {name: p.clone() for name, p in started.vision_tower.cvfm.named_parameters()}
    with caplog.at_level("INFO"):
        load_connector_artifact(started, tmp_path / "anyres")
    assert "connector artifact from a stage 1 of anyres: cvfm keep their own init" in caplog.text
    for name, parameter in started.connector.state_dict().items():
        assert torch.equal(parameter, anyres.connector.state_dict()[name]), name
    for name, parameter in started.vision_tower.cvfm.named_parameters():
        assert torch.equal(parameter, before[name]), name
    started.vision_tower.clip.load_state_dict(anyres.vision_tower.clip.state_dict())
    started.language_model.load_state_dict(anyres.language_model.state_dict())
    batch = tiny_batch(fila, tiny_assets, size=2, stage2=True)
    with torch.no_grad():
        assert torch.equal(started(**batch).logits, anyres(**batch).logits)

    save_connector_artifact(fila, tmp_path / "fila")
    with pytest.raises(CheckpointError, match=r"trained for a different model: vision_encoder fila_hybrid "
                                              r"\(this run: anyres\)"):
        load_connector_artifact(tiny_anyres(tiny_assets), tmp_path / "fila")


def test_the_preflight_takes_the_same_artifacts_before_any_weights_load(tiny_assets, fila, tmp_path):
    from fila_train.demo.tiny_models import as_cli
    from fila_train.training.connector_artifact import save_connector_artifact
    from fila_train.training.preflight import PreflightError, preflight

    save_connector_artifact(tiny_anyres(tiny_assets), tmp_path / "anyres")
    save_connector_artifact(fila, tmp_path / "fila")
    base = {"model_name_or_path": str(tiny_assets.llm), "vision_tower": str(tiny_assets.clip),
            "data_path": str(tiny_assets.stage2_data), "image_folder": str(tiny_assets.image_folder),
            "output_dir": str(tmp_path / "out")}
    hybrid = {"vision_encoder": "fila_hybrid", **TINY.hybrid_flags(tiny_assets.convnext)}
    preflight(as_cli(base | hybrid | {"pretrained_connector": str(tmp_path / "anyres")}))
    preflight(as_cli(base | anyres_flags() | {"pretrained_connector": str(tmp_path / "anyres")}))
    with pytest.raises(PreflightError, match=r"vision_encoder fila_hybrid \(this run: anyres\)$"):
        preflight(as_cli(base | anyres_flags() | {"pretrained_connector": str(tmp_path / "fila")}))
    with pytest.raises(PreflightError, match=r"vision_encoder anyres \(this run: clip\)$"):
        preflight(as_cli(base | {"pretrained_connector": str(tmp_path / "anyres")}))

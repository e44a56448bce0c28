"""Every field of the encoder's and connector's options dataclasses can be set from the command line and the
scripts, typed by the dataclass; an unknown key names the valid ones; a fresh fila_hybrid needs ConvNeXt
weights unless random ones are asked for. All of it before any weights load."""
from __future__ import annotations

import os
import subprocess
import sys
import types
import typing

import pytest
from transformers import HfArgumentParser

from distributed_utils import REPO
from fila_train.model.arguments import ModelArguments
from fila_train.model.builder import build_model
from fila_train.model.connector.mmfuser import MMFuserConfig
from fila_train.model.options import option_fields, option_keys
from fila_train.model.vision.hybrid_encoder import HybridEncoderConfig
from fila_train.utils.errors import ConfigError

# Command-line text -> the value the options dict must then hold, by the field's type.
SAMPLES = {int: ("3", 3), float: ("0.25", 0.25), bool: ("true", True), str: ("some_value", "some_value"),
           tuple[int, ...]: ("1,2", [1, 2]), tuple[float, float, float]: ("0.5,0.25,0.125", [0.5, 0.25, 0.125]),
           tuple[tuple[int, int], ...]: ("28x56,56x28", [[28, 56], [56, 28]])}


def field_type(cls: type, key: str):
    *sections, name = key.split(".")
    for section in sections:
        cls = option_fields(cls)[section]
    annotation = option_fields(cls)[name]
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):  # X | None: the X
        return next(arg for arg in typing.get_args(annotation) if arg is not type(None))
    return annotation


def nested(key: str, value) -> dict:
    *sections, name = key.split(".")
    result = {name: value}
    for section in reversed(sections):
        result = {section: result}
    return result


CASES = [("fila_hybrid", "mlp2x_gelu", "vision_option", HybridEncoderConfig, key) for key in option_keys(HybridEncoderConfig)] \
    + [("clip", "mmfuser", "connector_option", MMFuserConfig, key) for key in option_keys(MMFuserConfig)]


@pytest.mark.parametrize("encoder, connector, flag, cls, key", CASES, ids=[f"{c[2]}:{c[4]}" for c in CASES])
def test_every_option_field_is_settable_and_typed(encoder, connector, flag, cls, key):
    text, value = SAMPLES[field_type(cls, key)]
    args = ModelArguments(model_name_or_path="llm", vision_encoder=encoder, connector_type=connector,
                          **{flag: [f"{key}={text}"]})
    options = args.vision_options() if flag == "vision_option" else args.connector_options()
    assert options == nested(key, value)


def test_the_knobs_that_had_no_flag_are_among_them():
    assert {"cvfm.gate", "anyres.global_view", "convnext.trainable", "convnext.random_init"} <= set(
        option_keys(HybridEncoderConfig))
    assert "num_heads" in option_keys(MMFuserConfig)


@pytest.mark.parametrize("assignment, message", [
    ("cvfm.gates=channel", "--vision_option: unknown key 'cvfm.gates' of HybridEncoderConfig; valid keys: "
                           "anyres.tile_size, anyres.canvases, anyres.global_view, convnext.model_name"),
    ("cvfm=channel", "unknown key 'cvfm'"),
    ("convnext.trainable=maybe", "'convnext.trainable=maybe': expected true or false, got 'maybe'"),
    ("cvfm.vit_layers=2,six", "'cvfm.vit_layers=2,six': invalid literal for int()"),
    ("cvfm.gate", "'cvfm.gate': expected KEY=VALUE"),
    ("anyres.canvases=672", "'anyres.canvases=672': '672' is not WxH"),
    ("convnext.mean=0.5,0.5", "'convnext.mean=0.5,0.5': expected 3 comma-separated values, got 2"),
    ("cvfm.vit_layers=", "'cvfm.vit_layers=': expected at least one value"),
])
def test_a_bad_option_is_one_line_naming_it(assignment, message):
    with pytest.raises(ConfigError, match=None) as error:
        ModelArguments(model_name_or_path="llm", vision_encoder="fila_hybrid", vision_option=[assignment])
    assert message in str(error.value) and "\n" not in str(error.value)


def test_options_of_a_part_without_options_or_of_another_part_are_refused():
    with pytest.raises(ConfigError, match="--vision_option: clip has no options"):
        ModelArguments(model_name_or_path="llm", vision_option=["cvfm.gate=channel"])
    with pytest.raises(ConfigError, match="--cvfm_fusion only apply to --vision_encoder fila_hybrid, not clip"):
        ModelArguments(model_name_or_path="llm", cvfm_fusion="add")


def test_values_the_dataclass_refuses_and_a_fila_hybrid_without_weights_fail_before_any_weights_load(tiny_assets,
                                                                                                 tmp_path):
    not_an_llm = str(tmp_path / "no-llm-here")  # loading it would fail with another error
    small = {"convnext": {"dims": [16, 32, 64, 128], "depths": [1, 1, 1, 1]}}
    with pytest.raises(ConfigError, match="fila_hybrid needs ConvNeXt weights: .*convnext.random_init=true"):
        build_model(not_an_llm, str(tiny_assets.clip), vision_encoder="fila_hybrid", vision_options=small)
    # Both: before, the checkpoint loaded and random_init=true was silently ignored.
    with pytest.raises(ConfigError, match="convnext.random_init=true and convnext.checkpoint=.* contradict each other"):
        build_model(not_an_llm, str(tiny_assets.clip), vision_encoder="fila_hybrid", vision_options={
            "convnext": {**small["convnext"], "random_init": True, "checkpoint": str(tiny_assets.convnext)},
            "cvfm": {"vit_layers": [1, 2, 3, 4]}})
    bad_gate = {**small, "convnext": {**small["convnext"], "random_init": True}, "cvfm": {"gate": "sideways"}}
    with pytest.raises(ConfigError, match="CVFMConfig.gate='sideways'"):
        build_model(not_an_llm, str(tiny_assets.clip), vision_encoder="fila_hybrid", vision_options=bad_gate)
    # The connector's options too: the default MMFuser layers do not exist in the tiny 6-layer ViT.
    with pytest.raises(ConfigError, match=r"MMFuser option key_layers=\(-22, -17, -12, -7\)"):
        build_model(not_an_llm, str(tiny_assets.clip), connector_type="mmfuser")
    # A typo or a model without a ConvNeXt trunk: before, a RuntimeError traceback listing all 144 OpenCLIP models
    # (or the trunk's ConfigError) while building the encoder, after the LLM had loaded.
    for name in ("convnext_large_d_32", "ViT-L-14"):
        with pytest.raises(ConfigError, match=rf"--convnext_model {name} \(convnext.model_name\) is not one of "
                                              r"OpenCLIP's ConvNeXt models: .*convnext_large_d_320"):
            build_model(not_an_llm, str(tiny_assets.clip), vision_encoder="fila_hybrid", vision_options={
                "convnext": {"model_name": name, "random_init": True}, "cvfm": {"vit_layers": [1, 2, 3, 4]}})
    # A named architecture and dims/depths of a small one: before, the name was silently ignored.
    with pytest.raises(ConfigError, match=r"--convnext_model convnext_base and --convnext_dims/--convnext_depths "
                                          r"name two ConvNeXts: give one"):
        build_model(not_an_llm, str(tiny_assets.clip), vision_encoder="fila_hybrid", vision_options={
            "convnext": {**small["convnext"], "model_name": "convnext_base", "random_init": True},
            "cvfm": {"vit_layers": [1, 2, 3, 4]}})
    # CVFM's default layers (2, 6, 12, 20: ViT-L's) on the 6-layer ViT: before, refused only while building the
    # encoder, after the LLM and the ViT had loaded.
    with pytest.raises(ConfigError, match=r"--cvfm_layers \(cvfm.vit_layers\) \(2, 6, 12, 20\) exceed the ViT's 6 "
                                          r"layers"):
        build_model(not_an_llm, str(tiny_assets.clip), vision_encoder="fila_hybrid",
                    vision_options={**small, "convnext": {**small["convnext"], "random_init": True}})
    # And the feature layer (the tiny ViT has 6 layers): before, an IndexError at the first forward.
    with pytest.raises(ConfigError, match=r"--vision_feature_layer -8 is out of range for a ViT with 6 layers"):
        build_model(not_an_llm, str(tiny_assets.clip), vision_feature_layer=-8)
    random = {**small, "convnext": {**small["convnext"], "random_init": True},
              "anyres": {"canvases": [[56, 56], [28, 56]]}, "cvfm": {"vit_layers": [1, 2, 3, 4]}}
    # A tile that is not the ViT's input size (28): before, refused only while building the encoder, after the LLM
    # and the ViT had loaded (and the pre-weights token counts were those of 56-pixel tiles).
    for encoder in ("anyres", "fila_hybrid"):
        with pytest.raises(ConfigError, match=r"anyres.tile_size=56: the tiles are the ViT's input, 28x28 for this "
                                              r"tower"):
            build_model(not_an_llm, str(tiny_assets.clip), vision_encoder=encoder,
                        vision_options={**random, "anyres": {"tile_size": 56, "canvases": [[112, 112]]}})
    model = build_model(str(tiny_assets.llm), str(tiny_assets.clip), vision_encoder="fila_hybrid",
                        vision_options=random)
    assert model.config.vision_options["convnext"]["random_init"] is True


def script_flags(**env: str) -> list[str]:
    """The `fila-train train` flags finetune.sh would launch with (DRY_RUN=1 prints them)."""
    result = subprocess.run(["bash", "scripts/finetune.sh"], cwd=REPO, capture_output=True, text=True, timeout=120,
                            env=dict(os.environ, DRY_RUN="1", PYTHON=sys.executable, **env))
    assert result.returncode == 0, result.stderr
    return result.stdout.split("fila_train.cli train", 1)[1].split()


def test_the_scripts_pass_any_option_and_a_small_random_convnext():
    default = script_flags()
    assert "--convnext_checkpoint=laion/CLIP-convnext_large_d_320.laion2B-s29B-b131K-ft-soup" in default
    flags = script_flags(CONVNEXT_DIMS="16,32,64,128", CONVNEXT_DEPTHS="1,1,1,1", CVFM_LAYERS="1,2,3,4",
                         VISION_OPTIONS="convnext.random_init=true cvfm.gate=channel anyres.global_view=canvas",
                         CONNECTOR="mmfuser", CONNECTOR_OPTIONS="num_heads=4 key_layers=-4,-3")
    assert not any(flag.startswith("--convnext_checkpoint") for flag in flags)
    model_args, _ = HfArgumentParser(ModelArguments).parse_args_into_dataclasses(args=flags,
                                                                                return_remaining_strings=True)
    assert model_args.vision_options() == {
        "convnext": {"dims": [16, 32, 64, 128], "depths": [1, 1, 1, 1], "random_init": True},
        "cvfm": {"vit_layers": [1, 2, 3, 4], "gate": "channel"}, "anyres": {"global_view": "canvas"}}
    assert model_args.connector_options() == {"num_heads": 4, "key_layers": [-4, -3]}


def test_a_feature_layer_the_connector_never_reads_is_refused():
    """MMFuser reads --fuser_query_layer and --fuser_key_layers, never the feature layer: before, --vision_feature_layer
    -3 with --connector_type mmfuser was accepted and changed nothing (the same logits as -2), exit 0."""
    with pytest.raises(ConfigError, match=r"--vision_feature_layer -3 has no effect with --connector_type mmfuser, "
                                          r"which reads .*--fuser_query_layer"):
        ModelArguments(model_name_or_path="llm", connector_type="mmfuser", vision_feature_layer=-3)
    ModelArguments(model_name_or_path="llm", connector_type="mmfuser", fuser_query_layer=-3)  # the way to say it
    ModelArguments(model_name_or_path="llm", connector_type="linear", vision_feature_layer=-3)


def test_a_vision_tower_normalised_otherwise_than_openai_clip_is_refused_before_any_weights_load(tiny_assets,
                                                                                                 tmp_path):
    """Every encoder normalises pixels with the OpenAI CLIP constants (and FILA's ConvNeXt is checked against them).
    Before, a tower whose preprocessor_config.json says otherwise (mean 0.5, std 0.5) was fed OpenAI-normalised
    pixels, exit 0."""
    import shutil

    from transformers import CLIPImageProcessor

    tower = tmp_path / "tower"
    shutil.copytree(tiny_assets.clip, tower)
    CLIPImageProcessor(image_mean=[0.5] * 3, image_std=[0.5] * 3).save_pretrained(tower)
    with pytest.raises(ConfigError, match=r"preprocessor_config.json normalises with mean \(0.5, 0.5, 0.5\) std "
                                          r"\(0.5, 0.5, 0.5\), but fila-train's image processors use OpenAI CLIP's"):
        build_model(str(tmp_path / "no-llm-here"), str(tower))
    CLIPImageProcessor().save_pretrained(tower)  # OpenAI CLIP's own constants: accepted
    with pytest.raises(OSError):  # then it goes on to load the LLM, which is not there
        build_model(str(tmp_path / "no-llm-here"), str(tower))


def test_a_convnext_checkpoint_normalised_otherwise_is_refused_before_any_weights_load(tiny_assets, tmp_path,
                                                                                       monkeypatch):
    """The ConvNeXt checkpoint folder's open_clip_config.json says what its weights were trained with. Before, an
    ImageNet-normalised one, and convnext.mean/std contradicting the folder, were refused only while building the
    encoder, after the LLM had loaded (minutes for a 7B under ZeRO-3)."""
    import json
    import shutil

    folder = tmp_path / "imagenet-convnext"
    shutil.copytree(tiny_assets.convnext, folder)
    meta = json.loads((folder / "open_clip_config.json").read_text())
    meta["preprocess_cfg"] = {"mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]}
    (folder / "open_clip_config.json").write_text(json.dumps(meta))
    convnext = {"dims": [16, 32, 64, 128], "depths": [1, 1, 1, 1], "checkpoint": str(folder)}
    build = lambda convnext: build_model(str(tmp_path / "no-llm-here"), str(tiny_assets.clip),  # noqa: E731
                                         vision_encoder="fila_hybrid",
                                         vision_options={"convnext": convnext, "cvfm": {"vit_layers": [1, 2, 3, 4]}})
    with pytest.raises(ConfigError, match=r"ConvNeXt normalisation mean=\(0.485, 0.456, 0.406\) .* differs from "
                                          r"the ViT's"):
        build(convnext)
    with pytest.raises(ConfigError, match=r"convnext.mean/std .* contradict .*open_clip_config.json \(mean "
                                          r"\(0.485"):
        build({**convnext, "mean": [0.48145466, 0.4578275, 0.40821073], "std": [0.26862954, 0.26130258, 0.27577711]})
    # The scripts name a hub repo (its config alone is read, from the HF cache here, offline).
    import huggingface_hub.constants

    repo = tmp_path / "hub" / "models--laion--imagenet-convnext"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text("abc123")
    shutil.copytree(folder, repo / "snapshots" / "abc123")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    with pytest.raises(ConfigError, match=r"ConvNeXt normalisation mean=\(0.485, 0.456, 0.406\)"):
        build({**convnext, "checkpoint": "laion/imagenet-convnext"})
    for passes in (str(tiny_assets.convnext), "laion/not-in-the-cache"):  # the latter is reported by its load
        with pytest.raises(OSError, match="no-llm-here"):  # the check passes; the build goes on to the missing LLM
            build({**convnext, "checkpoint": passes})


@pytest.mark.parametrize("flags", [
    {"cvfm_fusion": "add", "vision_option": ["cvfm.fusion=concat"]},  # a shorthand and the same key
    {"vision_option": ["cvfm.gate=channel", "cvfm.gate=scalar"]},  # the same key twice
])
def test_one_option_given_two_values_is_refused(flags):
    """Before, the later value won without a word: --cvfm_fusion add ran the concat fusion, exit 0."""
    with pytest.raises(ConfigError, match=r"cvfm\.(fusion|gate) is given twice, as '?(add|channel)'? and "
                                          r"'?(concat|scalar)'?: give it once"):
        ModelArguments(model_name_or_path="llm", vision_encoder="fila_hybrid", **flags)
    ModelArguments(model_name_or_path="llm", vision_encoder="fila_hybrid",  # the same value twice is no conflict
                   vision_option=["cvfm.gate=channel", "cvfm.gate=channel"])

"""Starting from a LLaVA release: a llava-hf folder (transformers' LlavaForConditionalGeneration, the reference)
and an original LLaVA-1.5 folder (LlavaLlama weights with model.mm_projector.*, the tower named in its config),
both built here from tiny configs. Started as LLaVA-1.5 (clip + mlp2x_gelu, or MMFuser on top) our logits are
transformers' Llava's; FILA on top starts equal to the same release on FILA's views without ConvNeXt (anyres).
LLaVA's stage-1 mm_projector.bin starts a run through --pretrained_connector, with the artifact's checks."""
from __future__ import annotations

import json

import pytest
import torch
from transformers import CLIPVisionConfig, CLIPVisionModel, LlamaConfig, LlavaConfig, LlavaForConditionalGeneration

from distributed_utils import TINY, tiny_batch
from fila_train.model.builder import build_model, load_tokenizer
from fila_train.training.connector_artifact import load_connector_artifact
from fila_train.training.preflight import PreflightError, preflight
from fila_train.utils.errors import CheckpointError, ConfigError


@pytest.fixture(scope="module")
def llava(tiny_assets, tmp_path_factory):
    """A random tiny LlavaForConditionalGeneration saved by transformers, with the tiny tokenizer; its LLM
    has one extra embedding row for <image>, as llava-hf releases do."""
    from transformers import AutoTokenizer

    text = LlamaConfig.from_pretrained(tiny_assets.llm)
    text.vocab_size += 1
    config = LlavaConfig(vision_config=CLIPVisionConfig.from_pretrained(tiny_assets.clip), text_config=text,
                         image_token_index=text.vocab_size - 1, vision_feature_layer=-2,
                         vision_feature_select_strategy="default", projector_hidden_act="gelu")
    torch.manual_seed(0)
    model = LlavaForConditionalGeneration(config).eval()
    folder = tmp_path_factory.mktemp("llava-hf")
    model.save_pretrained(folder)
    AutoTokenizer.from_pretrained(tiny_assets.llm).save_pretrained(folder)
    return folder, model


@pytest.fixture(scope="module")
def original(llava, tmp_path_factory):
    """The same weights in the original LLaVA-1.5 layout: bin shards with an index, the tower apart."""
    from transformers import AutoTokenizer

    folder_hf, model = llava
    folder = tmp_path_factory.mktemp("llava-original")
    tower = folder / "tower"
    tower_model = CLIPVisionModel(model.config.vision_config)
    tower_model.load_state_dict(model.model.vision_tower.state_dict())
    tower_model.save_pretrained(tower)
    llm = {f"model.{name}": value for name, value in model.model.language_model.state_dict().items()}
    llm["lm_head.weight"] = model.lm_head.weight.detach()
    projector = model.model.multi_modal_projector
    mm = {"model.mm_projector.0.weight": projector.linear_1.weight, "model.mm_projector.0.bias": projector.linear_1.bias,
          "model.mm_projector.2.weight": projector.linear_2.weight, "model.mm_projector.2.bias": projector.linear_2.bias}
    shards = {"pytorch_model-00001-of-00002.bin": llm, "pytorch_model-00002-of-00002.bin":
              {key: value.detach().clone() for key, value in mm.items()}}
    for name, state in shards.items():
        torch.save({key: value.detach().clone().contiguous() for key, value in state.items()}, folder / name)
    (folder / "pytorch_model.bin.index.json").write_text(json.dumps(
        {"metadata": {}, "weight_map": {key: name for name, state in shards.items() for key in state}}))
    config = model.config.text_config.to_dict() | {
        "model_type": "llava_llama", "architectures": ["LlavaLlamaForCausalLM"], "mm_vision_tower": str(tower),
        "mm_projector_type": "mlp2x_gelu", "mm_vision_select_layer": -2, "mm_vision_select_feature": "patch",
        "mm_hidden_size": model.config.vision_config.hidden_size, "mm_use_im_start_end": False,
        "mm_use_im_patch_token": False, "image_aspect_ratio": "pad", "tune_mm_mlp_adapter": False}
    (folder / "config.json").write_text(json.dumps(config))
    AutoTokenizer.from_pretrained(folder_hf).save_pretrained(folder)
    return folder


def llava_logits(model: LlavaForConditionalGeneration, batch: dict, image_token_id: int) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=batch["input_ids"].masked_fill(batch["input_ids"] == image_token_id,
                                                              model.config.image_token_id),
                     attention_mask=batch["attention_mask"], pixel_values=batch["images"]["pixel_values"]).logits


def our_logits(model, batch: dict) -> torch.Tensor:
    with torch.no_grad():
        return model.eval()(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                            images=batch["images"]).logits


@pytest.mark.parametrize("layout", ["llava-hf", "original"])
@pytest.mark.parametrize("connector", ["mlp2x_gelu", "mmfuser"])
def test_started_as_llava_our_logits_are_transformers_llavas(layout, connector, llava, original, tiny_assets):
    folder = llava[0] if layout == "llava-hf" else original
    options = TINY.fuser_flags() if connector == "mmfuser" else {}
    ours = build_model(str(folder), connector_type=connector, connector_options=(
        {"key_layers": [int(x) for x in options["fuser_key_layers"].split(",")],
         "query_layer": int(options["fuser_query_layer"])} if options else None))
    assert ours.config.vision_feature_layer == -2 and ours.config.text_config.vocab_size == \
        llava[1].config.text_config.vocab_size
    batch = tiny_batch(ours, tiny_assets, size=3, stage2=True)
    torch.testing.assert_close(our_logits(ours, batch), llava_logits(llava[1], batch, ours.config.image_token_id),
                               rtol=0, atol=1e-5)


def test_fila_on_top_of_a_llava_release_starts_as_the_release_on_filas_views(llava, tiny_assets):
    """CVFM's gates are closed: FILA started from the release equals the release on FILA's views (anyres)."""
    hybrid = {"convnext": {"checkpoint": str(tiny_assets.convnext), "dims": [16, 32, 64, 128], "depths": [1, 1, 1, 1]},
              "cvfm": {"vit_layers": [1, 2, 3, 4]}, "anyres": {"canvases": [[112, 112], [56, 112], [112, 56]]}}
    fila = build_model(str(llava[0]), vision_encoder="fila_hybrid", vision_options=hybrid)
    anyres = build_model(str(llava[0]), vision_encoder="anyres", vision_options={"anyres": hybrid["anyres"]})
    fila_batch, anyres_batch = (tiny_batch(model, tiny_assets, size=3, stage2=True) for model in (fila, anyres))
    assert torch.equal(fila_batch["input_ids"], anyres_batch["input_ids"])
    torch.testing.assert_close(our_logits(fila, fila_batch), our_logits(anyres, anyres_batch), rtol=0, atol=1e-5)
    assert torch.equal(fila.connector.projector[0].weight, llava[1].model.multi_modal_projector.linear_1.weight)


def test_llava_stage1_projector_starts_a_run(llava, tiny_assets, tmp_path):
    """mm_projector.bin (LLaVA's stage-1 output) through --pretrained_connector: loaded into the connector with
    the shape and architecture check; FILA's CVFM keeps its init; wrong ones are one line, also at preflight."""
    projector = llava[1].model.multi_modal_projector
    path = tmp_path / "mm_projector.bin"
    torch.save({"model.mm_projector.0.weight": projector.linear_1.weight.detach(),
                "model.mm_projector.0.bias": projector.linear_1.bias.detach(),
                "model.mm_projector.2.weight": projector.linear_2.weight.detach(),
                "model.mm_projector.2.bias": projector.linear_2.bias.detach()}, path)
    model = build_model(str(tiny_assets.llm), str(tiny_assets.clip))
    load_connector_artifact(model, path)
    assert torch.equal(model.connector.projector[2].weight, projector.linear_2.weight)
    flags = ["--model_name_or_path", str(tiny_assets.llm), "--vision_tower", str(tiny_assets.clip),
             "--data_path", str(tiny_assets.stage2_data), "--image_folder", str(tiny_assets.image_folder),
             "--pretrain_mm_mlp_adapter", str(path)]  # LLaVA's flag for it
    preflight(flags)
    linear = build_model(str(tiny_assets.llm), str(tiny_assets.clip), connector_type="linear")
    with pytest.raises(CheckpointError, match="is LLaVA's mlp2x_gelu projector, but the model's connector has 1"):
        load_connector_artifact(linear, path)
    with pytest.raises(PreflightError, match="is LLaVA's mlp2x_gelu projector, but the model's connector has 1"):
        preflight(flags + ["--connector_type", "linear"])
    wide = tmp_path / "wide" / "mm_projector.bin"
    wide.parent.mkdir()
    torch.save({"model.mm_projector.0.weight": torch.zeros(8, 5), "model.mm_projector.0.bias": torch.zeros(8),
                "model.mm_projector.2.weight": torch.zeros(8, 8), "model.mm_projector.2.bias": torch.zeros(8)}, wide)
    sizes = f"{model.config.vision_config.hidden_size} \\(vision tower\\) -> {model.config.text_config.hidden_size}"
    with pytest.raises(CheckpointError, match=f"projects 5 -> 8 features, the model needs {sizes} \\(LLM\\)"):
        load_connector_artifact(model, wide)
    with pytest.raises(PreflightError, match="projects 5 -> 8 features"):
        preflight([*flags[:-1], str(wide)])


def test_a_llava_release_we_cannot_start_from_is_one_line(original, tmp_path):
    config = json.loads((original / "config.json").read_text())
    for change, says in (({"mm_use_im_start_end": True}, "image start/end and patch tokens are not implemented"),
                         ({"image_aspect_ratio": "anyres"}, "not LLaVA-1.5's single padded view"),
                         ({"mm_projector_type": "identity"}, "mm_projector_type 'identity'")):
        folder = tmp_path / next(iter(change))
        folder.mkdir()
        for item in original.iterdir():
            (folder / item.name).symlink_to(item)
        (folder / "config.json").unlink()
        (folder / "config.json").write_text(json.dumps(config | change))
        with pytest.raises(ConfigError, match=f"cannot start from this LLaVA model: .*{says}"):
            build_model(str(folder))


def test_stage2_trains_from_a_llava_hf_folder_with_llava_flags(llava, tiny_assets, tmp_path):
    """The whole path: preflight (no --vision_tower), LLaVA flag aliases, two training steps, a saved fila model."""
    from fila_train.training.train import parse_args, train

    argv = ["--model_name_or_path", str(llava[0]), "--data_path", str(tiny_assets.stage2_data),
            "--image_folder", str(tiny_assets.image_folder), "--output_dir", str(tmp_path / "run"),
            "--version", "v1", "--mm_projector_type", "mlp2x_gelu", "--tune_mm_mlp_adapter", "False",
            "--max_steps", "2", "--per_device_train_batch_size", "2", "--learning_rate", "1e-3",
            "--report_to", "none", "--save_strategy", "no", "--model_max_length", "512"]
    preflight(argv)
    summary = train(*parse_args(argv))
    assert summary["steps"] == 2 and summary["tune_parts"] == ["connector", "llm"]
    saved = build_model(str(tmp_path / "run"))
    assert saved.config.model_type == "fila" and saved.config.vision_encoder == "clip"
    assert load_tokenizer(str(tmp_path / "run"), saved, 512).pad_token_id is not None


def test_generate_and_eval_read_a_llava_hf_folder(llava, tiny_assets, tmp_path, capsys):
    """`fila-train eval` (and so lmms-eval's --model fila) on a llava-hf folder: read as LLaVA-1.5, prompted
    with the vicuna_v1 template it was trained with."""
    from fila_train.cli import main
    from fila_train.inference.loading import load_model

    loaded = load_model(llava[0], dtype="float32", device="cpu")
    assert loaded.model.config.vision_encoder == "clip" and loaded.model.config.conversation_template == "vicuna_v1"
    bench = tmp_path / "bench.jsonl"
    bench.write_text((tiny_assets.stage2_data.parent / "eval_questions.jsonl").read_text().splitlines()[0] + "\n")
    assert main(["eval", "--model", str(llava[0]), "--bench", str(bench), "--image_folder",
                 str(tiny_assets.image_folder), "--metric", "anls", "--max_new_tokens", "4", "--dtype", "float32",
                 "--device", "cpu", "--output", str(tmp_path / "out")]) == 0
    assert "on 1 questions" in capsys.readouterr().out


def test_eval_reads_a_llava_release_by_its_hub_id(llava, tiny_assets, tmp_path):
    """A release named as the README names one (`llava-hf/llava-1.5-7b-hf`), from the offline hub cache (its real
    layout, made here): generate answered, but eval ended in FileNotFoundError's traceback once the model had loaded
    and the prompts were checked (its answer log listed the files of a local folder named like the hub id)."""
    import os
    import shutil
    import subprocess
    import sys

    from distributed_utils import REPO

    repo = tmp_path / "hub" / "models--llava-hf--tiny-llava"
    shutil.copytree(llava[0], repo / "snapshots" / "abc123")
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("abc123")
    bench = tmp_path / "bench.jsonl"
    bench.write_text((tiny_assets.stage2_data.parent / "eval_questions.jsonl").read_text().splitlines()[0] + "\n")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(tmp_path / "hub"),
           "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    command = [sys.executable, "-m", "fila_train.cli", "eval", "--model", "llava-hf/tiny-llava", "--bench", str(bench),
               "--image_folder", str(tiny_assets.image_folder), "--metric", "anls", "--max_new_tokens", "4",
               "--dtype", "float32", "--device", "cpu"]
    # The default output, MODEL/eval, made ./llava-hf/tiny-llava/eval: a local folder named like the hub id, which
    # every later load from there took for the model ("not a saved fila model folder").
    run = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 1 and run.stderr.strip().splitlines()[-1] == (
        "fila-train eval: error: --model llava-hf/tiny-llava is a hub model, not a local folder to write its results "
        "into: give --output"), run.stderr[-2000:]
    assert not (tmp_path / "llava-hf").exists()
    run = subprocess.run([*command, "--output", str(tmp_path / "out")], cwd=tmp_path, env=env, capture_output=True,
                         text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    score = json.loads((tmp_path / "out" / "score.json").read_text())
    assert score["count"] == 1 and score["model"] == "llava-hf/tiny-llava"  # before: a local path that is not there


def test_a_llava_hf_folder_starts_a_zero3_run(llava, tiny_assets, tmp_path):
    """Under ZeRO-3 the release's parts load partitioned (as any LLM does) and the projector is copied into the
    partitioned connector: with the connector frozen, the saved one is the release's, bit for bit."""
    from safetensors import safe_open

    from distributed_utils import run_distributed
    from fila_train.demo.tiny_models import as_cli

    flags = {"model_name_or_path": str(llava[0]), "data_path": str(tiny_assets.stage2_data),
             "image_folder": str(tiny_assets.image_folder), "conversation_template": "vicuna_v1",
             "tune_parts": "llm", "deepspeed": "zero_configs/zero3.json", "per_device_train_batch_size": "2",
             "max_steps": "2", "learning_rate": "1e-3", "model_max_length": "512", "save_strategy": "no",
             "report_to": "none"}
    run = run_distributed(as_cli(flags), tmp_path / "run")
    assert run.summary()["steps"] == 2
    projector = llava[1].model.multi_modal_projector
    with safe_open(str(tmp_path / "run" / "model.safetensors"), "pt") as handle:
        assert torch.equal(handle.get_tensor("connector.projector.0.weight"), projector.linear_1.weight)
        assert torch.equal(handle.get_tensor("connector.projector.2.bias"), projector.linear_2.bias)


def test_another_feature_layer_than_the_releases_is_refused_before_any_weights_load(llava, original):
    """The release's projector learnt the features of its own layer (-2). Before, --vision_feature_layer -1 was
    replaced by it without a word: the model and its saved config said -2, exit 0."""
    for folder, key in ((llava[0], "vision_feature_layer"), (original, "mm_vision_select_layer")):
        with pytest.raises(ConfigError, match=rf"--vision_feature_layer -1: {folder} is a LLaVA release whose "
                                              rf"projector was trained on layer -2 \(its config.json's {key}\)"):
            build_model(str(folder), vision_feature_layer=-1)


def test_a_feature_layer_given_equal_to_the_default_is_checked_against_the_release_too(llava, tiny_assets, tmp_path):
    """A release trained on layer -1: an explicit --vision_feature_layer -2 (the default's value) was let through and
    silently replaced by -1, since the model code cannot tell it from the default; a training run knows which flags
    it was given, and refuses it before any weights load."""
    import shutil

    from fila_train.training.before_weights import check_before_weights
    from fila_train.training.llava_flags import given_flags
    from fila_train.training.train import parse_args

    release = tmp_path / "llava-hf-layer-1"
    shutil.copytree(llava[0], release)
    config = json.loads((release / "config.json").read_text())
    (release / "config.json").write_text(json.dumps(config | {"vision_feature_layer": -1}))
    argv = ["--model_name_or_path", str(release), "--data_path", str(tiny_assets.stage2_data),
            "--output_dir", str(tmp_path / "run"), "--tune_parts", "llm", "--model_max_length", "512"]
    model_args, _, args = parse_args(argv)
    check_before_weights(model_args, args, frozenset(given_flags(argv)))  # not given: the release's layer is used
    model_args, _, args = parse_args([*argv, "--vision_feature_layer", "-2"])
    with pytest.raises(ConfigError, match=rf"--vision_feature_layer -2: {release} is a LLaVA release whose projector "
                                          rf"was trained on layer -1 \(its config.json's vision_feature_layer\)"):
        check_before_weights(model_args, args, frozenset(given_flags([*argv, "--vision_feature_layer", "-2"])))


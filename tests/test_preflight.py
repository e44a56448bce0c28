"""Anything a user can get wrong stops the run with one line, before weights load: names and the valid
choices, every path, the DeepSpeed config, the stage-1 connector's header, the checkpoint to resume;
errors met later (a bad record mid-run) are one line from the rank that met it, not a wall."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest

from distributed_utils import LLAMA2_DIR, REPO, TINY, build_tiny_model, free_port
from fila_train.demo.tiny_models import as_cli
from fila_train.model.contracts import CONNECTORS
from fila_train.training.preflight import PreflightError, preflight


def test_the_names_checked_early_are_the_registered_ones(tiny_assets, tmp_path):
    """The preflight reads the contract registries (names only, no torch): a part registered at run time counts."""
    from fila_train.model.contracts import VISION_ENCODERS, VisionEncoderContract

    assert VISION_ENCODERS.names() == ["anyres", "clip", "fila_hybrid"]
    assert CONNECTORS.names() == ["linear", "mlp2x_gelu", "mmfuser"]
    flags = good_flags(tiny_assets, tmp_path) | {"vision_encoder": "preflight_probe"}
    with pytest.raises(PreflightError,
                       match="--vision_encoder 'preflight_probe' is not one of: anyres, clip, fila_hybrid"):
        preflight(as_cli(flags))
    VISION_ENCODERS.register(VisionEncoderContract(name="preflight_probe"))
    try:
        preflight(as_cli(flags))
    finally:
        VISION_ENCODERS.unregister("preflight_probe")


@pytest.fixture(scope="module")
def fila_artifact(tiny_assets, tmp_path_factory):
    """A real stage-1 artifact of a tiny FILA model, and that model's flags."""
    from distributed_utils import TINY
    from fila_train.training.connector_artifact import save_connector_artifact

    folder = tmp_path_factory.mktemp("stage1")
    save_connector_artifact(build_tiny_model(tiny_assets, hybrid=True, fuser=False), folder)
    return folder / "connector.safetensors", {"vision_encoder": "fila_hybrid", **TINY.hybrid_flags(tiny_assets.convnext)}


def good_flags(assets, tmp_path) -> dict[str, str]:
    return {"model_name_or_path": str(assets.llm), "vision_tower": str(assets.clip),
            "data_path": str(assets.stage2_data), "image_folder": str(assets.image_folder),
            "conversation_template": "vicuna_v1", "deepspeed": str(REPO / "zero_configs/zero3.json"),
            "output_dir": str(tmp_path / "out")}


def cases(assets, tmp_path, artifact):
    """name -> (flags changed from good_flags, fragments of the one-line error)."""
    (tmp_path / "broken.json").write_text("{not json")
    (tmp_path / "mixture.yaml").write_text(f"sources:\n  - name: docs\n    annotations: {tmp_path}/nowhere.jsonl\n")
    return {
        "template": ({"conversation_template": "vicuna"}, ["--conversation_template 'vicuna' is not one of",
                                                           "chatml, llama3, llava_llama_3, llava_v1, plain, vicuna_v1"]),
        "encoder": ({"vision_encoder": "fila"}, ["--vision_encoder 'fila' is not one of: anyres, clip, fila_hybrid"]),
        "connector": ({"connector_type": "mlp"}, ["--connector_type 'mlp' is not one of", "mlp2x_gelu"]),
        "model": ({"model_name_or_path": str(tmp_path / "no_llm")}, ["--model_name_or_path", "no_llm: no such folder"]),
        "hub_offline": ({"model_name_or_path": "lmsys/vicuna-7b-v1.5"}, ["HF_HUB_OFFLINE is set"]),
        "tower": ({"vision_tower": str(tmp_path)}, ["--vision_tower", "has no config.json"]),
        "data": ({"data_path": str(tmp_path / "nowhere.jsonl")}, ["--data_path", "nowhere.jsonl: no such file"]),
        "images": ({"image_folder": str(tmp_path / "no_images")}, ["--image_folder", "no_images: no such folder"]),
        "mixture": ({"data_path": str(tmp_path / "mixture.yaml"), "image_folder": None},
                    ["source 'docs': annotation file", "nowhere.jsonl not found"]),
        "deepspeed_missing": ({"deepspeed": "zero_configs/zero4.json"}, ["--deepspeed zero_configs/zero4.json: no such file"]),
        "deepspeed_json": ({"deepspeed": str(tmp_path / "broken.json")}, ["broken.json: not valid JSON"]),
        "connector_missing": ({"pretrained_connector": str(tmp_path / "c.safetensors")}, ["c.safetensors: no such file"]),
        "connector_header": ({"pretrained_connector": str(tmp_path / "broken.json")}, ["not a readable safetensors file"]),
        "connector_mismatch": ({"pretrained_connector": str(artifact)},
                               ["was trained for a different model: vision_encoder fila_hybrid (this run: clip)"]),
        "resume_missing": ({"resume_from_checkpoint": str(tmp_path / "checkpoint-9")},
                           ["checkpoint-9 is incomplete: missing the folder itself"]),
        "resume_latest": ({"resume_from_checkpoint": "latest"}, ["latest: no complete checkpoint in"]),
    }


CASES = ["template", "encoder", "connector", "model", "hub_offline", "tower", "data", "images", "mixture",
         "deepspeed_missing", "deepspeed_json", "connector_missing", "connector_header", "connector_mismatch",
         "resume_missing", "resume_latest"]


@pytest.mark.parametrize("case", CASES)
def test_each_misconfiguration_is_named_before_anything_loads(case, tiny_assets, fila_artifact, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    changes, fragments = cases(tiny_assets, tmp_path, fila_artifact[0])[case]
    flags = {k: v for k, v in (good_flags(tiny_assets, tmp_path) | changes).items() if v is not None}
    with pytest.raises(PreflightError) as error:
        preflight(as_cli(flags))
    for fragment in fragments:
        assert fragment in str(error.value), (fragment, str(error.value))


def test_an_artifact_of_another_vit_layer_is_refused_before_anything_loads(tiny_assets, fila_artifact, tmp_path):
    """The connector learnt the features of one ViT layer. Before, a stage 2 on --vision_feature_layer -1 started
    from a stage 1 trained on layer -2, exit 0, unsaid."""
    artifact, flags = fila_artifact
    run = good_flags(tiny_assets, tmp_path) | flags | {"pretrained_connector": str(artifact)}
    preflight(as_cli(run))  # the layer it was trained on
    with pytest.raises(PreflightError, match=r"was trained for a different model: vision_feature_layer -2 \(this "
                                             r"run: -1\)"):
        preflight(as_cli(run | {"vision_feature_layer": "-1"}))


def test_a_hub_model_in_the_offline_cache_is_accepted(tiny_assets, tmp_path):
    """Compute nodes run with HF_HUB_OFFLINE=1 and a filled hub cache (its real layout, made here)."""
    snapshot = tmp_path / "hub" / "models--lmsys--vicuna-7b-v1.5" / "snapshots" / "abc123"
    snapshot.mkdir(parents=True)
    (snapshot / "config.json").write_text((tiny_assets.llm / "config.json").read_text())
    (tmp_path / "hub" / "models--lmsys--vicuna-7b-v1.5" / "refs").mkdir()
    (tmp_path / "hub" / "models--lmsys--vicuna-7b-v1.5" / "refs" / "main").write_text("abc123")
    flags = good_flags(tiny_assets, tmp_path) | {"model_name_or_path": "lmsys/vicuna-7b-v1.5"}
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(tmp_path / "hub")}
    check = [sys.executable, "-m", "fila_train.training.preflight"]
    assert subprocess.run([*check, *as_cli(flags)], cwd=REPO, env=env, capture_output=True, text=True).returncode == 0
    flags["model_name_or_path"] = "lmsys/vicuna-13b-v1.5"
    run = subprocess.run([*check, *as_cli(flags)], cwd=REPO, env=env, capture_output=True, text=True)
    assert run.returncode == 1 and "not in the hub cache" in run.stderr, run.stderr


def test_dashed_flag_spellings_and_help_are_understood(tiny_assets, tmp_path):
    flags = good_flags(tiny_assets, tmp_path)
    dashed = [f"--{name.replace('_', '-')}={value}" for name, value in flags.items()]
    preflight(dashed + ["--resume-from-checkpoint", "auto"])  # --output-dir is where auto looks
    preflight(["--help"])  # the full parser answers it


def test_good_flags_pass_and_the_matching_connector_is_accepted(tiny_assets, fila_artifact, tmp_path):
    preflight(as_cli(good_flags(tiny_assets, tmp_path)))
    artifact, hybrid = fila_artifact
    preflight(as_cli(good_flags(tiny_assets, tmp_path) | hybrid | {"pretrained_connector": str(artifact)}))
    preflight(as_cli(good_flags(tiny_assets, tmp_path) | hybrid | {"pretrained_connector": str(artifact.parent)}))


def test_fila_train_train_prints_one_line_before_deepspeed_or_any_weights(tiny_assets, tmp_path):
    """The preflight runs before torch, transformers or DeepSpeed are imported (seconds, at 7B minutes,
    before the first line could come) and before any model is built or loaded."""
    flags = good_flags(tiny_assets, tmp_path) | {"conversation_template": "vicuna"}
    heavy = ("torch", "transformers", "deepspeed", "fila_train.training.train")
    code = ("import sys; from fila_train.cli import main\n"
            "try:\n    main(sys.argv[1:])\nexcept SystemExit as e:\n"
            f"    print('exit', e.code, [m for m in {heavy} if m in sys.modules])")
    run = subprocess.run([sys.executable, "-c", code, "train", *as_cli(flags)], cwd=REPO, capture_output=True,
                         text=True, timeout=120)
    assert run.stdout.strip() == "exit 1 []", run.stdout + run.stderr
    assert run.stderr.splitlines() == ["fila-train train: error: --conversation_template 'vicuna' is not one of: "
                                       "chatml, llama3, llava_llama_3, llava_v1, plain, vicuna_v1"]


def test_a_flag_error_after_the_preflight_is_one_line_too(tiny_assets, tmp_path, capsys):
    """Flags only the full parser knows: argparse's usage of ~200 flags and HF's traceback are not printed."""
    from fila_train.training.cli import main

    for extra, fragment in ((["--tune_parts", "connector,lm"], "--tune_parts: unknown part(s) ['lm']"),
                            (["--learning_rte", "1e-3"], "--learning_rte"),
                            (["--max_steps", "many"], "invalid int value: 'many'"),
                            # transformers raised these while building the LLM, with a traceback
                            (["--attn_implementation", "flash_attn2"], "'flash_attn2' is not one of: eager, "),
                            (["--attn_implementation", "flash_attention_2"], "needs the flash-attn package")):
        with pytest.raises(SystemExit) as exit_:
            main([*as_cli(good_flags(tiny_assets, tmp_path)), *extra])
        stderr = capsys.readouterr().err
        assert exit_.value.code == 1, stderr
        assert len(stderr.splitlines()) == 1 and stderr.startswith("fila-train train: error: ") and fragment in stderr
        assert (tmp_path / "out" / "error-rank0.txt").read_text().startswith("Traceback")  # kept for a bug report


def weightless_llm(assets, tmp_path, tokenizer: bool = True) -> Path:
    """The tiny LLM's folder without its weights: a check that needed them would fail differently."""
    llm = tmp_path / "llm"
    shutil.copytree(assets.llm, llm, ignore=shutil.ignore_patterns(
        "*.safetensors", "*.bin", *(() if tokenizer else ("tokenizer*",))))
    return llm


def refused_run(assets, tmp_path, capsys, changes: dict[str, str]) -> str:
    """`fila-train train` (in this process) with good_flags and ``changes``: the one line it exits with."""
    from fila_train.training.cli import main

    # Without --deepspeed: its ZeRO-3 config would outlive the refused run in transformers' global state and put
    # the next test's in-process model build under zero.Init.
    flags = {name: value for name, value in good_flags(assets, tmp_path).items() if name != "deepspeed"} | changes
    with pytest.raises(SystemExit) as exit_:
        main(as_cli(flags))
    stderr = capsys.readouterr().err
    assert exit_.value.code == 1, stderr
    assert len(stderr.splitlines()) == 1 and stderr.startswith("fila-train train: error: "), stderr
    return stderr.removeprefix("fila-train train: error: ").rstrip("\n")


def test_a_length_past_the_llms_context_is_one_line_before_any_weights_load(tiny_assets, tmp_path, capsys):
    """The tiny LLM holds 2048 positions (max_position_embeddings, no RoPE scaling). --model_max_length 4096 trained
    every sample past 2048 on positions the LLM never learned, without a word (RoPE computes any position); the
    bench refuses the same --seq_len. A config with RoPE scaling, or a length within the context, passes."""
    llm = weightless_llm(tiny_assets, tmp_path)
    assert refused_run(tiny_assets, tmp_path, capsys, {"model_name_or_path": str(llm), "model_max_length": "4096"}) \
        == (f"--model_max_length 4096 exceeds the context of the LLM {llm}: 2048 positions (max_position_embeddings, "
            f"no RoPE scaling), so every sample past 2048 tokens would train positions it never learned; lower "
            f"--model_max_length to 2048, or give the LLM a rope_scaling in its config.json")
    from fila_train.training.llm_context import check_within_context

    check_within_context({"max_position_embeddings": 2048}, 2048, "llm")
    check_within_context({"max_position_embeddings": 2048, "rope_scaling": {"rope_type": "linear", "factor": 2.0}},
                         4096, "llm")
    check_within_context({"text_config": {"max_position_embeddings": 4096}}, 4096, "fila")  # a saved fila model
    check_within_context({"n_positions": 1024}, 4096, "gpt2")  # no max_position_embeddings: nothing to compare


def test_a_length_that_leaves_no_room_after_an_image_is_one_line_before_any_weights_load(tiny_assets, tmp_path,
                                                                                         capsys):
    """FILA's 672x672 canvas makes an image 2880 tokens: under LLaVA-1.5's 2048 every record whose image took it
    was dropped, one warning each, and the run trained on the rest. The tiny FILA's 2x2-tile canvas makes
    (4 tiles + the global view) x its tokens per view, its 1x2 and 2x1 canvases 3 x."""
    tile, view = TINY.tile, (TINY.tile // 14) ** 2  # the tiny CLIP's patch: 14
    assert set(TINY.canvases) == {(2 * tile, 2 * tile), (tile, 2 * tile), (2 * tile, tile)}
    llm = weightless_llm(tiny_assets, tmp_path)
    for encoder, length, expected in (
            ("fila_hybrid", 4 * view, f"on {2 * tile}x{2 * tile} ({5 * view} tokens): every record whose image "
                                      f"takes it would be dropped (--on_overlong drop) or stop the run; set "
                                      f"--model_max_length above {5 * view} (LLaVA-NeXT trains anyres canvases at "
                                      f"4096), or leave those canvases out of --anyres_canvases"),
            ("clip", view, f"on {tile}x{tile} ({view} tokens): every record whose image takes it would be dropped "
                           f"(--on_overlong drop) or stop the run; set --model_max_length above {view}")):
        changes = tiny_assets.model_flags(encoder == "fila_hybrid", False) | {
            "model_name_or_path": str(llm), "model_max_length": str(length)}
        assert refused_run(tiny_assets, tmp_path, capsys, changes) == \
            f"--model_max_length {length} leaves no room for text after one image {expected}"


def remote_code(base: str, name: str, body: str = "pass") -> str:
    return f"""from pathlib import Path
Path(__file__).with_name("code_ran").touch()  # what running a model repository's own code would leave
from transformers import {base}
class {name}({base}):
    {body}
"""


# Models such as InternLM2, Qwen-1 or ChatGLM3 ship their modelling code (config.json's auto_map, a model type
# transformers does not know), some their tokenizer's (tokenizer_config.json's auto_map, a class transformers lacks):
# name -> (the json file changed, its changes, the code file beside it, its code, the line).
REMOTE_CODE = {
    "model": ("config.json", {"model_type": "internlm2", "architectures": ["InternLM2ForCausalLM"],
                              "auto_map": {"AutoConfig": "configuration_internlm2.InternLM2Config",
                                           "AutoModelForCausalLM": "modeling_internlm2.InternLM2ForCausalLM"}},
              "configuration_internlm2.py",
              remote_code("PretrainedConfig", "InternLM2Config", 'model_type = "internlm2"'),
              "{llm} ships its own model code (config.json's auto_map: AutoConfig, AutoModelForCausalLM) for model "
              "type 'internlm2', which transformers does not know: fila-train runs no code from a model folder or the "
              "hub; use a transformers-native LLM"),
    "tokenizer": ("tokenizer_config.json", {"tokenizer_class": "InternLM2Tokenizer", "auto_map": {
                      "AutoTokenizer": ["tokenization_internlm2.InternLM2Tokenizer", None]}},
                  "tokenization_internlm2.py", remote_code("PreTrainedTokenizer", "InternLM2Tokenizer"),
                  "{llm} ships its own tokenizer code (tokenizer_config.json's auto_map: "
                  "tokenization_internlm2.InternLM2Tokenizer), which transformers cannot load without running it: "
                  "fila-train runs no code from a model folder or the hub; use a transformers-native tokenizer"),
}


@pytest.mark.parametrize("kind", REMOTE_CODE)
def test_a_model_that_ships_its_own_code_is_one_line_and_runs_none_of_it(kind, tiny_assets, tmp_path, capsys):
    """Before, the loaders left trust_remote_code unset: a terminal asked on every rank whether to run the code (y
    ran it), and a batch job got transformers' ValueError as a traceback per rank; then, with trust_remote_code=False,
    a tokenizer that only its own code loads still ended in that traceback."""
    json_file, changes, code_file, code, line = REMOTE_CODE[kind]
    llm = weightless_llm(tiny_assets, tmp_path)
    (llm / json_file).write_text(json.dumps(json.loads((llm / json_file).read_text()) | changes))
    (llm / code_file).write_text(code)
    assert refused_run(tiny_assets, tmp_path, capsys, {"model_name_or_path": str(llm)}) == line.format(llm=llm)
    assert not (llm / "code_ran").exists()


@pytest.mark.parametrize("flags, line", [
    ({"tune_parts": "connector,cvfm,llm"}, "--tune_parts 'connector,cvfm,llm' names cvfm, which this model (vision "
                                           "encoder 'clip', connector 'mlp2x_gelu') does not have: its parts are "
                                           "vision, connector, llm"),
    ({"tune_parts": "connector,llm", "fuser_lr": "1e-4"}, "a learning rate for fuser (--fuser_lr or --part_lr), "
                                                          "which this model (vision encoder 'clip', connector "
                                                          "'mlp2x_gelu') does not have: its parts are vision, "
                                                          "connector, llm")], ids=["tune_parts", "learning_rate"])
def test_a_part_the_model_does_not_have_is_one_line_before_any_weights_load(flags, line, tiny_assets, tmp_path,
                                                                             capsys):
    """Before, CLIP + MLP with --tune_parts connector,cvfm,llm --cvfm_lr 1e-4 trained no CVFM and dropped its rate
    without a word (the names were checked against every registered encoder's parts)."""
    changes = {"model_name_or_path": str(weightless_llm(tiny_assets, tmp_path))} | flags
    assert refused_run(tiny_assets, tmp_path, capsys, changes) == \
        f"{line}; drop it, or choose the vision encoder or connector that has it"


@pytest.mark.parametrize("flags, line", [
    ({"vision_lr": "2e-6"}, "--vision_lr 2e-06 (LLaVA's --mm_vision_tower_lr)"),
    ({"part_lr": "vision=2e-6"}, "--part_lr vision=2e-6"),
    ({"tune_mm_mlp_adapter": "False", "mm_vision_tower_lr": "2e-6"}, "--vision_lr 2e-06 (LLaVA's --mm_vision_tower_lr)"),
], ids=["shorthand", "part_lr", "llava"])
def test_a_learning_rate_for_a_part_that_does_not_train_is_one_line_before_any_weights_load(flags, line, tiny_assets,
                                                                                             tmp_path, capsys):
    """Before, the rate was dropped without a word: a frozen part has no optimizer group."""
    changes = {"model_name_or_path": str(weightless_llm(tiny_assets, tmp_path)), "tune_parts": "connector,llm"} | flags
    if "tune_mm_mlp_adapter" in flags:
        del changes["tune_parts"]
    assert refused_run(tiny_assets, tmp_path, capsys, changes) == \
        f"{line} is a learning rate for vision, which --tune_parts 'connector,llm' does not train: add vision to " \
        f"--tune_parts, or drop the rate"


def test_a_part_a_saved_model_does_not_have_names_the_saved_model(tiny_assets, tmp_path, capsys):
    """A saved CLIP + MLP model keeps its parts whatever --vision_encoder says. Before, the line advised choosing
    the vision encoder or connector that has the part, which a saved model ignores."""
    saved = weightless_llm(tiny_assets, tmp_path)  # its tokenizer; the config is the saved composite's
    build_tiny_model(tiny_assets, hybrid=False, fuser=False).config.save_pretrained(saved)
    capsys.readouterr()  # the build's own progress bars
    changes = {"model_name_or_path": str(saved), "vision_encoder": "fila_hybrid", "tune_parts": "connector,cvfm,llm"}
    assert refused_run(tiny_assets, tmp_path, capsys, changes) == (
        f"--tune_parts 'connector,cvfm,llm' names cvfm, which the saved model {saved} (vision encoder 'clip', "
        f"connector 'mlp2x_gelu') does not have: its parts are vision, connector, llm; drop it (a saved model "
        f"keeps the vision encoder and connector it was built with: --vision_encoder and --connector_type do not "
        f"change them)")


def test_flags_that_would_change_a_saved_models_parts_are_one_line_before_any_weights_load(tiny_assets, tmp_path,
                                                                                          capsys):
    """A saved fila model loads with the parts it was saved with. Before, --connector_type linear and
    --vision_feature_layer -1 on a saved CLIP + MLP model (layer -2) were ignored, exit 0, the output still
    mlp2x_gelu on layer -2."""
    saved = weightless_llm(tiny_assets, tmp_path)  # its tokenizer; the config is the saved composite's
    config = build_tiny_model(tiny_assets, hybrid=False, fuser=False).config
    config.save_pretrained(saved)
    capsys.readouterr()
    changes = {"model_name_or_path": str(saved), "vision_encoder": "clip", "connector_type": "linear",
               "vision_feature_layer": "-1", "tune_parts": "connector,llm"}
    assert refused_run(tiny_assets, tmp_path, capsys, changes) == (
        f"{saved} is a saved fila model, which loads with the parts it was saved with: --connector_type linear (it "
        f"has mlp2x_gelu), --vision_feature_layer -1 (it has {config.vision_feature_layer}) would be ignored; leave "
        f"them out or give its values (the scripts: VISION_ENCODER, CONNECTOR and the option variables), or build a "
        f"new model from its LLM and vision tower")
    # An option of the saved encoder: the same rule (a saved FILA model's CVFM gate is scalar). Its ConvNeXt
    # checkpoint is saved as None (the weights are in the model): the scripts always pass one, and it passes.
    build_tiny_model(tiny_assets, hybrid=True, fuser=False).config.save_pretrained(saved)
    capsys.readouterr()
    changes = {"model_name_or_path": str(saved), "vision_encoder": "fila_hybrid", "vision_option": "cvfm.gate=channel",
               "convnext_checkpoint": str(tiny_assets.convnext), "tune_parts": "connector,cvfm,llm"}
    line = refused_run(tiny_assets, tmp_path, capsys, changes)
    assert "would be ignored" in line and "--vision_option cvfm.gate=channel (it has scalar)" in line, line
    assert "convnext" not in line.partition(" would be ignored")[0].partition("loads with the parts")[2], line


def test_a_template_the_tokenizer_cannot_write_is_one_line_before_any_weights_load(tiny_assets, tmp_path, capsys):
    """Llama-3's template on a tokenizer without its header tokens (or vicuna_v1's <s> on Llama-3's): before, the
    line came once the whole LLM had loaded, minutes under ZeRO-3."""
    llm = weightless_llm(tiny_assets, tmp_path, tokenizer=False)
    shutil.copy(LLAMA2_DIR / "tokenizer.model", llm)  # the real Llama-2 tokenizer
    changes = {"model_name_or_path": str(llm), "conversation_template": "llama3"}
    assert refused_run(tiny_assets, tmp_path, capsys, changes) == \
        f"template 'llama3' needs the special token '<|begin_of_text|>', which tokenizer {str(llm)!r} does not have"


# A speed or memory option whose package is missing here: (flags, module hidden, the line's start).
MISSING_EXTRAS = {
    "qlora": ({"lora_r": "8", "bits": "4"}, "bitsandbytes", "QLoRA (--bits 4/8) needs bitsandbytes, which is not "
                                                            "installed: install the qlora extra"),
    "liger": ({"use_liger": "True"}, "liger_kernel", "--use_liger needs the liger-kernel package"),
}


@pytest.mark.parametrize("extra", MISSING_EXTRAS)
def test_an_option_whose_package_is_missing_is_one_line_before_any_weights_load(extra, tiny_assets, tmp_path,
                                                                                 capsys, monkeypatch):
    """Before, --bits 4 without bitsandbytes and --use_liger without liger-kernel raised a RuntimeError and an
    ImportError, which the run took for bugs: a traceback from every rank, Liger's after the weights loaded."""
    flags, module, line = MISSING_EXTRAS[extra]
    monkeypatch.setitem(sys.modules, module, None)  # what an environment without it looks like to an import
    changes = {"model_name_or_path": str(weightless_llm(tiny_assets, tmp_path)), "tune_parts": "connector,llm"}
    assert refused_run(tiny_assets, tmp_path, capsys, changes | flags).startswith(line)


# A bad record's image: (its file's content, or None for no file; the error; whether the run stops before the first
# step). A missing file is found when every record is measured before training, as LLaVA's run found it mid-epoch;
# a file that is no image (found where the token count needs its size, otherwise) when a rank decodes it.
BAD_IMAGES = {"missing": (None, "image file not found", True),
              "no_image": (b"not an image", "unreadable image", False)}


@pytest.mark.parametrize("kind", BAD_IMAGES)
def test_a_bad_record_is_one_line_from_the_rank_that_met_it(kind, tiny_assets, tmp_path):
    """Through scripts/finetune.sh on 2 processes (dataloader workers on, no length grouping, as stage 1 runs): the
    record error is one line naming file:line, record id and field; no traceback from any rank, no ChildFailedError
    wall."""
    content, message, before_training = BAD_IMAGES[kind]
    images = tmp_path / "images"
    shutil.copytree(tiny_assets.image_folder, images)
    if content is not None:
        (images / "picture.png").write_bytes(content)
    records = [json.loads(line) for line in tiny_assets.stage2_data.read_text().splitlines()][:8]
    records[3] = dict(records[3], id="r-bad", image="picture.png", conversations=records[3]["conversations"])
    if "<image>" not in records[3]["conversations"][0]["value"]:
        records[3]["conversations"][0]["value"] = "<image>\n" + records[3]["conversations"][0]["value"]
    data = tmp_path / "data.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in records))
    from fila_train.training.connector_artifact import save_connector_artifact

    artifact = save_connector_artifact(build_tiny_model(tiny_assets, hybrid=False, fuser=False), tmp_path / "stage1")
    env = {"MODEL": str(tiny_assets.llm), "VISION_TOWER": str(tiny_assets.clip), "VISION_ENCODER": "clip",
           "DATA_PATH": str(data), "IMAGE_FOLDER": str(images), "PRETRAINED_CONNECTOR": str(artifact),
           "OUTPUT_DIR": str(tmp_path / "out"), "GLOBAL_BATCH_SIZE": "4", "PER_DEVICE_BATCH_SIZE": "2",
           "NPROC_PER_NODE": "2", "MASTER_PORT": str(free_port()), "MAX_STEPS": "4", "MAX_LENGTH": "512",
           "REPORT_TO": "none", "DATALOADER_WORKERS": "1", "GRADIENT_CHECKPOINTING": "False",
           "GROUP_BY_MODALITY": "False", "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
    run = subprocess.run(["bash", "scripts/finetune.sh", "--save_strategy", "no",
                          "--length_cache_dir", str(tmp_path / "lengths")], cwd=REPO, capture_output=True,
                         text=True, timeout=300, env={**os.environ, "PYTHON": sys.executable,
                                                       "HF_HUB_OFFLINE": "1", **env})
    output = run.stdout + run.stderr
    assert run.returncode == 1, output[-5000:]
    errors = [line for line in output.splitlines() if "error:" in line.lower()]
    assert len(errors) == 1, errors
    assert f"{data}:4 (id 'r-bad'): field 'image': {message}" in errors[0], errors
    assert ("***** Running training *****" not in output) == before_training, output[-5000:]
    assert "Traceback" not in output and "ChildFailedError" not in output, output[-5000:]

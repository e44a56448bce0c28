"""A LLaVA training script's flag line runs here: each LLaVA flag is an alias of one of ours (the reference: the
same run spelled with our flags parses to the same arguments), a LLaVA meaning we do not implement is one line
saying so, and a flag is spelled in full: a typo or a prefix is one line naming the closest valid flags."""
from __future__ import annotations

import dataclasses

import pytest

from fila_train.cli import main as fila_train_main
from fila_train.training.llava_flags import LLAVA_FLAGS, translate_llava_flags
from fila_train.training.train import parse_args
from fila_train.utils.errors import ConfigError

BASE = ["--model_name_or_path", "llm", "--vision_tower", "clip", "--data_path", "data.jsonl", "--output_dir", "out"]

# LLaVA-1.5's finetune.sh flags (the model-side ones) and the same run in our spelling.
LLAVA_STAGE2 = ["--version", "v1", "--mm_projector_type", "mlp2x_gelu", "--pretrain_mm_mlp_adapter",
                "stage1/mm_projector.bin", "--mm_vision_select_layer", "-2", "--mm_use_im_start_end", "False",
                "--mm_use_im_patch_token", "False", "--image_aspect_ratio", "pad", "--tune_mm_mlp_adapter", "False",
                "--freeze_backbone", "False", "--mm_vision_tower_lr", "2e-6", "--mm_projector_lr", "2e-5",
                "--lazy_preprocess", "True", "--evaluation_strategy", "no", "--mm_vision_select_feature", "patch",
                "--gradient_checkpointing", "True"]
OURS_STAGE2 = ["--conversation_template", "vicuna_v1", "--connector_type", "mlp2x_gelu", "--pretrained_connector",
               "stage1/mm_projector.bin", "--vision_feature_layer=-2", "--tune_parts", "connector,llm",
               "--vision_lr", "2e-6", "--connector_lr", "2e-5", "--eval_strategy", "no",
               "--activation_checkpointing", "True"]


def as_dicts(parsed) -> list[dict]:
    return [{key: value for key, value in dataclasses.asdict(item).items() if key != "logging_dir"}
            for item in parsed]


def test_a_llava_flag_line_parses_to_the_same_run_as_ours():
    assert as_dicts(parse_args(BASE + LLAVA_STAGE2)) == as_dicts(parse_args(BASE + OURS_STAGE2))
    assert as_dicts(parse_args(BASE + ["--tune_mm_mlp_adapter", "True"])) == \
        as_dicts(parse_args(BASE + ["--tune_parts", "connector"]))


def test_every_alias_used_is_named_once():
    argv, notes = translate_llava_flags(BASE + LLAVA_STAGE2)
    named = {note.split()[1] for note in notes}
    assert named == {f"--{name}" for name in LLAVA_FLAGS}  # the stage-2 line uses every alias once
    assert "LLaVA's --version v1 is --conversation_template vicuna_v1 here" in notes
    assert not any(item.lstrip("-").partition("=")[0] in LLAVA_FLAGS for item in argv)


def test_tune_mm_mlp_adapter_tunes_the_selected_models_connector_side():
    """For FILA and MMFuser the "mm_mlp_adapter" is everything stage 1 aligns: CVFM and the fuser too."""
    argv, _ = translate_llava_flags(["--vision_encoder", "fila_hybrid", "--connector_type", "mmfuser",
                                     "--tune_mm_mlp_adapter", "True"])
    assert argv[-1] == "--tune_parts=connector,cvfm,fuser"
    argv, _ = translate_llava_flags(["--tune_mm_mlp_adapter=false", "--vision_encoder", "fila_hybrid"])
    assert argv[0] == "--tune_parts=connector,cvfm,llm"


@pytest.mark.parametrize("flags, says", [
    (["--mm_use_im_start_end", "True"], "LLaVA's --mm_use_im_start_end True: image start/end tokens are not "
                                        "implemented (accepted: False)"),
    (["--mm_use_im_patch_token", "True"], "image patch tokens are not implemented"),
    (["--freeze_backbone", "True"], "trains the LM head alone"),
    (["--image_aspect_ratio", "anyres"], "LLaVA-NeXT's unpadded anyres layout with newline tokens is not implemented"),
    (["--version", "v0"], "that conversation version has no template here"),
    (["--mm_projector_type", "identity"], "that projector is not implemented"),
    (["--mm_vision_select_feature", "cls_patch"], "only patch features"),
    (["--tune_mm_mlp_adapter", "maybe"], "--tune_mm_mlp_adapter 'maybe': expected True or False"),
])
def test_a_llava_meaning_we_do_not_implement_is_one_line(flags, says):
    with pytest.raises(ConfigError) as error:
        parse_args(BASE + flags)
    assert says in str(error.value) and "\n" not in str(error.value)


@pytest.mark.parametrize("flags, says", [
    (["--learning_rte", "1e-3"], "unknown flag --learning_rte (closest: --learning_rate)"),
    (["--learning_rat", "1e-3"], "unknown flag --learning_rat (closest: --learning_rate)"),  # no abbreviations
    (["--tune_part", "llm"], "unknown flag --tune_part (closest: --tune_parts"),
    (["--mm_patch_merge_type", "flat"], "unknown flag --mm_patch_merge_type"),
    (["--learning_rte=1e-3", "--num_epochs", "1"], "unknown flags --learning_rte (closest: --learning_rate); "
                                                   "--num_epochs (closest: --num_train_epochs"),
])
def test_an_unknown_flag_is_one_line_with_the_closest_valid_ones(flags, says):
    with pytest.raises(ConfigError) as error:
        parse_args(BASE + flags)
    assert says in str(error.value)


def test_the_console_command_prints_one_line(tiny_assets, tmp_path, capsys):
    """Through ``fila-train train`` and its preflight: the LLaVA adapter flag is checked as our
    --pretrained_connector (before any weights), and a typo stops the run with one line."""
    flags = ["--model_name_or_path", str(tiny_assets.llm), "--vision_tower", str(tiny_assets.clip),
             "--data_path", str(tiny_assets.stage2_data), "--image_folder", str(tiny_assets.image_folder),
             "--output_dir", str(tmp_path / "out")]
    for typo, says in ((["--pretrain_mm_mlp_adapter", str(tmp_path / "missing.bin")],
                        f"--pretrained_connector {tmp_path / 'missing.bin'}: no such file"),
                       (["--learning_rat", "1e-3"],
                        "unknown flag --learning_rat (closest: --learning_rate); see --help for the valid ones")):
        with pytest.raises(SystemExit) as stopped:
            fila_train_main(["train", *flags, *typo])
        assert stopped.value.code == 1
        assert capsys.readouterr().err.strip().splitlines()[-1] == f"fila-train train: error: {says}"


@pytest.mark.parametrize("command, flags, says", [
    ("eval", ["--model", "m", "--bench", "b.jsonl", "--metric", "exact", "--batch", "4"], "unknown flag --batch (closest: --batch_size"),
    ("generate", ["--model", "m", "--prompt", "hi", "--max_new_token", "4"],
     "unknown flag --max_new_token (closest: --max_new_tokens"),
])
def test_every_command_spells_flags_in_full(command, flags, says, capsys):
    assert fila_train_main([command, *flags]) == 1
    assert says in capsys.readouterr().err

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

# LLaVA-1.5's stage 2 as scripts/v1_5/finetune.sh runs it (haotian-liu/LLaVA), less what this machine cannot take
# (--deepspeed, --bf16, --tf32, --report_to): no --tune_mm_mlp_adapter, so LLaVA's default (False) trains the LLM
# and the projector.
LLAVA_15_FINETUNE = [
    "--version", "v1", "--pretrain_mm_mlp_adapter", "./checkpoints/llava-v1.5-13b-pretrain/mm_projector.bin",
    "--mm_projector_type", "mlp2x_gelu", "--mm_vision_select_layer", "-2", "--mm_use_im_start_end", "False",
    "--mm_use_im_patch_token", "False", "--image_aspect_ratio", "pad", "--group_by_modality_length", "True",
    "--num_train_epochs", "1", "--per_device_train_batch_size", "16", "--per_device_eval_batch_size", "4",
    "--gradient_accumulation_steps", "1", "--evaluation_strategy", "no", "--save_strategy", "steps",
    "--save_steps", "50000", "--save_total_limit", "1", "--learning_rate", "2e-5", "--weight_decay", "0.",
    "--warmup_ratio", "0.03", "--lr_scheduler_type", "cosine", "--logging_steps", "1", "--model_max_length", "2048",
    "--gradient_checkpointing", "True", "--dataloader_num_workers", "4", "--lazy_preprocess", "True"]
# The same run in our spelling.
OURS_15_FINETUNE = [
    "--conversation_template", "vicuna_v1", "--pretrained_connector",
    "./checkpoints/llava-v1.5-13b-pretrain/mm_projector.bin", "--connector_type", "mlp2x_gelu",
    "--vision_feature_layer=-2", "--tune_parts", "connector,llm", "--group_by_modality_length", "True",
    "--num_train_epochs", "1", "--per_device_train_batch_size", "16", "--per_device_eval_batch_size", "4",
    "--gradient_accumulation_steps", "1", "--eval_strategy", "no", "--save_strategy", "steps",
    "--save_steps", "50000", "--save_total_limit", "1", "--learning_rate", "2e-5", "--weight_decay", "0.",
    "--warmup_ratio", "0.03", "--lr_scheduler_type", "cosine", "--logging_steps", "1", "--model_max_length", "2048",
    "--activation_checkpointing", "True", "--dataloader_num_workers", "4"]
# The other aliases, on top of it: LLaVA's rates and the values that are our behaviour already.
LLAVA_STAGE2 = LLAVA_15_FINETUNE + ["--freeze_backbone", "False", "--mm_projector_lr", "2e-5",
                                    "--mm_vision_select_feature", "patch"]
OURS_STAGE2 = OURS_15_FINETUNE + ["--connector_lr", "2e-5"]


def as_dicts(parsed) -> list[dict]:
    return [{key: value for key, value in dataclasses.asdict(item).items() if key != "logging_dir"}
            for item in parsed]


def test_a_llava_flag_line_parses_to_the_same_run_as_ours():
    assert as_dicts(parse_args(BASE + LLAVA_STAGE2)) == as_dicts(parse_args(BASE + OURS_STAGE2))
    assert as_dicts(parse_args(BASE + ["--tune_mm_mlp_adapter", "True"])) == \
        as_dicts(parse_args(BASE + ["--tune_parts", "connector"]))


def test_llava_1_5_s_stage_2_line_trains_the_llm_and_the_connector_as_in_llava():
    """LLaVA's finetune.sh gives no --tune_mm_mlp_adapter: its default (False) trains the LLM and the projector.
    Before, the line trained the connector alone (our --tune_parts default), and said nothing."""
    assert as_dicts(parse_args(BASE + LLAVA_15_FINETUNE)) == as_dicts(parse_args(BASE + OURS_15_FINETUNE))
    _, notes = translate_llava_flags(BASE + LLAVA_15_FINETUNE)
    assert ("LLaVA's --tune_mm_mlp_adapter False (its default: not given) is --tune_parts connector,llm here: "
            "the LLM and the connector train") in notes
    # FILA's "mm_mlp_adapter" is the connector and CVFM: they train with the LLM.
    argv, _ = translate_llava_flags(["--vision_encoder", "fila_hybrid", "--version", "v1"])
    assert "--tune_parts=connector,cvfm,llm" in argv


@pytest.mark.parametrize("flags, parts", [
    (["--version", "v1", "--tune_parts", "connector"], ["connector"]),  # ours, given: it stands
    (["--version", "v1", "--tune-parts=vision,connector"], ["vision", "connector"]),
    (["--version", "plain", "--tune_mm_mlp_adapter", "True"], ["connector"]),
    ([], ["connector"]),  # no LLaVA flag: our default
    (["--gradient_checkpointing", "True"], ["connector"]),  # transformers' old name, not a LLaVA flag
])
def test_llava_s_default_applies_only_to_a_llava_line_that_chooses_no_parts(flags, parts):
    assert parse_args(BASE + flags)[2].parts() == parts


def test_every_alias_used_is_named_once():
    argv, notes = translate_llava_flags(BASE + LLAVA_STAGE2)
    # the vision tower's rate needs the vision tower trained
    _, vision_notes = translate_llava_flags(["--tune_parts", "vision,connector,llm", "--mm_vision_tower_lr", "2e-6"])
    named = [note.split()[1] for note in notes + vision_notes]
    assert sorted(named) == sorted(f"--{name}" for name in LLAVA_FLAGS)  # every alias, once
    assert "LLaVA's --version v1 is --conversation_template vicuna_v1 here" in notes
    assert not any(item.lstrip("-").partition("=")[0] in LLAVA_FLAGS for item in argv)


# LLaVA's own system prompts (haotian-liu/LLaVA llava/conversation.py conv_vicuna_v1 and conv_llava_v1;
# LLaVA-VL/LLaVA-NeXT conv_llava_llama_3), as literals: the reference a --version must render.
LLAVA_SYSTEM_PROMPTS = {
    "v1": "A chat between a curious user and an artificial intelligence assistant. The assistant gives helpful, "
          "detailed, and polite answers to the user's questions.",
    "llava_v1": "A chat between a curious human and an artificial intelligence assistant. The assistant gives "
                "helpful, detailed, and polite answers to the human's questions.",
    "llava_llama_3": "You are a helpful language and vision assistant. You are able to understand the visual "
                     "content that the user provides, and assist the user with a variety of tasks using natural "
                     "language.",
}


@pytest.mark.parametrize("version", sorted(LLAVA_SYSTEM_PROMPTS))
def test_each_llava_version_renders_llavas_own_system_prompt(version):
    """Before, --version llava_v1 became vicuna_v1 ("curious user" for LLaVA's "curious human") and
    llava_llama_3 kept only the first sentence of LLaVA-NeXT's system prompt: a fine-tune continuing LLaVA's
    weights saw another prompt, unsaid."""
    from fila_train.processing.chat_templates import get_template

    model_args, _, _ = parse_args(BASE + ["--version", version])
    rendered = get_template(model_args.conversation_template).render([{"role": "user", "content": "Hi"}]).text
    assert LLAVA_SYSTEM_PROMPTS[version] in rendered, rendered


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
                        "unknown flag --learning_rat (closest: --learning_rate); see fila-train train --help for the valid ones")):
        with pytest.raises(SystemExit) as stopped:
            fila_train_main(["train", *flags, *typo])
        assert stopped.value.code == 1
        assert capsys.readouterr().err.strip().splitlines()[-1] == f"fila-train train: error: {says}"


# Per command (and sub-command): a run with every required flag plus a prefix of a valid flag, or a typo of
# one; each must be the one line naming the valid flag. The paths need not exist: the flags are checked first.
# (train checks its paths first: test_the_console_command_prints_one_line runs its case with real ones)
FLAG_CASES = [
    (["eval", "--model", "m", "--bench", "b.jsonl", "--metric", "exact"], "--batch", "--batch_size"),
    (["eval", "--model", "m", "--bench", "b.jsonl", "--metric", "exact"], "--bach_size", "--batch_size"),
    (["generate", "--model", "m", "--prompt", "hi"], "--max_new_token", "--max_new_tokens"),
    (["generate", "--model", "m", "--prompt", "hi"], "--max_new_tokns", "--max_new_tokens"),
    (["export", "--checkpoint", "missing", "--output", "out"], "--dt", "--dtype"),
    (["export", "--checkpoint", "missing", "--output", "out"], "--dtpye", "--dtype"),
    (["data", "inspect", "--data_path", "d.jsonl", "--model_name_or_path", "m"], "--lim", "--limit"),
    (["data", "inspect", "--data_path", "d.jsonl", "--model_name_or_path", "m"], "--limt", "--limit"),
    (["data", "convert", "docvqa", "--input", "in.json", "--output", "out.jsonl"], "--lim", "--limit"),
    (["data", "convert", "docvqa", "--input", "in.json", "--output", "out.jsonl"], "--limt", "--limit"),
    (["data", "probe", "--output", "out", "--model", "m"], "--se", "--seed"),
    (["data", "probe", "--output", "out", "--model", "m"], "--sed", "--seed"),
    (["bench"], "--lis", "--list"),
    (["bench"], "--lst", "--list"),
    (["demo", "prepare", "--output", "/dev/null/demo"], "--num_image", "--num_images"),
    (["demo", "prepare", "--output", "/dev/null/demo"], "--num_imgs", "--num_images"),
    (["demo", "summarize", "--stage1", "s1", "--stage2", "s2"], "--answer", "--answer_file"),
    (["demo", "summarize", "--stage1", "s1", "--stage2", "s2"], "--answer_fil", "--answer_file"),
    (["ablate", "run", "--config", "missing.yaml"], "--seed", "--seeds"),
    (["ablate", "run", "--config", "missing.yaml"], "--sedes", "--seeds"),
    (["ablate", "report", "--config", "missing.yaml"], "--var", "--variants"),
    (["ablate", "report", "--config", "missing.yaml"], "--varaints", "--variants"),
]


@pytest.mark.parametrize("argv, flag, valid", FLAG_CASES)
def test_every_command_spells_flags_in_full(argv, flag, valid, capsys):
    assert fila_train_main([*argv, flag, "1"]) == 1
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert line.startswith(f"fila-train {argv[0]}: error: unknown flag {flag} (closest: ")
    assert valid in line.partition("(closest: ")[2].partition(")")[0].split(", ")


"""A DeepSpeed config never overrides what the trainer is told (anchors.md, silent failure 6).

LLaVA's zero2.json and zero3.json have no gradient_clipping, so DeepSpeed never clips and --max_grad_norm is
ignored; its zero3_offload.json brings an optimizer and a scheduler of its own, so DeepSpeed builds the
optimizer (the per-part learning rates are dropped) and runs its schedule instead of --lr_scheduler_type.
All of that trains without a word. Here: the shipped configs take those values from the flags, a real engine
clips at --max_grad_norm, and a config that would override a flag stops the run with one line, before any
weights load.
"""
from __future__ import annotations

import json
import math

import pytest
from safetensors.torch import load_file

from distributed_utils import REPO, build_tiny_model, run_distributed, runs  # noqa: F401  (runs is a fixture)
from fila_train.demo.tiny_models import as_cli
from fila_train.training.preflight import PreflightError, preflight
from fila_train.utils.errors import ConfigError

SHIPPED = sorted((REPO / "zero_configs").glob("*.json"))


def run_flags(assets, tmp_path, config) -> dict[str, str]:
    return {"model_name_or_path": str(assets.llm), "vision_tower": str(assets.clip),
            "data_path": str(assets.stage1_data), "image_folder": str(assets.image_folder),
            "conversation_template": "plain", "deepspeed": str(config), "output_dir": str(tmp_path / "out")}


def parsed_training_arguments(flags: dict[str, str]):
    from fila_train.training.train import parse_args

    return parse_args(as_cli(flags))[2]


@pytest.mark.parametrize("config", SHIPPED, ids=lambda path: path.name)
def test_shipped_configs_take_clipping_and_batch_sizes_from_the_flags(config, tiny_assets, tmp_path):
    flags = run_flags(tiny_assets, tmp_path, config) | {
        "max_grad_norm": "0.3", "per_device_train_batch_size": "3", "gradient_accumulation_steps": "2"}
    engine_config = parsed_training_arguments(flags).hf_deepspeed_config.config  # what DeepSpeed is given
    assert engine_config["gradient_clipping"] == 0.3
    assert engine_config["train_micro_batch_size_per_gpu"] == 3
    assert engine_config["gradient_accumulation_steps"] == 2
    assert "optimizer" not in engine_config and "scheduler" not in engine_config


@pytest.mark.parametrize("precision, routine", [({}, False), ({"bf16": "true"}, False), ({"fp16": "true"}, True)])
def test_only_fp16_with_a_dynamic_loss_scale_skips_steps_by_design(precision, routine, tiny_assets, tmp_path):
    # Else a step DeepSpeed skips (its gradients not finite) stops the run: tests/test_nonfinite_loss.py.
    from fila_train.training.deepspeed_config import skips_steps_to_scale_the_loss

    for config in SHIPPED:
        engine_config = parsed_training_arguments(run_flags(tiny_assets, tmp_path, config) | precision
                                                   ).hf_deepspeed_config.config
        assert skips_steps_to_scale_the_loss(engine_config) is routine, config.name
        engine_config["fp16"]["loss_scale"] = 1024  # a fixed scale: an overflow now recurs
        assert not skips_steps_to_scale_the_loss(engine_config)


def user_config(tmp_path, drop: tuple[str, ...] = (), **changes) -> str:
    """zero3.json as a user might bring it from another codebase: keys dropped, others set."""
    config = json.loads((REPO / "zero_configs" / "zero3.json").read_text())
    config = {key: value for key, value in config.items() if key not in drop} | changes
    path = tmp_path / "user_zero3.json"
    path.write_text(json.dumps(config))
    return str(path)


ZERO3 = json.loads((REPO / "zero_configs" / "zero3.json").read_text())
ADAMW = {"type": "AdamW", "params": {"lr": "auto", "betas": "auto", "eps": "auto", "weight_decay": "auto"}}
WARMUP = {"type": "WarmupLR", "params": {"warmup_min_lr": "auto", "warmup_max_lr": "auto", "warmup_num_steps": 10}}

# name -> (config changes, flag changes, fragments of the one-line error, caught already by the preflight)
OVERRIDES = {
    "no_clipping": ({"drop": ("gradient_clipping",)}, {},
                    ['no "gradient_clipping", so DeepSpeed would not clip', "would be ignored",
                     '"gradient_clipping": "auto"'],
                    True),
    "no_clipping_given_max_grad_norm": ({"drop": ("gradient_clipping",)}, {"max_grad_norm": "0.5"},
                                        ["--max_grad_norm 0.5 would be ignored"], True),
    "optimizer": ({"optimizer": ADAMW}, {}, ['"optimizer"', "per-part learning rates"], True),
    "scheduler": ({"scheduler": WARMUP}, {}, ['"scheduler"', "--lr_scheduler_type"], True),
    "clipping_value": ({"gradient_clipping": 1.0}, {"max_grad_norm": "0.5"},
                       ["gradient_clipping=1.0 vs hf max_grad_norm=0.5", '"auto"'], False),
    "micro_batch_value": ({"train_micro_batch_size_per_gpu": 16}, {"per_device_train_batch_size": "4"},
                          ["train_micro_batch_size_per_gpu=16 vs hf per_device_train_batch_size=4"], False),
    "clipping_null": ({"gradient_clipping": None}, {}, ['no "gradient_clipping"'], True),
    # LLaVA's zero3_offload.json less its optimizer section: DeepSpeed takes only its own CPU Adam there.
    "offload_without_client_optimizer": (
        {"zero_optimization": ZERO3["zero_optimization"] | {"offload_optimizer": {"device": "cpu"}}}, {},
        ['offloads the optimizer to cpu', '"zero_force_ds_cpu_optimizer": false'], True),
}


@pytest.mark.parametrize("case", OVERRIDES)
def test_a_config_that_would_override_a_flag_is_one_line_before_any_weights(case, tiny_assets, tmp_path, capsys):
    from fila_train.training.cli import main

    changes, flag_changes, fragments, in_preflight = OVERRIDES[case]
    flags = run_flags(tiny_assets, tmp_path, user_config(tmp_path, **changes)) | flag_changes
    # The launcher scripts' preflight (no torch) catches what needs no TrainingArguments ...
    if in_preflight:
        with pytest.raises(PreflightError) as early:
            preflight(as_cli(flags))
        assert all(fragment in str(early.value) for fragment in fragments), str(early.value)
    else:
        preflight(as_cli(flags))
    # ... and the arguments themselves refuse all of it, for any caller that builds them.
    with pytest.raises(ConfigError) as parsed:
        parsed_training_arguments(flags)
    assert all(fragment in str(parsed.value) for fragment in fragments), str(parsed.value)
    with pytest.raises(SystemExit) as exit_:
        main(as_cli(flags))
    stderr = capsys.readouterr().err
    assert exit_.value.code == 1, stderr
    assert len(stderr.splitlines()) == 1 and stderr.startswith("fila-train train: error: --deepspeed "), stderr
    assert all(fragment in stderr for fragment in fragments), stderr
    assert not (tmp_path / "out" / "run_args.json").exists()  # written once the model is built


def test_a_config_given_as_a_dict_is_checked_too(tmp_path):
    from fila_train.training.arguments import TrainingArguments

    with pytest.raises(ConfigError, match=r'--deepspeed \(a dict\): remove its "optimizer" section'):
        TrainingArguments(output_dir=str(tmp_path), deepspeed=ZERO3 | {"optimizer": ADAMW})


def test_without_clipping_a_config_needs_no_gradient_clipping(tiny_assets, tmp_path):
    flags = run_flags(tiny_assets, tmp_path, user_config(tmp_path, drop=("gradient_clipping",)))
    preflight(as_cli(flags | {"max_grad_norm": "0"}))
    assert "gradient_clipping" not in parsed_training_arguments(flags | {"max_grad_norm": "0"}).hf_deepspeed_config.config


@pytest.mark.parametrize("zero", [2, 3])
def test_the_engine_clips_at_max_grad_norm(zero, tiny_assets, tmp_path):
    """One SGD step from a known connector under the shipped config: the update is lr * max_grad_norm long,
    while the gradient (logged before clipping) is many times longer. Unclipped, the update would be
    lr * |gradient|."""
    start = tmp_path / "start"
    from fila_train.training.connector_artifact import save_connector_artifact

    save_connector_artifact(build_tiny_model(tiny_assets, hybrid=False, fuser=False), start)
    learning_rate, max_grad_norm = 0.5, 0.01
    flags = run_flags(tiny_assets, tmp_path, REPO / "zero_configs" / f"zero{zero}.json") | {
        "pretrained_connector": str(start / "connector.safetensors"), "tune_parts": "connector",
        "optim": "sgd", "learning_rate": str(learning_rate), "lr_scheduler_type": "constant",
        "max_grad_norm": str(max_grad_norm), "max_steps": "1", "per_device_train_batch_size": "2",
        "logging_steps": "1", "save_strategy": "steps", "save_steps": "1", "model_max_length": "512", "report_to": "none"}
    flags.pop("output_dir")
    run = run_distributed(as_cli(flags), tmp_path / "run", nproc=1, timeout=240)
    (logged,) = [entry for entry in json.loads((run.output_dir / "checkpoint-1" / "trainer_state.json").read_text())["log_history"]
                 if "grad_norm" in entry] or [None]
    before = load_file(start / "connector.safetensors")
    after = load_file(run.output_dir / "connector.safetensors")
    assert before.keys() == after.keys()
    update = math.sqrt(sum(float((after[name] - before[name]).double().pow(2).sum()) for name in before))
    assert logged is not None and logged["grad_norm"] > 20 * max_grad_norm, logged
    assert update == pytest.approx(learning_rate * max_grad_norm, rel=1e-3), (update, logged["grad_norm"])


def test_the_offload_config_trains_as_zero3_does(runs, tmp_path):
    """zero_configs/zero3_offload.json (optimizer state and parameters in host memory) runs the trainer's own
    optimizer, per-part groups and schedule: the same run under zero3.json is the reference, loss for loss."""
    reference = runs["mmfuser_zero3"]
    args = [arg.replace("zero_configs/zero3.json", "zero_configs/zero3_offload.json") for arg in reference.args]
    assert args != reference.args
    offloaded = run_distributed(args, tmp_path / "run")
    assert "Detected ZeRO Offload" in offloaded.rank_log(0)  # DeepSpeed's own word that it offloads
    assert offloaded.summary()["losses"] == pytest.approx(reference.run.summary()["losses"], rel=1e-5)

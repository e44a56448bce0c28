"""Speed options that need no model run: Liger's clear refusal, and the scripts' speed flags."""
from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest
from transformers import HfArgumentParser

from fila_train.model.liger import apply_liger_kernels
from fila_train.utils.errors import ConfigError
from fila_train.training.arguments import TrainingArguments

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.skipif(importlib.util.find_spec("liger_kernel") is not None, reason="liger-kernel is installed here")
def test_use_liger_fails_clearly_without_liger_kernel():
    with pytest.raises(ConfigError, match=r"--use_liger needs the liger-kernel package"):
        apply_liger_kernels(None)


def test_hf_liger_flag_is_refused_for_the_composite():
    parser = HfArgumentParser(TrainingArguments)
    with pytest.raises(ValueError, match="use --use_liger"):
        parser.parse_args_into_dataclasses(args=["--report_to", "none", "--use_liger_kernel", "True"])
    (args,) = parser.parse_args_into_dataclasses(args=["--report_to", "none", "--use_liger", "True",
                                                       "--packing", "True"])
    assert args.use_liger and args.packing


def dry_run(script: str, **env: str) -> list[str]:
    """The `fila-train train` flags a stage script would launch with (DRY_RUN=1 prints them)."""
    result = subprocess.run(["bash", f"scripts/{script}"], cwd=REPO, capture_output=True, text=True, timeout=120,
                            env=dict(os.environ, DRY_RUN="1", PYTHON=sys.executable, **env))
    assert result.returncode == 0, result.stderr
    return result.stdout.split("fila_train.cli train", 1)[1].split()


def flag(flags: list[str], name: str) -> str | None:
    return flags[flags.index(name) + 1] if name in flags else None


@pytest.mark.parametrize("script", ["pretrain.sh", "finetune.sh"])
def test_scripts_pass_speed_options(script):
    defaults = dry_run(script)
    assert flag(defaults, "--dataloader_num_workers") == "4"
    assert flag(defaults, "--dataloader_prefetch_factor") == "2"
    assert flag(defaults, "--dataloader_persistent_workers") == "True"
    assert flag(defaults, "--dataloader_pin_memory") == "True"
    assert flag(defaults, "--packing") == "False" and "--gradient_checkpointing_parts" not in defaults

    chosen = dry_run(script, DATALOADER_WORKERS="0", PACKING="True", ATTN_IMPLEMENTATION="flash_attention_2",
                     GRADIENT_CHECKPOINTING_PARTS="llm,vision", DATALOADER_PIN_MEMORY="False")
    assert flag(chosen, "--dataloader_num_workers") == "0"
    assert "--dataloader_prefetch_factor" not in chosen  # refused by HF without worker processes
    assert flag(chosen, "--packing") == "True" and flag(chosen, "--attn_implementation") == "flash_attention_2"
    assert flag(chosen, "--gradient_checkpointing_parts") == "llm,vision"
    assert flag(chosen, "--dataloader_pin_memory") == "False"


@pytest.mark.parametrize("script", ["pretrain.sh", "finetune.sh"])
def test_gradient_checkpointing_parts_turn_checkpointing_on_in_both_scripts(script):
    """GRADIENT_CHECKPOINTING_PARTS alone is enough: the flags it launches with parse, checkpointing those parts."""
    from fila_train.training.train import parse_args

    _, _, args = parse_args(dry_run(script, GRADIENT_CHECKPOINTING_PARTS="llm,vision"))
    assert args.activation_checkpointing and args.checkpointing_parts() == ("llm", "vision")


def test_gradient_checkpointing_false_with_parts_is_refused_not_overridden():
    from fila_train.training.train import parse_args
    from fila_train.utils.errors import ConfigError

    flags = dry_run("pretrain.sh", GRADIENT_CHECKPOINTING="False", GRADIENT_CHECKPOINTING_PARTS="llm")
    with pytest.raises(ConfigError, match="--gradient_checkpointing_parts needs --gradient_checkpointing True"):
        parse_args(flags)

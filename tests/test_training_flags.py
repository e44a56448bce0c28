"""The training flags a run parses: each one given is used or refused in one line, never dropped without a word."""
from __future__ import annotations

import sys

import pytest

from fila_train.training.llava_flags import translate_llava_flags
from fila_train.training.train import parse_args
from fila_train.utils.errors import ConfigError

BASE = ["--model_name_or_path", "llm", "--vision_tower", "clip", "--data_path", "data.jsonl", "--output_dir", "out"]
WINS = "--warmup_steps {} wins over --warmup_ratio 0.03 (as in transformers 4: a warmup_steps above 0 decides)"


@pytest.mark.parametrize("flags, warmup, steps_of_1000, note", [
    # as the scripts run it: their --warmup_ratio, then the extra flags
    (["--warmup_ratio", "0.03", "--warmup_steps", "100"], 100, 100, WINS.format(100)),
    (["--warmup_steps=100", "--warmup_ratio=0.03"], 100, 100, WINS.format(100)),
    (["--warmup-steps", "0.05", "--warmup_ratio", "0.03"], 0.05, 50, WINS.format(0.05)),  # < 1: a ratio (transformers 5)
    (["--warmup_ratio", "0.03"], 0.03, 30, None),
    (["--warmup_ratio", "0.03", "--warmup_steps", "0"], 0.03, 30, None),  # 0: no steps given (transformers 4)
])
def test_an_explicit_warmup_steps_wins_over_warmup_ratio_and_says_so(flags, warmup, steps_of_1000, note):
    """Before, --warmup_ratio always overwrote --warmup_steps: `bash scripts/finetune.sh --warmup_steps 100` (the
    scripts pass --warmup_ratio 0.03) warmed up for 3% of the steps, unsaid."""
    args = parse_args(BASE + flags)[2]
    assert args.warmup_steps == warmup and args.get_warmup_steps(1000) == steps_of_1000
    _, notes = translate_llava_flags(BASE + flags)  # the run logs these at its start
    assert [line for line in notes if "warmup" in line] == ([note] if note else [])


@pytest.mark.parametrize("flags, line", [
    # Before: 0 steps trained, exit 0, and a random connector written as the run's artifact.
    (["--num_train_epochs", "0"], "--num_train_epochs 0.0 with --max_steps -1 trains no step: give --num_train_epochs "
                                  "above 0 (EPOCHS in the scripts) or --max_steps above 0 (MAX_STEPS)"),
    (["--num_train_epochs", "-1", "--max_steps", "0"], "--num_train_epochs -1.0 with --max_steps 0 trains no step"),
    # Before, each of these was a traceback once the model had loaded.
    (["--per_device_train_batch_size", "0"], "--per_device_train_batch_size 0: must be at least 1"),
    (["--gradient_accumulation_steps", "0"], "--gradient_accumulation_steps 0: must be at least 1"),
    (["--learning_rate", "-1"], "--learning_rate -1.0: a learning rate must be a finite number >= 0"),
    (["--learning_rate", "inf"], "--learning_rate inf: a learning rate must be a finite number >= 0"),
    (["--part_lr", "connector=nan"], "--part_lr connector=nan: a learning rate must be a finite number >= 0"),
    (["--connector_lr", "-1"], "--connector_lr -1.0 (LLaVA's --mm_projector_lr): a learning rate must be a finite "
                               "number >= 0"),
    (["--eval_strategy", "steps"], "--eval_strategy steps: fila-train train has no evaluation set; leave it at 'no' "
                                   "and score a checkpoint with fila-train eval"),
    (["--evaluation_strategy", "epoch"], "--eval_strategy epoch: fila-train train has no evaluation set"),
    (["--report_to", "wandbb"], "--report_to wandbb: not an integration transformers knows; choose from azure_ml, "),
    (["--report_to", "tensorboard"], "--report_to tensorboard: its package is not installed here; install it"),
    # Before, transformers built every sample (decoding every image) on every rank before the first step and
    # grouped by len(sample["images"]), the processor's first input name: the image count, not the tokens.
    (["--train_sampling_strategy", "group_by_length"], "--train_sampling_strategy group_by_length: transformers "
                                                       "would group by each sample's number of images"),
    (["--train_sampling_strategy", "batch_rebalance"], "--train_sampling_strategy batch_rebalance: transformers "
                                                       "would group by each sample's number of images"),
    # Before, --group_by_modality_length won and the other sampler was dropped without a word.
    (["--group_by_modality_length", "True", "--train_sampling_strategy", "sequential"],
     "--train_sampling_strategy sequential: --group_by_modality_length decides the order"),
])
def test_a_bad_training_flag_is_one_line_when_the_flags_are_parsed(flags, line, monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorboard", None)  # an environment without it (find_spec: not found)
    monkeypatch.setitem(sys.modules, "tensorboardX", None)
    with pytest.raises(ConfigError) as error:
        parse_args(BASE + flags)
    assert str(error.value).startswith(line) and "\n" not in str(error.value), str(error.value)


@pytest.mark.parametrize("flags", [["--num_train_epochs", "0", "--max_steps", "3"], ["--learning_rate", "0"],
                                   ["--report_to", "wandb"], ["--report_to", "none"], ["--report_to", "all"],
                                   ["--eval_strategy", "no"], ["--part_lr", "connector=0"],
                                   ["--train_sampling_strategy", "sequential"], ["--group_by_modality_length", "True"]])
def test_good_training_flags_parse(flags):
    parse_args(BASE + flags)


def test_a_min_lr_floor_with_part_rates_of_their_own_is_refused_for_the_fraction_form():
    """transformers turns --lr_scheduler_kwargs min_lr into a fraction of --learning_rate and gives every parameter
    group that fraction of its own rate. Before, a connector at 1e-3 under --learning_rate 1e-2 and min_lr 5e-4
    fell to 1.1e-4 by the end, below the floor asked for, unsaid."""
    schedule = ["--lr_scheduler_type", "cosine_with_min_lr", "--lr_scheduler_kwargs", '{"min_lr": 5e-4}',
                "--learning_rate", "1e-2", "--tune_parts", "connector,llm"]
    with pytest.raises(ConfigError, match=r"min_lr 0.0005: transformers ends every part at the fraction 0.05 of its "
                                          r"own rate \(min_lr / --learning_rate 0.01\), so connector \(at 0.001\) "
                                          r"would end at 5e-05, not at 0.0005: give min_lr_rate"):
        parse_args(BASE + schedule + ["--connector_lr", "1e-3"])
    parse_args(BASE + schedule)  # one rate for all: the floor is the one asked for
    parse_args(BASE + schedule[:2] + ["--lr_scheduler_kwargs", '{"min_lr_rate": 0.05}', "--connector_lr", "1e-3"])

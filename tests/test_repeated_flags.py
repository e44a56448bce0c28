"""A flag that takes several values may be given several times, as `--vision_option a=1 --vision_option b=2`
reads and as the scripts append extra flags after their own: the values add up. argparse keeps the last
occurrence's values only, so every earlier one was dropped without a word."""
from __future__ import annotations

import pytest

from fila_train.evaluation.cli import EvalArguments
from fila_train.training.train import parse_args
from fila_train.utils.argument_parser import StrictArgumentParser, StrictParser
from fila_train.utils.errors import ConfigError

BASE = ["--model_name_or_path", "llm", "--vision_tower", "clip", "--data_path", "data.jsonl", "--output_dir", "out",
        "--vision_encoder", "fila_hybrid"]


def test_vision_and_connector_options_given_several_times_add_up():
    model_args, _, training_args = parse_args(BASE + [
        "--vision_option", "cvfm.gate=scalar", "--vision_option", "cvfm.fusion=add", "anyres.global_view=canvas",
        "--connector_type", "mmfuser", "--connector_option", "num_points=2", "--connector_option", "num_heads=2",
        "--tune_parts", "connector,cvfm", "--part_lr", "cvfm=1e-4", "--part_lr", "connector=2e-4"])
    options = model_args.vision_options()
    assert options["cvfm"] == {"gate": "scalar", "fusion": "add"} and options["anyres"] == {"global_view": "canvas"}
    assert model_args.connector_options() == {"num_points": 2, "num_heads": 2}
    assert training_args.part_lr == ["cvfm=1e-4", "connector=2e-4"]


def test_the_same_option_given_in_two_occurrences_is_still_refused():
    with pytest.raises(ConfigError, match="cvfm.gate is given twice, as 'scalar' and 'channel'"):
        parse_args(BASE + ["--vision_option", "cvfm.gate=scalar", "--vision_option", "cvfm.gate=channel"])


def test_benches_given_several_times_are_all_evaluated():
    (args,) = StrictArgumentParser((EvalArguments,)).parse(["--bench", "a.jsonl", "--bench", "b.jsonl", "c.jsonl"])
    assert args.bench == ["a.jsonl", "b.jsonl", "c.jsonl"]


def test_a_plain_argparse_list_flag_adds_up_and_its_default_is_replaced_not_extended():
    parser = StrictParser(prog="test")
    parser.add_argument("--input", nargs="+", required=True)
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1])
    parser.add_argument("--variants", nargs="+")
    args = parser.parse_args(["--input", "a", "--input", "b", "--seeds", "5", "--seeds", "6"])
    assert args.input == ["a", "b"] and args.seeds == [5, 6] and args.variants is None
    assert parser.parse_args(["--input", "a"]).seeds == [0, 1]

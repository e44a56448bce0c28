"""The training flags a run parses: each one given is used or refused in one line, never dropped without a word."""
from __future__ import annotations

import pytest

from fila_train.training.llava_flags import translate_llava_flags
from fila_train.training.train import parse_args

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

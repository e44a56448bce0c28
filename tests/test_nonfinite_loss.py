"""A training loss or gradients that are not finite stop the run with one line naming the step, the ranks and
their records.

Before, HF's logging filter logged a NaN loss as 0.0 (later as the mean of the earlier ones), DeepSpeed skipped
every step with one warning each, and the run ended "successfully" with a summary of zero losses. A finite loss
with gradients that overflow did the same: every step skipped, exit 0."""
from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys

import pytest
from safetensors.torch import load_file, save_file

from distributed_utils import REPO, free_port, rank_environment, train_args
from fila_train.utils.errors import REPORTED_EXIT_CODE


def llm_with_nan(llm, folder, tensor: str, row: int | slice, value: float = float("nan")):
    """The tiny LLM with NaN (or ``value``) in one row of one tensor."""
    shutil.copytree(llm, folder)
    weights = load_file(folder / "model.safetensors")
    weights[tensor][row] = value
    save_file(weights, folder / "model.safetensors", metadata={"format": "pt"})
    return folder


def stopped_run(assets, llm, output, steps: int, zero: int = 2, overflows: int = 0) -> str:
    """A 2-process stage-2 run of ``llm`` that must stop: its one error line. DeepSpeed reports ``overflows``
    skipped steps before it stops (none for a loss: that is checked before DeepSpeed's step)."""
    run = subprocess.run(
        [sys.executable, "-m", "fila_train.training.launch", "--nproc_per_node", "2", "--master_port",
         str(free_port()), "-m", "fila_train.cli", "train", "--output_dir", str(output),
         *train_args(assets, hybrid=False, fuser=False, stage=2, zero=zero, steps=steps), "--model_name_or_path",
         str(llm), "--log_sample_ids"],
        cwd=REPO, env=rank_environment(), capture_output=True, text=True, timeout=300)
    assert run.returncode == REPORTED_EXIT_CODE, run.stderr[-3000:]
    errors = [line for line in run.stderr.splitlines() if ": error: " in line]
    assert len(errors) == 1, run.stderr[-3000:]
    assert errors[0].startswith("fila-train train [rank 0]: error: "), errors[0]  # not after the bar's text
    assert "Traceback" not in run.stderr
    # DeepSpeed's logger writes stdout; its rank 0 logs a skipped step.
    assert (run.stdout + run.stderr).count("OVERFLOW") == overflows, run.stdout[-3000:]
    assert not (output / "train_summary.json").exists() and not (output / "model.safetensors").exists()
    return errors[0]


def trained_at(output, rank: int, step: int) -> list[str]:
    """The records rank ``rank`` trained at ``step`` (batches of 2)."""
    return (output / "sample_ids" / f"rank{rank}.txt").read_text().split()[2 * (step - 1):2 * step]


def test_a_model_with_nan_weights_stops_at_step_1_naming_every_rank(tiny_assets, tmp_path):
    llm = llm_with_nan(tiny_assets.llm, tmp_path / "llm", "model.layers.0.mlp.down_proj.weight", 0)
    output = tmp_path / "run"
    line = stopped_run(tiny_assets, llm, output, steps=6)
    expected = "; ".join(f"rank {r}: nan (records {', '.join(trained_at(output, r, 1))})" for r in (0, 1))
    assert f"the training loss is not finite at step 1, {expected}: the run diverged" in line, line


def test_a_record_that_breaks_the_model_is_named_whichever_rank_met_it(tiny_assets, tmp_path):
    """A NaN embedding row for a token that one record alone holds: only the rank that trains it sees a NaN
    loss, at the step that trains it; that rank and record are in the one line, from rank 0."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_assets.llm)
    records = [json.loads(line) for line in tiny_assets.stage2_data.read_text().splitlines()]
    holders: dict[int, set[str]] = {}
    for record in records:
        for token in tokenizer(" ".join(turn["value"] for turn in record["conversations"])).input_ids:
            holders.setdefault(token, set()).add(record["id"])
    # A word-initial token ("Ġcity"): tokenized the same inside the chat template as in the bare text.
    token, (culprit,) = next((token, ids) for token, ids in sorted(holders.items()) if len(ids) == 1
                             and re.fullmatch(r"Ġ\w{3,}", tokenizer.convert_ids_to_tokens(token)))
    llm = llm_with_nan(tiny_assets.llm, tmp_path / "llm", "model.embed_tokens.weight", token)
    output = tmp_path / "run"
    line = stopped_run(tiny_assets, llm, output, steps=7)  # an epoch: 27 records, 4 a step
    step = int(re.search(r"at step (\d+), ", line).group(1))
    (rank,) = [r for r in (0, 1) if culprit in trained_at(output, r, step)]
    assert f"at step {step}, rank {rank}: nan (records {', '.join(trained_at(output, rank, step))}): " in line, line
    assert f"rank {1 - rank}:" not in line


@pytest.mark.parametrize("zero", [2, 3])
def test_gradients_that_overflow_under_a_finite_loss_stop_at_the_first_skipped_step(zero, tiny_assets, tmp_path):
    """The final norm's weights at 1e37: the loss stays finite (about 4e36: the softmax saturates) but the LM head's
    gradients overflow float32, so DeepSpeed skips the step; in bf16 or fp32 it would skip every later step too.
    (At 1e20 ZeRO-2 overflows in its gradient norm alone; ZeRO-3 takes that norm without overflow and trains on.)"""
    llm = llm_with_nan(tiny_assets.llm, tmp_path / "llm", "model.norm.weight", slice(None), 1e37)
    output = tmp_path / "run"
    line = stopped_run(tiny_assets, llm, output, steps=6, zero=zero, overflows=1)
    ranks = [re.search(rf"rank {r}: loss ([0-9.e+]+) \(records ([^)]*)\)", line) for r in (0, 1)]
    assert all(ranks), line
    assert all(float(found.group(1)) > 1e35 for found in ranks), line
    assert [found.group(2) for found in ranks] == [", ".join(trained_at(output, r, 1)) for r in (0, 1)], line
    assert line.startswith("fila-train train [rank 0]: error: the gradients are not finite at step 1, rank 0: loss ")
    assert "DeepSpeed skipped the step" in line, line

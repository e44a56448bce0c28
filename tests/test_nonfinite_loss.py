"""A training loss that is not finite stops the run with one line naming the step, the rank and its records.

Before, HF's logging filter logged a NaN loss as 0.0 (later as the mean of the earlier ones), DeepSpeed skipped
every step with one warning each, and the run ended "successfully" with a summary of zero losses."""
from __future__ import annotations

import shutil
import subprocess
import sys

from safetensors.torch import load_file, save_file

from distributed_utils import REPO, free_port, rank_environment, train_args
from fila_train.utils.errors import REPORTED_EXIT_CODE


def llm_with_a_nan_weight(llm, folder):
    """The tiny LLM with one NaN in its first MLP: every loss it computes is NaN (a diverged or corrupted model)."""
    shutil.copytree(llm, folder)
    weights = load_file(folder / "model.safetensors")
    name = next(name for name in weights if "layers.0.mlp.down_proj" in name)
    weights[name][0, 0] = float("nan")
    save_file(weights, folder / "model.safetensors", metadata={"format": "pt"})
    return folder


def test_a_nan_loss_stops_the_run_in_one_line_naming_step_rank_and_records(tiny_assets, tmp_path):
    llm = llm_with_a_nan_weight(tiny_assets.llm, tmp_path / "llm")
    output = tmp_path / "run"
    run = subprocess.run(
        [sys.executable, "-m", "fila_train.training.launch", "--nproc_per_node", "2", "--master_port",
         str(free_port()), "-m", "fila_train.cli", "train", "--output_dir", str(output),
         *train_args(tiny_assets, hybrid=False, fuser=False, stage=2, zero=2), "--model_name_or_path", str(llm),
         "--log_sample_ids"],
        cwd=REPO, env=rank_environment(), capture_output=True, text=True, timeout=300)
    assert run.returncode == REPORTED_EXIT_CODE, run.stderr[-3000:]
    errors = [line for line in run.stderr.splitlines() if ": error: " in line]
    assert len(errors) == 1, run.stderr[-3000:]
    assert errors[0].startswith("fila-train train [rank "), errors[0]  # not after the progress bar's text
    assert "Traceback" not in run.stderr and "OVERFLOW" not in run.stderr
    line = errors[0]
    assert "the training loss is nan at step 1 on rank " in line, line
    rank = int(line.split("on rank ")[1][0])
    ids = (output / "sample_ids" / f"rank{rank}.txt").read_text().split()[:2]  # its batch of 2 at step 1
    assert f"records {ids}" in line, (line, ids)
    assert not (output / "train_summary.json").exists() and not (output / "model.safetensors").exists()

"""Looking at a run without a wandb account: curves.png at every checkpoint and at the end, every part's
learning rate in the logs, readable progress, and a log with no warning repeated per step (the 2-process
ZeRO-3 reference run of test_resume.py)."""
from __future__ import annotations

import json
import re
from collections import Counter

import pytest
import torch
from PIL import Image

from fila_train.training.curves import CURVES_FILE, series, write_curves
from fila_train.training.progress import LINES_PER_RUN, format_log_line
from fila_train.training.reporting import WANDB_PROJECT, configure_wandb


def final_log_history(run) -> list[dict]:
    last = max(run.output_dir.glob("checkpoint-*"), key=lambda path: int(path.name.split("-")[1]))
    return json.loads((last / "trainer_state.json").read_text())["log_history"]


def test_every_part_logs_its_own_learning_rate(uninterrupted):
    """--learning_rate 3e-3 with --connector_lr 1e-3 under ZeRO-3: each part's logged rate is its own rate times
    transformers' schedule at that step (a LambdaLR of the run's scheduler over 1.0), and transformers' single
    learning_rate is only one of them. Before, each part's rate was worked out from the logged one, so the check
    held whatever rates the optimizer's groups had."""
    from transformers import get_scheduler

    from fila_train.training.train import parse_args

    _, _, args = parse_args(uninterrupted[0])
    one = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=1.0)
    schedule = get_scheduler(args.lr_scheduler_type, one, num_warmup_steps=args.get_warmup_steps(args.max_steps),
                             num_training_steps=args.max_steps)
    factors = []
    for _ in range(args.max_steps):
        factors.append(schedule.get_last_lr()[0])
        one.step()
        schedule.step()
    history = [entry for entry in final_log_history(uninterrupted[1]) if "loss" in entry]
    assert history
    assert len(set(factors)) > 1  # the schedule moves: a part left at its initial rate would show
    for entry in history:
        factor = factors[entry["step"] - 1]
        assert entry["learning_rate/llm"] == pytest.approx(3e-3 * factor), entry
        assert entry["learning_rate/connector"] == pytest.approx(1e-3 * factor), entry
        assert entry["learning_rate"] in (entry["learning_rate/llm"], entry["learning_rate/connector"])


def test_curves_png_is_written_at_checkpoints_and_at_the_end(uninterrupted):
    run = uninterrupted[1]
    with Image.open(run.output_dir / CURVES_FILE) as image:
        assert image.format == "PNG" and image.width >= 600
    losses = series(final_log_history(run), "loss")["loss"]
    assert losses[0] == list(range(1, len(losses[0]) + 1))  # every logged step is a point of the curve
    rates = series(final_log_history(run), "learning_rate/")
    assert set(rates) == {"connector", "llm"}


def test_curves_png_says_what_was_not_logged(tmp_path):
    """No MFU on CPU: the panel says why rather than staying blank (the figure is still written)."""
    history = [{"step": step, "loss": 1.0 / step, "grad_norm": 0.5, "learning_rate/llm": 1e-3} for step in (1, 2, 3)]
    path = write_curves(history + [{"step": 3, "train_runtime": 1.0}], tmp_path / CURVES_FILE, "a run")
    with Image.open(path) as image:
        assert image.format == "PNG"
    assert series(history, "mfu") == {}


def test_the_run_log_is_readable_and_quiet(uninterrupted):
    """Rank 0's whole output: no warning printed twice, no config dumps, progress as short lines (about
    LINES_PER_RUN of them), not one dict per step."""
    log = uninterrupted[1].rank_log(0)
    warnings = Counter(line.strip() for line in log.splitlines() if re.search(r"Warning\b|\[WARNING\]", line))
    assert [line for line, count in warnings.items() if count > 1] == []
    for noise in ("all_gather_into_tensor", "gemm_4bit_forward", "Setting accelerator to CPU", "No CUDA runtime"):
        assert noise not in log
    assert "Model config" not in log and "GenerationConfig {" not in log
    assert "{'loss'" not in log
    lines = re.findall(r"step \d+/\d+ \| loss \d", log)
    assert 1 <= len(lines) <= LINES_PER_RUN + 1


def test_stage_2_from_a_random_connector_says_so_once(uninterrupted):
    """The reference run trains the LLM with a new connector (no --pretrained_connector): often a stage 1 forgotten,
    which trained on silently. test_distributed.py's stage 2 loads one and must not say it."""
    said = "no --pretrained_connector: the connector starts from random weights"
    assert uninterrupted[1].rank_log(0).count(said) == 1 and said not in uninterrupted[1].rank_log(1)


def test_progress_line():
    line = format_log_line(10, 60, {"loss": 5.97312, "grad_norm": 2.2581, "learning_rate": 0.0019,
                                    "tokens_per_second": 3450.2, "mfu": 0.412})
    assert line == "step 10/60 | loss 5.9731 | grad norm 2.26 | lr 0.0019 | tokens/s 3,450 | MFU 41.2%"


def test_wandb_project_defaults_to_fila_train(tmp_path, monkeypatch):
    monkeypatch.delenv("WANDB_PROJECT", raising=False)
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    configure_wandb(["wandb"], str(tmp_path))
    import os

    assert os.environ["WANDB_PROJECT"] == WANDB_PROJECT == "fila-train"
    monkeypatch.setenv("WANDB_PROJECT", "mine")
    configure_wandb(["wandb"], str(tmp_path))
    assert os.environ["WANDB_PROJECT"] == "mine"


def test_wandb_without_an_api_key_goes_offline_and_says_so(tmp_path, monkeypatch, caplog):
    """The README's promise, without the session's WANDB_MODE=offline (conftest.py): no key in the environment
    or in a netrc file, so the run logs offline, says where, and a real wandb run starts offline there."""
    import os
    import subprocess
    import sys

    for name in ("WANDB_MODE", "WANDB_API_KEY", "WANDB_DIR", "WANDB_PROJECT"):
        monkeypatch.delenv(name, raising=False)  # also restores what configure_wandb sets
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))  # no ~/.netrc, no ~/.config/wandb
    monkeypatch.setenv("NETRC", str(home / ".netrc"))  # where wandb looks first
    output_dir = tmp_path / "out"
    with caplog.at_level("WARNING", logger="fila_train.training.reporting"):
        configure_wandb(["wandb"], str(output_dir))
    assert os.environ["WANDB_MODE"] == "offline"
    assert f"wandb: no API key configured, logging OFFLINE to {output_dir}" in caplog.text
    # A fresh process, as a run starts: wandb keeps its settings from its first use in a process.
    started = subprocess.run([sys.executable, "-c", "import wandb; run = wandb.init(); "
                              "print(run.offline, run.project); run.finish()"],
                             env=dict(os.environ), capture_output=True, text=True, timeout=120)
    assert started.returncode == 0, started.stderr[-2000:]
    assert started.stdout.split()[-2:] == ["True", WANDB_PROJECT]
    assert list((output_dir / "wandb").glob("offline-run-*"))


@pytest.mark.parametrize("server, machine, file", [
    (None, "api.wandb.ai", "$NETRC"),  # wandb reads $NETRC before ~/.netrc
    ("https://wandb.example.org", "wandb.example.org", "$NETRC"),  # a self-hosted server has its own entry
    ("http://localhost:8080", "localhost:8080", "$NETRC"),  # a local server's entry keeps its port
    (None, "api.wandb.ai", "~/.netrc"),  # readable by others (0644): wandb takes it, Python's default refuses it
])
def test_a_key_in_the_netrc_file_wandb_reads_keeps_wandb_online(server, machine, file, tmp_path, monkeypatch):
    """Such a key is configured: the run must not be sent offline."""
    import os

    for name in ("WANDB_MODE", "WANDB_API_KEY", "WANDB_DIR", "WANDB_PROJECT", "WANDB_BASE_URL", "NETRC"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    if server:
        monkeypatch.setenv("WANDB_BASE_URL", server)
    credentials = tmp_path / ".netrc" if file == "~/.netrc" else tmp_path / "secrets" / "netrc"
    credentials.parent.mkdir(exist_ok=True)
    credentials.write_text(f"machine {machine} login user password {'x' * 40}\n")
    credentials.chmod(0o644 if file == "~/.netrc" else 0o600)
    if file == "$NETRC":
        monkeypatch.setenv("NETRC", str(credentials))
    configure_wandb(["wandb"], str(tmp_path / "out"))
    assert "WANDB_MODE" not in os.environ


def test_commands_print_no_third_party_notice():
    """`fila-train train --help` imports the whole training stack (transformers' Trainer, peft, and with it
    bitsandbytes and DeepSpeed): nothing but the help reaches the terminal."""
    import subprocess
    import sys

    from distributed_utils import REPO

    finished = subprocess.run([sys.executable, "-m", "fila_train.cli", "train", "--help"], cwd=REPO,
                              capture_output=True, text=True, timeout=300)
    assert finished.returncode == 0 and "--tune_parts" in finished.stdout
    assert finished.stderr == ""


def test_a_saved_models_template_replaced_by_the_runs_says_so(tiny_assets, tmp_path, capfd):
    """Training on from a saved fila model: its template is the model's prompt format. Before, the run's
    --conversation_template (the scripts' default vicuna_v1) replaced it without a word."""
    import shutil

    from distributed_utils import build_tiny_model
    from fila_train.model.configuration import FilaConfig
    from fila_train.training.train import parse_args, train

    saved = tmp_path / "saved"
    model = build_tiny_model(tiny_assets, hybrid=False, fuser=False)
    model.config.conversation_template = "chatml"
    model.save_pretrained(saved)
    for tokenizer_file in tiny_assets.llm.glob("tokenizer*"):
        shutil.copy(tokenizer_file, saved)
    argv = ["--model_name_or_path", str(saved), "--data_path", str(tiny_assets.stage2_data), "--image_folder",
            str(tiny_assets.image_folder), "--output_dir", str(tmp_path / "run"), "--conversation_template",
            "vicuna_v1", "--tune_parts", "connector", "--max_steps", "1", "--per_device_train_batch_size", "2",
            "--report_to", "none", "--save_strategy", "no", "--model_max_length", "512"]
    capfd.readouterr()
    train(*parse_args(argv))
    assert (f"--conversation_template vicuna_v1 replaces {saved}'s chatml: the run trains and saves the model with "
            f"vicuna_v1 (pass --conversation_template chatml to keep it)") in capfd.readouterr().err
    assert FilaConfig.from_pretrained(tmp_path / "run").conversation_template == "vicuna_v1"


def test_a_resumed_run_continues_the_wandb_run_of_its_checkpoint(tiny_assets, tmp_path, monkeypatch):
    """Before, a resumed run opened a second wandb run (another id), so its curves were two runs. Now each
    checkpoint records the wandb run that wrote it, and a resume continues that run (WANDB_RUN_ID, resume
    "allow"), unless the user gave an id. Real processes, one rank each, as a job and its requeue."""
    import os
    import subprocess
    import sys

    from distributed_utils import first_records
    from fila_train.demo.tiny_models import as_cli
    from fila_train.training.checkpoints import read_manifest

    # WANDB_SERVICE: a wandb run earlier in this test session (the ablation's) left its service's address, which the
    # two runs would share, as a job and its requeue do not ("run ID ... is in use").
    for name in ("WANDB_RUN_ID", "WANDB_RESUME", "WANDB_DIR", "WANDB_SERVICE"):
        monkeypatch.delenv(name, raising=False)
    output_dir = tmp_path / "run"
    flags = tiny_assets.model_flags(hybrid=False, fuser=False) | {
        "data_path": str(first_records(tiny_assets.stage1_data, tmp_path)), "image_folder": str(tiny_assets.image_folder),
        "conversation_template": "plain", "tune_parts": "connector", "per_device_train_batch_size": "2",
        "max_steps": "2", "logging_steps": "1", "model_max_length": "512", "save_strategy": "steps",
        "save_steps": "1", "report_to": "wandb", "output_dir": str(output_dir), "seed": "5"}

    def train(extra: dict) -> subprocess.CompletedProcess:
        run = subprocess.run([sys.executable, "-m", "fila_train.cli", "train", *as_cli(flags | extra)],
                             env=dict(os.environ, WANDB_MODE="offline"), capture_output=True, text=True, timeout=300)
        assert run.returncode == 0, run.stderr[-3000:]
        return run

    train({})
    run_ids = {path.name.rsplit("-", 1)[1] for path in (output_dir / "wandb").glob("offline-run-*")}
    assert len(run_ids) == 1
    (run_id,) = run_ids
    assert read_manifest(output_dir / "checkpoint-1")["wandb_run_id"] == run_id
    resumed = train({"resume_from_checkpoint": str(output_dir / "checkpoint-1")})
    assert f"wandb: continuing run {run_id}, which wrote {output_dir / 'checkpoint-1'}" in resumed.stderr
    assert {path.name.rsplit("-", 1)[1] for path in (output_dir / "wandb").glob("offline-run-*")} == {run_id}
    assert len(list((output_dir / "wandb").glob("offline-run-*"))) == 2

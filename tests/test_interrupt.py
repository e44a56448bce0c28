"""Ctrl-C or SIGTERM stops a 2-process run with one line and the signal's exit code, as a terminal or a scheduler
(SLURM's scancel and preemption send SIGTERM) would stop it.

Before, Ctrl-C printed every rank's KeyboardInterrupt traceback and the launcher's SignalException traceback
(164 lines of stderr for 2 ranks), and SIGTERM the launcher's traceback."""
from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass

import pytest

from distributed_utils import REPO, free_port, rank_environment, train_args
from fila_train.training.checkpoints import MANIFEST, newest_complete

SAVE_STEPS = 2


@dataclass
class StoppedRun:
    returncode: int
    stderr: str
    after_the_signal: list[str]  # stderr's lines from the signal on, less the progress bar's


def stopped_run(assets, output, signum: int) -> StoppedRun:
    """A long 2-process run through the launcher, in a session of its own like a terminal's foreground job, sent
    ``signum`` (the whole group, as Ctrl-C or scancel do) once it has saved a checkpoint."""
    command = [sys.executable, "-m", "fila_train.training.launch", "--nproc_per_node", "2", "--master_port",
               str(free_port()), "-m", "fila_train.cli", "train", "--output_dir", str(output),
               *train_args(assets, hybrid=False, fuser=False, stage=2, zero=2, steps=1000),
               "--save_strategy", "steps", "--save_steps", str(SAVE_STEPS)]
    process = subprocess.Popen(command, cwd=REPO, env=rank_environment(), stdout=subprocess.DEVNULL,
                               stderr=subprocess.PIPE, text=True, start_new_session=True)
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(process.stderr), daemon=True)
    reader.start()
    deadline = time.monotonic() + 240
    while not (output / f"checkpoint-{SAVE_STEPS}" / MANIFEST).exists():
        assert process.poll() is None and time.monotonic() < deadline, "".join(lines)[-3000:]
        time.sleep(0.2)
    time.sleep(0.5)  # the manifest's own log line
    before = len(lines)
    os.killpg(process.pid, signum)
    process.wait(timeout=120)
    reader.join(timeout=30)
    after = [line.rstrip("\n").rsplit("\r", 1)[-1] for line in lines[before:]]
    return StoppedRun(process.returncode, "".join(lines),
                      [line for line in after if line.strip() and not re.search(r"\d+/\d+ \[", line)])


def test_ctrl_c_is_one_line_naming_the_step_and_the_checkpoint_to_resume_from(tiny_assets, tmp_path):
    output = tmp_path / "run"
    run = stopped_run(tiny_assets, output, signal.SIGINT)
    assert run.returncode == 128 + signal.SIGINT, run.stderr[-3000:]
    assert "Traceback" not in run.stderr and "KeyboardInterrupt" not in run.stderr, run.stderr[-3000:]
    (line,) = run.after_the_signal
    checkpoint, _ = newest_complete(output)
    assert checkpoint is not None
    found = re.fullmatch(r"fila-train train \[rank 0\]: interrupted at step (\d+) of 1000; (.*)", line)
    assert found and int(found.group(1)) >= int(checkpoint.name.split("-")[1]), line
    assert found.group(2) == (f"the newest complete checkpoint is {checkpoint}: "
                              f"--resume_from_checkpoint latest continues from it"), line


@pytest.mark.parametrize("signum", [signal.SIGTERM])
def test_a_scheduler_stop_is_one_line_from_the_launcher(signum, tiny_assets, tmp_path):
    output = tmp_path / "run"
    run = stopped_run(tiny_assets, output, signum)
    assert run.returncode == 128 + signum, run.stderr[-3000:]
    assert "Traceback" not in run.stderr, run.stderr[-3000:]
    assert run.after_the_signal == [
        f"[fila-train] stopped by {signal.Signals(signum).name}: every worker was stopped; a checkpoint is complete "
        f"or absent (--resume_from_checkpoint latest continues from the newest complete one)"], run.stderr[-3000:]
    assert newest_complete(output)[0] is not None


def test_ctrl_c_in_one_process_is_one_line_and_a_second_one_waits_for_it(capsys, monkeypatch):
    """torchrun passes the terminal's Ctrl-C on to its workers once more: it must not interrupt the report."""
    from fila_train.utils.errors import INTERRUPTED_EXIT_CODE, ReportedExit, one_line_errors

    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "TORCHELASTIC_ERROR_FILE"):
        monkeypatch.delenv(name, raising=False)
    before = signal.getsignal(signal.SIGINT)
    ignored_after_the_first = None
    with pytest.raises(ReportedExit) as stopped:
        with one_line_errors("fila-train eval"):
            try:
                os.kill(os.getpid(), signal.SIGINT)
                time.sleep(30)
            except KeyboardInterrupt:
                ignored_after_the_first = signal.getsignal(signal.SIGINT) is signal.SIG_IGN
                raise
    assert stopped.value.code == INTERRUPTED_EXIT_CODE and ignored_after_the_first
    assert capsys.readouterr().err == "fila-train eval: interrupted\n"
    assert signal.getsignal(signal.SIGINT) is before

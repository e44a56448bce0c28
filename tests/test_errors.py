"""Who prints an error: one line from the rank that has something to say, never one from every rank."""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

import pytest
import torch.distributed as dist

from distributed_utils import REPO, free_port
from fila_train.data.dataset import SampleError
from fila_train.utils.errors import REPORTED_EXIT_CODE, SILENT_EXIT_CODE, ConfigError, LaunchError, one_line_errors


def outcome(error: Exception, rank: int, world_size: int, tmp_path, monkeypatch, capsys) -> tuple[int, str, dict]:
    """(exit code, what was printed, what was left in torchrun's error file) when ``error`` ends a rank."""
    monkeypatch.setenv("RANK", str(rank))
    monkeypatch.setenv("LOCAL_RANK", str(rank % 2))  # nodes of 2 processes
    monkeypatch.setenv("WORLD_SIZE", str(world_size))
    monkeypatch.setenv("TORCHELASTIC_ERROR_FILE", str(tmp_path / "error.json"))
    with pytest.raises(SystemExit) as exit_:
        with one_line_errors("fila-train train", tmp_path / "out"):
            raise error
    left = json.loads((tmp_path / "error.json").read_text()) if (tmp_path / "error.json").exists() else {}
    return exit_.value.code, capsys.readouterr().err, left


CASES = {  # name: (error, rank, world size, printed?)
    "config_on_rank0": (ConfigError("--tune_parts: unknown part(s) ['lm']"), 0, 2, True),
    "config_on_rank1": (ConfigError("--tune_parts: unknown part(s) ['lm']"), 1, 2, False),  # rank 0 says it
    "record_on_rank1": (SampleError("data.jsonl:4 (id 'r'): field 'image': image file not found", "missing_image"),
                        1, 2, True),
    "bug_on_rank1": (RuntimeError("CUDA out of memory"), 1, 2, True),
    "peer_on_rank0": (dist.DistBackendError("Connection closed by peer"), 0, 2, False),
    "peer_alone": (dist.DistNetworkError("address already in use"), 0, 1, True),  # no peer to blame
    # Ours, though it quotes torch's text: not a peer's failure.
    "launch_on_rank0": (LaunchError("could not start the process group at h:1 (Connection closed by peer)"), 0, 2,
                        True),
    # Where processes never met, each node says so: rank 0 may be the one missing.
    "launch_on_node1": (LaunchError("not all 4 processes joined at h:1 within --ddp_timeout 5 s"), 2, 4, True),
    "launch_on_rank1": (LaunchError("not all 4 processes joined at h:1 within --ddp_timeout 5 s"), 1, 4, False),
}


@pytest.mark.parametrize("case", CASES)
def test_each_error_is_printed_once_by_the_rank_that_should(case, tmp_path, monkeypatch, capsys):
    error, rank, world_size, printed = CASES[case]
    code, stderr, left = outcome(error, rank, world_size, tmp_path, monkeypatch, capsys)
    assert code == (REPORTED_EXIT_CODE if printed else SILENT_EXIT_CODE) and REPORTED_EXIT_CODE == 1
    lines = stderr.splitlines()
    bug = case.startswith("bug")  # not the user's error: its traceback is printed above the line
    assert len(lines) == (0 if not printed else len(lines) if bug else 1), stderr
    if bug:
        assert lines[0] == "Traceback (most recent call last):" and f"RuntimeError: {error}" in lines
    if printed:
        assert lines[-1].startswith("fila-train train") and ": error: " in lines[-1]
        assert str(error) in lines[-1]
    # The line waits in torchrun's error file, for the launcher to print if no rank did.
    assert str(error) in left["message"]["message"] and left["message"]["extraInfo"]["printed"] is printed
    traceback = (tmp_path / "out" / f"error-rank{rank}.txt").read_text()
    assert traceback.startswith("Traceback") and type(error).__name__ in traceback


def test_an_error_raised_in_a_dataloader_worker_keeps_only_its_own_message(tmp_path, monkeypatch, capsys):
    """torch re-raises a worker's error with the worker's whole traceback as its message."""
    from torch.utils.data import DataLoader, Dataset

    class Broken(Dataset):
        def __len__(self):
            return 2

        def __getitem__(self, index):
            raise SampleError("data.jsonl:2 (id 'x'): field 'image': unreadable image", "unreadable_image")

    try:
        next(iter(DataLoader(Broken(), num_workers=1)))
    except SampleError as raised:
        error = raised
    code, stderr, _ = outcome(error, 0, 1, tmp_path, monkeypatch, capsys)
    assert stderr == "fila-train train: error: data.jsonl:2 (id 'x'): field 'image': unreadable image\n"


def launched(script, *flags: str) -> subprocess.CompletedProcess:
    """``script`` run by the scripts' launcher (torchrun minus its failure wall) with torchrun ``flags``."""
    return subprocess.run([sys.executable, "-m", "fila_train.training.launch", *flags, str(script)], cwd=REPO,
                          capture_output=True, text=True, timeout=300,
                          env={**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"})


def test_the_launcher_prints_the_line_no_worker_printed(tmp_path):
    """Every rank stopped on a torch.distributed error: all are quiet, the launcher prints one of their lines
    instead of torchrun's ChildFailedError wall."""
    script = tmp_path / "worker.py"
    script.write_text("import torch.distributed as dist\nfrom fila_train.utils.errors import one_line_errors\n"
                      "with one_line_errors('fila-train train'):\n"
                      "    raise dist.DistNetworkError('the store port is already in use')\n")
    run = launched(script, "--nproc_per_node", "2", "--master_port", str(free_port()))
    assert run.returncode == REPORTED_EXIT_CODE, run.stderr[-3000:]
    lines = [line for line in run.stderr.splitlines() if "error" in line.lower()]
    assert len(lines) == 1 and lines[0].startswith("fila-train train [rank "), run.stderr  # the line, not a record
    assert "DistNetworkError: the store port is already in use" in lines[0], run.stderr
    assert "Traceback" not in run.stderr and "ChildFailedError" not in run.stderr


def test_a_line_printed_by_a_rank_torchrun_then_stopped_is_not_printed_again(tmp_path):
    """Rank 1 stops quietly on a peer error; rank 0 has printed its line but is still shutting down when torchrun
    sees rank 1's exit and stops it with SIGTERM. Its line must stay the only one."""
    script = tmp_path / "worker.py"
    script.write_text(
        "import os, time\nimport torch.distributed as dist\n"
        "from fila_train.utils.errors import ConfigError, one_line_errors\n"
        "try:\n"
        "    with one_line_errors('fila-train train'):\n"
        "        if os.environ['RANK'] == '0':\n"
        "            raise ConfigError('the line rank 0 printed')\n"
        f"        while not os.path.exists({str(tmp_path / 'printed')!r}):\n"
        "            time.sleep(0.05)\n"
        "        raise dist.DistBackendError('Connection closed by peer')\n"
        "finally:\n"
        "    if os.environ['RANK'] == '0':\n"
        f"        open({str(tmp_path / 'printed')!r}, 'w').close()\n"
        "        time.sleep(60)  # a slow teardown: torchrun's SIGTERM ends it\n")
    run = launched(script, "--nproc_per_node", "2", "--master_port", str(free_port()))
    assert run.returncode == REPORTED_EXIT_CODE, run.stderr[-3000:]
    lines = [line for line in run.stderr.splitlines() if "error" in line.lower()]
    assert lines == ["fila-train train [rank 0]: error: the line rank 0 printed"], run.stderr


@pytest.mark.parametrize("node_rank", [0, 1])
def test_node_launchers_that_never_meet_say_so_in_one_line(tmp_path, node_rank):
    """One node of 2 alone: torchrun's agents meet before any worker starts. Its rendezvous timeout ended in the
    agent's traceback; on node 1, after some 40 lines of c10d's C++ retry logs and stack frames."""
    script = tmp_path / "worker.py"
    script.write_text("raise SystemExit('a worker must not start')\n")
    port = free_port()
    run = launched(script, "--nnodes", "2", "--node_rank", str(node_rank), "--master_addr", "127.0.0.1",
                   "--master_port", str(port), "--nproc_per_node", "1", "--rdzv_conf", "timeout=3")
    assert run.returncode == REPORTED_EXIT_CODE, run.stderr[-3000:]
    lines = [line for line in run.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, run.stderr
    assert lines[0].startswith(f"[fila-train] error: the launchers of 2 node(s) did not meet at 127.0.0.1:{port} ("), lines
    assert lines[0].endswith("start the launcher on every node, with the same NNODES, MASTER_ADDR and MASTER_PORT")


def test_a_port_taken_by_another_run_is_named(tmp_path):
    script = tmp_path / "worker.py"
    script.write_text("raise SystemExit('a worker must not start')\n")
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        run = launched(script, "--nproc_per_node", "1", "--master_port", str(port))
    assert run.returncode == REPORTED_EXIT_CODE, run.stderr[-3000:]
    lines = [line for line in run.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, run.stderr
    assert lines[0].startswith(f"[fila-train] error: 127.0.0.1:{port} is taken (another run on this machine?): "
                               f"set MASTER_PORT ("), lines


@pytest.mark.parametrize("debug", [False, True])
def test_fila_train_debug_prints_the_traceback_instead_of_one_line(debug, tmp_path):
    """README: the traceback is in OUTPUT_DIR/error-rank<R>.txt; FILA_TRAIN_DEBUG=1 prints it instead."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    env.pop("FILA_TRAIN_DEBUG", None)
    if debug:
        env["FILA_TRAIN_DEBUG"] = "1"
    run = subprocess.run([sys.executable, "-m", "fila_train.cli", "train", "--conversation_template", "vicuna",
                          "--output_dir", str(tmp_path / "out")], cwd=REPO, capture_output=True, text=True,
                         timeout=120, env=env)
    assert run.returncode != 0 and "--conversation_template 'vicuna' is not one of" in run.stderr
    if debug:
        assert "Traceback (most recent call last):" in run.stderr and "fila-train train: error" not in run.stderr
    else:
        assert len(run.stderr.splitlines()) == 1 and run.returncode == REPORTED_EXIT_CODE, run.stderr
        assert (tmp_path / "out" / "error-rank0.txt").read_text().startswith("Traceback")

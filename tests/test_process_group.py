"""Ranks that never meet: the wait is announced, and the rendezvous gives up after --ddp_timeout in one line.
The launcher-level run (a rank 0 started alone) is test_distributed.py's."""
from __future__ import annotations

import socket

import pytest
import torch

from distributed_utils import free_port
from fila_train.training.process_group import meeting_ranks, start_cpu_process_group
from fila_train.utils.errors import LaunchError


def rank_of_two(monkeypatch, rank: str, port: int) -> None:
    monkeypatch.setenv("RANK", rank)
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")
    monkeypatch.setenv("MASTER_PORT", str(port))


@pytest.mark.parametrize("rank, torch_says", [
    ("0", "1/2 clients joined"),  # the store's host waits for the others
    ("1", "while trying to connect to"),  # a rank whose host (rank 0) never came
])
def test_a_rank_left_alone_announces_its_wait_then_gives_up_in_one_line(monkeypatch, caplog, rank, torch_says):
    port = free_port()
    rank_of_two(monkeypatch, rank, port)
    with caplog.at_level("WARNING", logger="fila_train.training.process_group"):
        with pytest.raises(LaunchError) as raised:
            with meeting_ranks(3, announce_after=0.5):
                start_cpu_process_group(None, 3)  # torch's real env:// rendezvous, on gloo
    assert not torch.distributed.is_initialized()
    message = str(raised.value)
    assert message.startswith(f"not all 2 processes joined at 127.0.0.1:{port} within --ddp_timeout 3 s (")
    assert torch_says in message and "\n" not in message
    assert f"rank {rank}: still waiting for the other processes (2 in all) at 127.0.0.1:{port}" in caplog.text


def test_a_port_taken_by_another_program_is_named_at_once_not_blamed_on_a_timeout(monkeypatch):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        rank_of_two(monkeypatch, "0", port)
        with pytest.raises(LaunchError) as raised:
            with meeting_ranks(600):
                start_cpu_process_group(None, 600)  # would wait 10 minutes if it were taken for a wait
    message = str(raised.value)
    assert message.startswith(f"could not start the process group at 127.0.0.1:{port} ("), message
    assert "--ddp_timeout" not in message and "\n" not in message


def test_a_single_process_run_starts_no_process_group(monkeypatch):
    for name in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(name, raising=False)
    with meeting_ranks(3, announce_after=0.5):
        start_cpu_process_group(None, 3)
    assert not torch.distributed.is_initialized()

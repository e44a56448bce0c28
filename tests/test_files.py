"""utils/files.py: atomic writes whose files others can read as the umask allows (shared clusters)."""
from __future__ import annotations

import json
import os
import stat
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from fila_train.utils.files import write_json_atomic, write_jsonl_atomic, write_safetensors_atomic

WRITERS: dict[str, Callable[[Path], None]] = {
    "json": lambda path: write_json_atomic(path, {"loss": 1.5}),
    "jsonl": lambda path: write_jsonl_atomic(path, [{"id": "a"}, {"id": "b"}]),
    "safetensors": lambda path: write_safetensors_atomic(path, {"weight": torch.ones(2, 3)}, {"format": "pt"}),
}


@pytest.fixture
def umask() -> Iterator[Callable[[int], None]]:
    """Sets the process umask for the test; the previous one is restored after it."""
    previous = os.umask(0o022)
    try:
        yield os.umask
    finally:
        os.umask(previous)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.mark.parametrize("writer", sorted(WRITERS))
@pytest.mark.parametrize("mask,expected", [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)])
def test_written_files_follow_the_umask_like_open(writer: str, mask: int, expected: int, umask,
                                                  tmp_path: Path) -> None:
    umask(mask)
    with open(tmp_path / "reference", "w"):
        pass
    assert mode(tmp_path / "reference") == expected  # what open(path, "w") gives, the rule followed
    path = tmp_path / f"out.{writer}"
    WRITERS[writer](path)
    assert mode(path) == expected, oct(mode(path))
    WRITERS[writer](path)  # replacing an existing file: the same
    assert mode(path) == expected, oct(mode(path))
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["reference", path.name])  # no temp file left


def test_the_written_content_is_complete(tmp_path: Path) -> None:
    for writer in WRITERS:
        WRITERS[writer](tmp_path / f"out.{writer}")
    assert json.loads((tmp_path / "out.json").read_text()) == {"loss": 1.5}
    assert [json.loads(line) for line in (tmp_path / "out.jsonl").read_text().splitlines()] == [{"id": "a"},
                                                                                                 {"id": "b"}]
    assert torch.equal(load_file(tmp_path / "out.safetensors")["weight"], torch.ones(2, 3))


def records_then_a_crash() -> Iterator[dict]:
    yield {"id": "new"}
    raise RuntimeError("crash while writing")


@pytest.mark.parametrize("failing_write", [
    lambda path: write_json_atomic(path, {"fine": 1, "not json": object()}),
    lambda path: write_jsonl_atomic(path, records_then_a_crash()),
    lambda path: write_safetensors_atomic(path, {"weight": torch.ones(2)}, {"not a str": 5}),
], ids=["json", "jsonl", "safetensors"])
def test_a_failing_write_leaves_the_target_and_no_temp_file(failing_write, tmp_path: Path) -> None:
    target = tmp_path / "artifact"
    target.write_text("previous\n")
    with pytest.raises(Exception):  # noqa: B017 (json, the generator and safetensors fail differently)
        failing_write(target)
    assert target.read_text() == "previous\n"
    assert [p.name for p in tmp_path.iterdir()] == ["artifact"]

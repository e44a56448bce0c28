"""Kill -9 at any moment: checkpoints are complete or absent, no worker outlives its launcher, and
``--resume_from_checkpoint latest`` reproduces the uninterrupted run (test_resume.py's reference)."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from distributed_utils import DistributedRun, run_torchrun, start_torchrun
from fila_train.training.checkpoints import (MANIFEST, STAGING_DIR, CheckpointError, missing_parts, newest_complete,
                                             publish, resolve_resume, write_manifest)
from distributed_utils import RESUME_STEPS as STEPS
from test_resume import trained_ids

POLL = 0.005  # seconds between looks at the output folder: a tiny checkpoint takes far longer to write


def processes_mentioning(text: str) -> list[int]:
    """Live processes whose command line contains ``text`` (the run's unique output folder)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            command = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            state = next(line for line in (entry / "status").read_text().splitlines() if line.startswith("State:"))
        except (OSError, StopIteration):
            continue
        if text in command and "zombie" not in state:
            found.append(int(entry.name))
    return found


def tree(folder: Path) -> dict[str, tuple[int, int]]:
    return {str(p.relative_to(folder)): (p.stat().st_size, p.stat().st_mtime_ns)
            for p in folder.rglob("*") if p.is_file()}


def kill_launcher_when(process: subprocess.Popen, ready: Callable[[], bool], timeout: float = 240) -> None:
    """SIGKILL to the launcher's whole process group as soon as ``ready()``; then no worker may survive it
    and nothing may be written after it."""
    deadline = time.monotonic() + timeout
    while not ready():
        assert process.poll() is None, f"the run ended before the kill:\n{process.stdout.read()[-3000:]}"
        assert time.monotonic() < deadline, "the moment to kill never came"
        time.sleep(POLL)
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()


def assert_no_orphans(output_dir: Path) -> None:
    deadline = time.monotonic() + 10
    while processes_mentioning(str(output_dir)):
        assert time.monotonic() < deadline, f"workers outlived the launcher: {processes_mentioning(str(output_dir))}"
        time.sleep(0.05)
    before = tree(output_dir)
    time.sleep(1.0)
    assert tree(output_dir) == before, "something was written after the kill"


def assert_resumed_exactly_after_kill(full: DistributedRun, resumed: DistributedRun, step: int) -> None:
    expected = full.summary()["losses"][step:]
    got = resumed.summary()["losses"][step:]
    assert len(got) == STEPS - step and got == pytest.approx(expected, rel=1e-5, abs=1e-6), (step, got, expected)
    for rank in (0, 1):  # the killed attempt logged its records first: the resumed ones end the file
        tail = trained_ids(resumed, rank)[-(STEPS - step) * 2:]
        assert tail == trained_ids(full, rank)[step * 2:], rank


def killed_run(uninterrupted, tmp_path: Path, ready: Callable[[Path], bool]) -> tuple[list[str], Path]:
    """The reference run's arguments (keeping at most one checkpoint, which must never be deleted before the
    next one is complete), started and killed with its launcher at the moment ``ready`` says."""
    args = uninterrupted[0] + ["--save_total_limit", "1"]
    output = tmp_path / "run"
    process = start_torchrun(args, output, attempt="_killed")
    kill_launcher_when(process, lambda: ready(output))
    assert_no_orphans(output)
    return args, output


def resume_latest(args: list[str], output: Path) -> DistributedRun:
    return run_torchrun(args + ["--resume_from_checkpoint", "latest"], output, attempt="_resumed")


def test_kill_during_a_save_then_resume_latest(uninterrupted, tmp_path):
    """Killed while checkpoint-4 is being written: no checkpoint-4 appears, checkpoint-2 is kept (with
    save_total_limit 1), and `latest` takes checkpoint-2, saying it skipped the unfinished one."""
    args, output = killed_run(uninterrupted, tmp_path, lambda out: (out / STAGING_DIR / "checkpoint-4").exists())
    assert not (output / "checkpoint-4").exists() and missing_parts(output / "checkpoint-2") == []
    assert missing_parts(output / STAGING_DIR / "checkpoint-4") == [f"{MANIFEST} (its save did not finish)"]
    with pytest.raises(CheckpointError, match=f"checkpoint-4 is incomplete: missing {MANIFEST}.*"
                                              f"the newest complete checkpoint there is {output / 'checkpoint-2'}"):
        resolve_resume(str(output / STAGING_DIR / "checkpoint-4"), output)
    resumed = resume_latest(args, output)
    log = resumed.rank_log(0)
    assert f"resuming from {output / 'checkpoint-2'}, the newest complete checkpoint" in log, log[-3000:]
    assert f"skipped incomplete checkpoint(s): {output / STAGING_DIR / 'checkpoint-4'} (missing {MANIFEST}" in log
    assert_resumed_exactly_after_kill(uninterrupted[1], resumed, 2)


def test_kill_between_saves_then_resume_latest(uninterrupted, tmp_path):
    """Killed right after checkpoint-6 (the end of epoch 1) is complete: `latest` resumes at an epoch boundary."""
    args, output = killed_run(uninterrupted, tmp_path, lambda out: (out / "checkpoint-6").exists())
    assert not (output / "checkpoint-4").exists()  # rotated out by save_total_limit 1 once 6 was complete
    resumed = resume_latest(args, output)
    assert f"resuming from {output / 'checkpoint-6'}" in resumed.rank_log(0)
    assert_resumed_exactly_after_kill(uninterrupted[1], resumed, 6)


# ------------------------------------------------------------------------------------------------
# the rules behind it, on folders made here
# ------------------------------------------------------------------------------------------------
def checkpoint(folder: Path, files: dict[str, bytes], manifest: bool = True) -> Path:
    for name, data in files.items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_bytes(data)
    if manifest:
        write_manifest(folder, step=int(folder.name.split("-")[1]), world_size=2)
    return folder


def test_a_checkpoint_missing_a_shard_or_cut_short_is_incomplete(tmp_path):
    folder = checkpoint(tmp_path / "checkpoint-4", {"global_step4/a.pt": b"x" * 10, "trainer_state.json": b"{}"})
    assert missing_parts(folder) == []
    (folder / "global_step4" / "a.pt").write_bytes(b"x" * 4)
    assert missing_parts(folder) == ["global_step4/a.pt (4 of 10 bytes)"]
    (folder / "trainer_state.json").unlink()
    assert "trainer_state.json" in missing_parts(folder)
    with pytest.raises(CheckpointError, match=r"checkpoint-4 is incomplete: missing global_step4/a\.pt.*trainer_state"):
        resolve_resume(str(folder), tmp_path)


def test_latest_takes_the_newest_complete_checkpoint_and_names_the_rest(tmp_path, caplog):
    checkpoint(tmp_path / "checkpoint-2", {"a": b"1"})
    checkpoint(tmp_path / "checkpoint-10", {"a": b"1"})  # newer by step, not by name
    checkpoint(tmp_path / "checkpoint-12", {"a": b"1"}, manifest=False)  # written by an older version, or cut
    (tmp_path / STAGING_DIR).mkdir()
    checkpoint(tmp_path / STAGING_DIR / "checkpoint-14", {"a": b"1"}, manifest=False)
    with caplog.at_level("INFO"):
        assert resolve_resume("latest", tmp_path) == str(tmp_path / "checkpoint-10")
    assert f"{tmp_path / STAGING_DIR / 'checkpoint-14'} (missing {MANIFEST}" in caplog.text
    assert f"{tmp_path / 'checkpoint-12'} (missing {MANIFEST}" in caplog.text
    with pytest.raises(CheckpointError, match=f"the newest complete checkpoint there is {tmp_path / 'checkpoint-10'}"):
        resolve_resume(str(tmp_path / STAGING_DIR / "checkpoint-14"), tmp_path)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(CheckpointError, match="no complete checkpoint in"):
        resolve_resume("latest", empty)
    assert resolve_resume("auto", empty) is None  # a first run of a requeued job starts from scratch


def test_publishing_replaces_an_earlier_checkpoint_of_the_same_step_whole(tmp_path):
    old = checkpoint(tmp_path / "checkpoint-4", {"old_only": b"1", "shared": b"old"})
    (tmp_path / STAGING_DIR).mkdir()
    new = checkpoint(tmp_path / STAGING_DIR / "checkpoint-4", {"shared": b"new"})
    publish(new, old)
    assert sorted(p.name for p in old.iterdir()) == [MANIFEST, "shared"]
    assert (old / "shared").read_bytes() == b"new" and not new.exists()
    assert newest_complete(tmp_path) == (old, [])
    assert json.loads((old / MANIFEST).read_text())["files"] == {"shared": 3}

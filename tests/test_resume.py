"""Exact resume: a run resumed from any of its checkpoints trains the uninterrupted run's losses on the
uninterrupted run's records, including checkpoints in a later epoch.

One 2-process ZeRO-3 stage-2 run carries what makes resume hard at once: several epochs (3 steps
each), ``--group_by_modality_length``, a dataloader worker, a two-source mixture, and a bad record
replaced under ``--on_bad_sample skip``. The kill tests (test_crash_safety.py) share it as their
uninterrupted reference.
"""
from __future__ import annotations

import os
import stat

import pytest

from distributed_utils import RESUME_STEPS as STEPS
from distributed_utils import run_torchrun


def trained_ids(run, rank: int) -> list[str]:
    return (run.output_dir / "sample_ids" / f"rank{rank}.txt").read_text().split()


def assert_resumed_exactly(full, resumed, checkpoint_step: int) -> None:
    """Losses after the checkpoint equal the uninterrupted run's (fp32: rel 1e-5), and every rank trains on
    the records the uninterrupted run trained on after it."""
    expected = full.summary()["losses"][checkpoint_step:]
    got = resumed.summary()["losses"][checkpoint_step:]
    assert len(got) == len(expected) == STEPS - checkpoint_step
    assert got == pytest.approx(expected, rel=1e-5, abs=1e-6), (checkpoint_step, got, expected)
    for rank in (0, 1):
        assert trained_ids(resumed, rank) == trained_ids(full, rank)[checkpoint_step * 2:], rank


# The 2-process reference run is conftest.py's `uninterrupted` fixture (shared with test_crash_safety.py).
def test_the_reference_run_spans_epochs_with_a_replaced_record(uninterrupted):
    _, full = uninterrupted
    summary = full.summary()
    assert summary["steps"] == STEPS and summary["skipped"] == {"missing_image": summary["skipped"]["missing_image"]}
    assert summary["skipped"]["missing_image"] >= 2  # the bad record is met once per epoch, on some rank
    epochs = [trained_ids(full, 0)[start:start + 6] + trained_ids(full, 1)[start:start + 6] for start in (0, 6)]
    assert epochs[0] != epochs[1]  # steps 1-3 and 4-6: each epoch has its own order
    umask = os.umask(0)
    os.umask(umask)
    private = [str(p) for p in full.output_dir.rglob("*")
               if p.is_file() and stat.S_IMODE(p.stat().st_mode) != 0o666 & ~umask]
    assert not private, f"files not readable as the umask ({umask:03o}) allows: {private}"
    assert all(f"checkpoint-{s}" in [p.name for p in full.output_dir.iterdir()] for s in (2, 4, 6, 8))


@pytest.mark.parametrize("checkpoint_step", [4], ids=["epoch1_mid"])
def test_resume_in_a_later_epoch_reproduces_the_uninterrupted_run(uninterrupted, tmp_path, checkpoint_step):
    args, full = uninterrupted
    checkpoint = full.output_dir / f"checkpoint-{checkpoint_step}"
    resumed = run_torchrun(args + ["--resume_from_checkpoint", str(checkpoint)], tmp_path / "resumed")
    assert_resumed_exactly(full, resumed, checkpoint_step)

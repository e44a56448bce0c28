"""The resume reference: one 2-process ZeRO-3 stage-2 run that carries what makes resume hard at once:
several epochs (3 steps each), ``--group_by_modality_length``, a dataloader worker, a two-source mixture,
and a bad record replaced under ``--on_bad_sample skip``. test_crash_safety.py kills and resumes it from
checkpoints in epoch 0 and mid epoch 1 and compares with it; test_distributed.py and test_lora.py resume
their own runs in the second epoch (ZeRO-2 stage 1, LoRA under ZeRO-3).
"""
from __future__ import annotations

import os
import stat

from distributed_utils import RESUME_STEPS as STEPS


def trained_ids(run, rank: int) -> list[str]:
    return (run.output_dir / "sample_ids" / f"rank{rank}.txt").read_text().split()


# The 2-process reference run is conftest.py's `uninterrupted` fixture (shared with test_crash_safety.py).
def test_the_reference_run_spans_epochs_with_a_replaced_record(uninterrupted):
    _, full = uninterrupted
    summary = full.summary()
    # The one bad record is met in every epoch, on some rank and worker: it is one skipped record.
    assert summary["steps"] == STEPS and summary["skipped"] == {"missing_image": 1}
    epochs = [trained_ids(full, 0)[start:start + 6] + trained_ids(full, 1)[start:start + 6] for start in (0, 6)]
    assert epochs[0] != epochs[1]  # steps 1-3 and 4-6: each epoch has its own order
    umask = os.umask(0)
    os.umask(umask)
    private = [str(p) for p in full.output_dir.rglob("*")
               if p.is_file() and stat.S_IMODE(p.stat().st_mode) & 0o666 != 0o666 & ~umask]  # scripts keep their x
    assert not private, f"files not readable as the umask ({umask:03o}) allows: {private}"
    assert summary["loss_last"] < summary["loss_first"], summary["losses"]
    # Only rank 0 writes; both log at INFO here, so a write by rank 1 would show in its own log.
    for marker in ("wrote connector artifact", "is complete", "Model weights saved in", "wrote "):
        assert marker in full.rank_log(0) and marker not in full.rank_log(1), marker
    assert all(f"checkpoint-{s}" in [p.name for p in full.output_dir.iterdir()] for s in (2, 4, 6, 8))

"""DataLoader workers leave no temporary folders behind, and their exit prints nothing, however they end."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from distributed_utils import build_tiny_model

# One rank of a run: its training loader's worker sends a batch (torch passes the storage as a file descriptor,
# through a listener socket in a multiprocessing temp folder), then dies the way a worker can die mid-run: the OOM
# killer's SIGKILL.
RANK = """
import multiprocessing, multiprocessing.util, os, signal, sys
import torch
from fila_train.model import FilaForConditionalGeneration
from fila_train.training.arguments import TrainingArguments
from fila_train.training.trainer import FilaTrainer

model_dir, output_dir = sys.argv[1:]
args = TrainingArguments(output_dir=output_dir, report_to="none", dataloader_num_workers=1,
                         per_device_train_batch_size=2, remove_unused_columns=False)
trainer = FilaTrainer(model=FilaForConditionalGeneration.from_pretrained(model_dir), args=args,
                      train_dataset=[{"pixel_values": torch.ones(3, 4)} for _ in range(16)])
batches = iter(trainer.get_train_dataloader())
next(batches)
# torch's SIGCHLD handler would report the death as a loader error if it ran before join() reaps the worker.
signal.signal(signal.SIGCHLD, signal.SIG_DFL)
[worker] = multiprocessing.active_children()
os.kill(worker.pid, signal.SIGKILL)
worker.join()
print("worker", worker.exitcode)
print("folder", *sorted(os.listdir(multiprocessing.util.get_temp_dir())))
"""


def test_a_training_loader_worker_killed_mid_run_leaves_no_temp_folder(tiny_assets, tmp_path: Path) -> None:
    """A worker used to make a temp folder of its own and remove it in its own exit: killed, it leaked the folder
    (/tmp filled with pymp-* folders), and stopped while sending its first batch (a rank's one-line error), its
    exit could remove the folder while the socket was being created, adding "OSError: [Errno 39] Directory not
    empty" and a traceback to the error. The workers now use their rank's folder, removed after they are joined."""
    model_dir = tmp_path / "model"
    build_tiny_model(tiny_assets, hybrid=False, fuser=False).save_pretrained(model_dir)
    temp = tmp_path / "tmp"
    temp.mkdir()
    run = subprocess.run([sys.executable, "-c", RANK, str(model_dir), str(tmp_path / "out")], capture_output=True,
                         text=True, timeout=300, env={**os.environ, "TMPDIR": str(temp), "HF_HUB_OFFLINE": "1"})
    assert run.returncode == 0 and "worker -9" in run.stdout, run.stderr[-3000:]
    # The batch came through the worker's listener socket, in the rank's folder.
    assert "folder listener-" in run.stdout, run.stdout
    assert "Traceback" not in run.stderr, run.stderr[-3000:]
    assert not list(temp.iterdir()), [str(path.relative_to(temp)) for path in temp.rglob("*")]

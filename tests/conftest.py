"""Shared fixtures: tiny demo data and models built once per session, and a torchrun runner."""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "offline")


@dataclass(frozen=True)
class TinyAssets:
    llm: Path
    vision_tower: Path
    image_folder: Path
    stage1_data: Path
    stage2_data: Path


@pytest.fixture(scope="session")
def tiny_assets(tmp_path_factory) -> TinyAssets:
    from fila_train.demo.synthetic_docs import make_synthetic_dataset
    from fila_train.demo.tiny_models import save_tiny_clip, save_tiny_llm
    from fila_train.demo.tokenizer import build_demo_tokenizer

    root = tmp_path_factory.mktemp("tiny_assets")
    data = make_synthetic_dataset(root / "data", num_images=24, num_eval=2)
    tokenizer = build_demo_tokenizer([data.corpus_path], root / "tokenizer", vocab_size=512)
    return TinyAssets(llm=save_tiny_llm(root / "llm", tokenizer, hidden_size=64),
                      vision_tower=save_tiny_clip(root / "clip", hidden_size=32, image_size=28),
                      image_folder=data.image_dir, stage1_data=data.stage1_path, stage2_data=data.stage2_path)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class DistributedRun:
    output_dir: Path
    log_dir: Path
    returncode: int
    output: str

    def summary(self) -> dict:
        return json.loads((self.output_dir / "train_summary.json").read_text())

    def rank_log(self, rank: int) -> str:
        """Everything rank ``rank`` printed (torchrun --redirects keeps ranks apart)."""
        files = sorted(self.log_dir.rglob(f"attempt_0/{rank}/std*.log"))
        return "".join(f.read_text() for f in files)


def run_torchrun(train_args: list[str], output_dir: Path, nproc: int = 2, timeout: int = 300) -> DistributedRun:
    """``torchrun --nproc_per_node N -m fila_train.cli train ...`` on CPU, ranks logged separately."""
    log_dir = output_dir.parent / f"{output_dir.name}_logs"
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1",
               TORCH_EXTENSIONS_DIR=os.environ.get(
                   "TORCH_EXTENSIONS_DIR", str(Path.home() / ".cache/fila_train/torch_extensions")))
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(nproc),
               "--master_port", str(free_port()), "--log-dir", str(log_dir), "--redirects", "3",
               "-m", "fila_train.cli", "train", "--output_dir", str(output_dir), *train_args]
    result = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)
    run = DistributedRun(output_dir, log_dir, result.returncode, result.stdout + result.stderr)
    if result.returncode != 0:
        logs = "\n".join(f"--- rank {r} ---\n{run.rank_log(r)[-3000:]}" for r in range(nproc))
        raise AssertionError(f"torchrun failed ({result.returncode}):\n{run.output[-3000:]}\n{logs}")
    return run

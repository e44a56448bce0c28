"""Helpers for the FILA / MMFuser training tests: tiny assets built once, tiny composites, torchrun runs.

The assets are cached in this module (not a conftest fixture) so every test module that asks
for them shares one build: tiny synthetic documents, a demo tokenizer, a tiny LLM, a tiny CLIP
(tile 28 = 2x2 patches, 6 layers) and a tiny ConvNeXt saved like an OpenCLIP checkpoint folder.
"""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from fila_train.demo.tiny_models import TinyFila, as_cli

REPO = Path(__file__).resolve().parents[1]
# The real Llama-2 SentencePiece tokenizer, beside the checkout (no pad token, an unk token).
LLAMA2_DIR = REPO.parent / "shared" / "assets" / "llama2-tokenizer"
# 2x2, 1x2 and 2x1 tiles of 2x2 patches (+ global view): ranks draw different canvases.
TINY = TinyFila(tile=28, clip_width=32, canvases=((56, 56), (28, 56), (56, 28)))
ALIGNED_PREFIXES = ("connector.", "vision_tower.cvfm.")  # what a stage-1 artifact holds


@dataclass(frozen=True)
class FilaAssets:
    root: Path
    llm: Path
    clip: Path
    convnext: Path
    image_folder: Path
    stage1_data: Path
    stage2_data: Path

    def model_flags(self, hybrid: bool, fuser: bool, convnext: Path | None = None) -> dict[str, str]:
        """``fila-train train`` model flags (names without ``--``): this tiny LLM + CLIP, with the
        FILA encoder (ConvNeXt from ``convnext``, default the shared one) and/or MMFuser."""
        flags = {"model_name_or_path": str(self.llm), "vision_tower": str(self.clip)}
        if hybrid:
            flags |= {"vision_encoder": "fila_hybrid", **TINY.hybrid_flags(convnext or self.convnext)}
        if fuser:
            flags |= {"connector_type": "mmfuser", **TINY.fuser_flags()}
        return flags


_ASSETS: dict[str, object] = {}  # the session's assets and shared runs


def fila_assets(tmp_path_factory) -> FilaAssets:
    """Build (once per session) the tiny data and models."""
    if "assets" not in _ASSETS:
        from fila_train.demo.synthetic_docs import make_synthetic_dataset
        from fila_train.demo.tiny_models import save_tiny_llm
        from fila_train.demo.tokenizer import build_demo_tokenizer

        root = tmp_path_factory.mktemp("fila_assets")
        data = make_synthetic_dataset(root / "data", num_images=24, num_eval=2)
        tokenizer = build_demo_tokenizer([data.corpus_path], root / "tokenizer", vocab_size=512)
        _ASSETS["assets"] = FilaAssets(
            root=root, llm=save_tiny_llm(root / "llm", tokenizer, hidden_size=64),
            clip=TINY.save_clip(root / "clip"), convnext=TINY.save_convnext(root / "convnext"),
            image_folder=data.image_dir, stage1_data=data.stage1_path, stage2_data=data.stage2_path)
    return _ASSETS["assets"]


@pytest.fixture(scope="session")
def assets(tmp_path_factory) -> FilaAssets:
    """The tiny assets as a fixture; test modules import it by name."""
    return fila_assets(tmp_path_factory)


# ---------------------------------------------------------------- in-process composites


def build_tiny_model(assets: FilaAssets, hybrid: bool, fuser: bool, convnext: Path | None = None,
                     extra: dict[str, str] | None = None):
    """The composite exactly as ``fila-train train`` builds it from these flags."""
    from transformers import HfArgumentParser

    from fila_train.model.builder import build_model
    from fila_train.training.arguments import ModelArguments

    flags = assets.model_flags(hybrid, fuser, convnext) | (extra or {})
    (args,) = HfArgumentParser(ModelArguments).parse_args_into_dataclasses(args=as_cli(flags))
    torch.manual_seed(0)
    return build_model(args.model_name_or_path, args.vision_tower, vision_encoder=args.vision_encoder,
                       vision_options=args.vision_options(), connector_type=args.connector_type,
                       connector_options=args.connector_options())


def with_mlp_connector(assets: FilaAssets, model, hybrid: bool):
    """The same composite with the plain mlp2x_gelu connector, holding ``model``'s projector weights."""
    twin = build_tiny_model(assets, hybrid=hybrid, fuser=False)
    twin.load_state_dict({k: v for k, v in model.state_dict().items() if k.startswith("connector.projector.")},
                         strict=False)
    return twin.eval()


def tiny_batch(model, assets: FilaAssets, size: int = 4, stage2: bool = False) -> dict:
    """A real collated batch (dataset + collator of the training path) for ``model``."""
    from fila_train.data.collator import ConversationCollator
    from fila_train.data.dataset import ConversationDataset, DatasetOptions
    from fila_train.processing.chat_templates import get_template
    from fila_train.processing.tokenization import ConversationTokenizer
    from fila_train.model.builder import load_tokenizer

    tokenizer = load_tokenizer(str(assets.llm), model, 512)
    template = get_template("vicuna_v1" if stage2 else "plain")
    processor = model.image_processor()
    dataset = ConversationDataset(assets.stage2_data if stage2 else assets.stage1_data, assets.image_folder,
                                  ConversationTokenizer(tokenizer, template, model.config.image_token_id),
                                  processor, DatasetOptions(512))
    batch = ConversationCollator(tokenizer.pad_token_id, processor)([dataset[i] for i in range(size)])
    batch.pop("sample_ids")
    return batch


def aligned_state(model) -> dict[str, torch.Tensor]:
    """Copies of the stage-1 parts' parameters (connector incl. fuser, CVFM)."""
    return {name: p.detach().clone() for name, p in model.named_parameters() if name.startswith(ALIGNED_PREFIXES)}


def train_steps(model, batch: dict, parts: list[str], steps: int, lr: float = 1e-2) -> dict[str, torch.Tensor | None]:
    """``steps`` real optimizer steps on ``parts`` (the rest frozen as the trainer does); the last
    step's gradients by parameter name (None where no gradient arrived)."""
    from fila_train.training.parts import apply_tune_parts

    apply_tune_parts(model, parts)
    model.train()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr)
    for _ in range(steps):
        optimizer.zero_grad(set_to_none=True)
        model(**batch).loss.backward()
        grads = {name: None if p.grad is None else p.grad.clone() for name, p in model.named_parameters()}
        optimizer.step()
    return grads


# ---------------------------------------------------------------- 2-process runs


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class DistributedRun:
    output_dir: Path
    log_dir: Path
    output: str

    def summary(self) -> dict:
        return json.loads((self.output_dir / "train_summary.json").read_text())

    def rank_log(self, rank: int) -> str:
        """Everything rank ``rank`` printed (torchrun --redirects keeps ranks apart)."""
        return "".join(f.read_text() for f in sorted(self.log_dir.rglob(f"attempt_0/{rank}/std*.log")))


def log_dir_of(output_dir: Path, attempt: str = "") -> Path:
    return output_dir.parent / f"{output_dir.name}{attempt}_logs"


def rank_environment() -> dict[str, str]:
    return dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1", HF_HUB_OFFLINE="1", WANDB_MODE="offline",
                TORCH_EXTENSIONS_DIR=os.environ.get("TORCH_EXTENSIONS_DIR",
                                                    str(Path.home() / ".cache/fila_train/torch_extensions")))


def start_torchrun(train_args: list[str], output_dir: Path, nproc: int = 2, attempt: str = "") -> subprocess.Popen:
    """``torchrun --nproc_per_node N -m fila_train.cli train ...`` on CPU (gloo), ranks logged apart, started
    in its own process group (the launcher's: torchrun puts each worker in a session of its own)."""
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(nproc),
               "--master_port", str(free_port()), "--log-dir", str(log_dir_of(output_dir, attempt)),
               "--redirects", "3", "-m", "fila_train.cli", "train", "--output_dir", str(output_dir), *train_args]
    return subprocess.Popen(command, cwd=REPO, env=rank_environment(), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)


def start_ranks(train_args: list[str], output_dir: Path, nproc: int, log_dir: Path) -> list[subprocess.Popen]:
    """The ranks of ``fila-train train`` started the way torchrun starts its workers (RANK, LOCAL_RANK,
    WORLD_SIZE, MASTER_ADDR/PORT in the environment; env:// rendezvous on rank 0's store), minus its agent:
    the agent's own torch import costs ~5 s a run. Tests about launching use start_torchrun or the scripts.
    All ranks share one new process group, so a hung run is killed whole."""
    port, processes = free_port(), []
    for rank in range(nproc):
        folder = log_dir / "ranks" / "attempt_0" / str(rank)  # torchrun --redirects' layout
        folder.mkdir(parents=True, exist_ok=True)
        env = rank_environment() | {"RANK": str(rank), "LOCAL_RANK": str(rank), "WORLD_SIZE": str(nproc),
                                    "LOCAL_WORLD_SIZE": str(nproc), "MASTER_ADDR": "127.0.0.1",
                                    "MASTER_PORT": str(port)}
        with open(folder / "stdout.log", "w") as stdout, open(folder / "stderr.log", "w") as stderr:
            processes.append(subprocess.Popen(
                [sys.executable, "-m", "fila_train.cli", "train", "--output_dir", str(output_dir), *train_args],
                cwd=REPO, env=env, stdout=stdout, stderr=stderr,
                process_group=0 if rank == 0 else processes[0].pid))
    return processes


def run_distributed(train_args: list[str], output_dir: Path, nproc: int = 2, timeout: int = 300,
                    attempt: str = "") -> DistributedRun:
    """A 2-process (gloo) run to its end; an AssertionError with every rank's log if a rank fails (the
    others are then stopped, as torchrun would)."""
    log_dir = log_dir_of(output_dir, attempt)
    processes = start_ranks(train_args, output_dir, nproc, log_dir)
    deadline = time.monotonic() + timeout
    failure: str | None = None
    while failure is None and any(p.poll() is None for p in processes):
        failed = [(rank, p.returncode) for rank, p in enumerate(processes) if p.returncode not in (None, 0)]
        if failed:
            failure = f"rank {failed[0][0]} exited with {failed[0][1]}"
        elif time.monotonic() > deadline:
            failure = f"timeout after {timeout} s"
        else:
            time.sleep(0.2)
    if failure is None:
        failed = [(rank, p.returncode) for rank, p in enumerate(processes) if p.returncode != 0]
        failure = f"rank {failed[0][0]} exited with {failed[0][1]}" if failed else None
    if any(p.poll() is None for p in processes):
        os.killpg(processes[0].pid, signal.SIGKILL)
        for process in processes:
            process.wait()
    run = DistributedRun(output_dir, log_dir, "")
    if failure is not None:
        logs = "\n".join(f"--- rank {r} ---\n{run.rank_log(r)[-3000:]}" for r in range(nproc))
        raise AssertionError(f"distributed run failed ({failure}):\n{logs}")
    return run


def train_args(assets: FilaAssets, *, hybrid: bool, fuser: bool, stage: int, zero: int, steps: int = 6) -> list[str]:
    """A few-step stage-1 (captions, plain) or stage-2 (instructions, vicuna_v1, + LLM) run."""
    parts = ["connector"] + ["cvfm"] * hybrid + ["fuser"] * fuser + ["llm"] * (stage == 2)
    flags = assets.model_flags(hybrid, fuser) | {
        "data_path": str(assets.stage1_data if stage == 1 else assets.stage2_data),
        "conversation_template": "plain" if stage == 1 else "vicuna_v1",
        "image_folder": str(assets.image_folder), "tune_parts": ",".join(parts),
        "learning_rate": "1e-2" if stage == 1 else "3e-3", "deepspeed": f"zero_configs/zero{zero}.json",
        "per_device_train_batch_size": "2", "max_steps": str(steps), "logging_steps": "1",
        "model_max_length": "512", "save_strategy": "no", "seed": "7"}
    return as_cli(flags)


# ---------------------------------------------------------------- the shared training matrix
# One set of 2-process runs for the whole session: the distributed, FILA, MMFuser, LoRA and export tests
# read the same runs (a run costs ~15 s, nearly all of it process start-up).

SHARED_STEPS = 6
SHARED_CHECKPOINT = 3  # and at SHARED_STEPS: 8 records, 2 steps an epoch, so step 3 lies in the second epoch
SHARED_STEPS_PER_EPOCH = 2


@dataclass(frozen=True)
class RunSpec:
    hybrid: bool
    fuser: bool
    stage: int
    zero: int
    lora_r: int = 0
    starts_from: str | None = None  # the run whose connector.safetensors this one loads (--pretrained_connector)
    learning_rates: tuple[str, ...] = ()  # flags over train_args' defaults


SHARED_RUNS = {
    "baseline_stage1_zero2": RunSpec(hybrid=False, fuser=False, stage=1, zero=2),
    "baseline_zero2": RunSpec(hybrid=False, fuser=False, stage=2, zero=2, starts_from="baseline_stage1_zero2",
                              learning_rates=("--learning_rate", "1e-2", "--connector_lr", "1e-2")),
    "baseline_zero3_lora": RunSpec(hybrid=False, fuser=False, stage=2, zero=3, lora_r=4,
                                   learning_rates=("--learning_rate", "2e-2", "--connector_lr", "2e-3")),
    "fila_mmfuser_zero2": RunSpec(hybrid=True, fuser=True, stage=1, zero=2),
    "fila_mmfuser_zero3": RunSpec(hybrid=True, fuser=True, stage=2, zero=3, starts_from="fila_mmfuser_zero2"),
    "mmfuser_zero2": RunSpec(hybrid=False, fuser=True, stage=2, zero=2),
    "mmfuser_zero3": RunSpec(hybrid=False, fuser=True, stage=1, zero=3),
}


@dataclass
class SharedRun:
    spec: RunSpec
    args: list[str]  # what it was started with: a resume test adds --resume_from_checkpoint
    run: DistributedRun

    @property
    def output_dir(self) -> Path:
        return self.run.output_dir


class SharedRuns:
    """The SHARED_RUNS, each trained on first use (a run that starts from another trains that one first)."""

    def __init__(self, assets: FilaAssets, tmp_path_factory):
        self.assets, self.tmp_path_factory, self.done = assets, tmp_path_factory, {}

    def __getitem__(self, name: str) -> SharedRun:
        if name not in self.done:
            spec = SHARED_RUNS[name]
            folder = self.tmp_path_factory.mktemp(name)
            data = first_records(self.assets.stage1_data if spec.stage == 1 else self.assets.stage2_data, folder)
            args = train_args(self.assets, hybrid=spec.hybrid, fuser=spec.fuser, stage=spec.stage, zero=spec.zero,
                              steps=SHARED_STEPS) + [
                "--data_path", str(data), "--save_strategy", "steps", "--save_steps", str(SHARED_CHECKPOINT),
                "--report_to", "none", "--log_level", "info", "--log_level_replica", "info", "--log_sample_ids",
                *spec.learning_rates]
            if spec.lora_r:
                args += ["--lora_r", str(spec.lora_r)]
            if spec.starts_from:  # relative to the run's working directory, as a script passes it
                artifact = self[spec.starts_from].output_dir / "connector.safetensors"
                args += ["--pretrained_connector", os.path.relpath(artifact, REPO)]
            self.done[name] = SharedRun(spec, args, run_distributed(args, folder / "run"))
        return self.done[name]


def shared_runs(tmp_path_factory) -> SharedRuns:
    if "runs" not in _ASSETS:
        _ASSETS["runs"] = SharedRuns(fila_assets(tmp_path_factory), tmp_path_factory)
    return _ASSETS["runs"]


@pytest.fixture(scope="session")
def runs(tmp_path_factory) -> SharedRuns:
    """The shared training matrix as a fixture; test modules import it by name."""
    return shared_runs(tmp_path_factory)


def distributed_train(args: list[str], output_dir: Path, nproc: int = 2, timeout: int = 240) -> dict:
    """A run's train_summary.json, with the log of all ranks under "log"."""
    run = run_distributed(["--report_to", "none", *args], output_dir, nproc, timeout)
    return run.summary() | {"log": "".join(run.rank_log(r) for r in range(nproc))}


def assert_loss_falls(summary: dict) -> None:
    losses = summary["losses"]
    half = len(losses) // 2
    assert summary["loss_last"] < summary["loss_first"], losses
    assert sum(losses[half:]) / (len(losses) - half) < sum(losses[:half]) / half, losses


def first_records(source: Path, folder: Path, count: int = 8) -> Path:
    """The first ``count`` records of ``source``: with 2 ranks x 2 samples, 8 records make 2 steps an
    epoch, so a resume test's checkpoint at step 3 lies inside the second epoch."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{source.stem}_first{count}.jsonl"
    path.write_text("".join(line + "\n" for line in source.read_text().splitlines()[:count]))
    return path


# ---------------------------------------------------------------- the resume / crash-safety reference run

RESUME_STEPS = 8  # 12 positions / (2 ranks x 2) = 3 steps per epoch: epochs 0, 1 and part of 2
RESUME_SAVE_STEPS = 2


def write_resume_mixture(assets: FilaAssets, folder: Path) -> Path:
    """A two-source mixture of 12 positions: 9 image records plus one whose image is missing, and 2
    text-only records; with 2 ranks x 2 samples that is 3 steps per epoch."""
    records = [json.loads(line) for line in assets.stage2_data.read_text().splitlines()]
    images = [r for r in records if "image" in r][:9]
    broken = dict(images[0], id="broken-image", image="no/such/image.png")
    texts = [r for r in records if "image" not in r][:2]
    (folder / "images.jsonl").write_text("".join(json.dumps(r) + "\n" for r in images[:4] + [broken] + images[4:]))
    (folder / "text.jsonl").write_text("".join(json.dumps(r) + "\n" for r in texts))
    mixture = folder / "mixture.yaml"
    mixture.write_text(f"seed: 3\nsources:\n"
                       f"  - name: documents\n    annotations: images.jsonl\n    image_root: {assets.image_folder}\n"
                       f"  - name: text\n    annotations: text.jsonl\n")
    return mixture


def resume_reference_args(assets: FilaAssets, mixture: Path, steps: int, save_steps: int) -> list[str]:
    """Stage 2 under ZeRO-3 with modality grouping, a dataloader worker and bad records skipped."""
    flags = assets.model_flags(hybrid=False, fuser=False) | {
        "data_path": str(mixture), "conversation_template": "vicuna_v1", "tune_parts": "connector,llm",
        "learning_rate": "3e-3", "connector_lr": "1e-3", "deepspeed": "zero_configs/zero3.json",
        "per_device_train_batch_size": "2", "max_steps": str(steps), "logging_steps": "1", "save_strategy": "steps", "save_steps": str(save_steps),
        "model_max_length": "512", "seed": "8", "group_by_modality_length": "True",
        "dataloader_num_workers": "1", "on_bad_sample": "skip", "log_sample_ids": "True",
        "length_cache_dir": str(mixture.parent / "lengths"), "report_to": "none",
        "log_level_replica": "info"}  # rank 1 logs what it does: it must write nothing
    return as_cli(flags)


def written_later(path: Path) -> None:
    """Date ``path``'s last write a second later: a test's rewrite can fall in the same tick of the file system's
    clock as the first write (a few ms; a second on some), as a rewrite hours into a run does not."""
    status = path.stat()
    os.utime(path, ns=(status.st_atime_ns, status.st_mtime_ns + 1_000_000_000))

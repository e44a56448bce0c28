"""2-process DeepSpeed runs on CPU (gloo): stage 1 -> artifact -> stage 2, ZeRO-2/3, resume."""
from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file

from distributed_utils import run_torchrun

STEPS = 6
CHECKPOINT_STEP = 3


def common_args(assets, zero: int) -> list[str]:
    return ["--model_name_or_path", str(assets.llm), "--vision_tower", str(assets.clip),
            "--image_folder", str(assets.image_folder), "--deepspeed", f"zero_configs/zero{zero}.json",
            "--per_device_train_batch_size", "2", "--max_steps", str(STEPS), "--logging_steps", "1",
            "--save_strategy", "steps", "--save_steps", str(CHECKPOINT_STEP), "--report_to", "none",
            "--seed", "7", "--log_level", "info", "--log_level_replica", "info", "--log_sample_ids",
            "--model_max_length", "512"]


def stage2_args(assets, zero: int, connector: str) -> list[str]:
    return common_args(assets, zero) + [
        "--data_path", str(assets.stage2_data), "--conversation_template", "vicuna_v1",
        "--pretrained_connector", connector, "--tune_parts", "connector,llm",
        "--learning_rate", "1e-2", "--connector_lr", "1e-2"]


@pytest.fixture(scope="module")
def stage1(tiny_assets, tmp_path_factory):
    output = tmp_path_factory.mktemp("stage1") / "run"
    args = common_args(tiny_assets, 2) + [
        "--data_path", str(tiny_assets.stage1_data), "--conversation_template", "plain",
        "--tune_parts", "connector", "--learning_rate", "1e-2"]
    return run_torchrun(args, output)


@pytest.fixture(scope="module", params=[2, 3], ids=["zero2", "zero3"])
def stage2(request, tiny_assets, stage1, tmp_path_factory):
    output = tmp_path_factory.mktemp(f"stage2_zero{request.param}") / "run"
    args = stage2_args(tiny_assets, request.param, str(stage1.output_dir / "connector.safetensors"))
    return request.param, args, run_torchrun(args, output)


def test_stage1_trains_only_the_connector_and_writes_the_artifact(stage1):
    summary = stage1.summary()
    assert summary["steps"] == STEPS and summary["tune_parts"] == ["connector"]
    assert summary["loss_last"] < summary["loss_first"]
    artifact = load_file(stage1.output_dir / "connector.safetensors")
    assert artifact and all(name.startswith("connector.") for name in artifact)
    # A resumable checkpoint carries its own artifact too.
    assert (stage1.output_dir / f"checkpoint-{CHECKPOINT_STEP}" / "connector.safetensors").is_file()


def test_stage1_artifact_loads_bit_exact_into_stage2_model(stage1, tiny_assets):
    from fila_train.model import FilaForConditionalGeneration
    from fila_train.model.builder import build_model
    from fila_train.training.connector_artifact import load_connector_artifact

    artifact = load_file(stage1.output_dir / "connector.safetensors")
    model = build_model(str(tiny_assets.llm), str(tiny_assets.clip))
    before = {n: p.detach().clone() for n, p in model.named_parameters() if n.startswith("connector.")}
    load_connector_artifact(model, stage1.output_dir / "connector.safetensors")
    trained = FilaForConditionalGeneration.from_pretrained(stage1.output_dir)
    trained_params = dict(trained.named_parameters())
    for name, parameter in model.named_parameters():
        if name.startswith("connector."):
            assert torch.equal(parameter, artifact[name]), name
            assert torch.equal(parameter, trained_params[name]), name
            assert not torch.equal(parameter, before[name]), f"{name} did not change in stage 1"


def test_stage2_loss_falls_and_ranks_see_different_samples(stage2):
    zero, _, run = stage2
    summary = run.summary()
    assert summary["steps"] == STEPS
    assert summary["loss_last"] < 0.9 * summary["loss_first"], summary["losses"]
    ids = [(run.output_dir / "sample_ids" / f"rank{r}.txt").read_text().split() for r in (0, 1)]
    assert len(ids[0]) == len(ids[1]) == STEPS * 2
    assert not set(ids[0]) & set(ids[1]), "both ranks trained on the same records"
    assert "loaded connector artifact" in run.rank_log(0)


def test_only_rank0_writes(stage2):
    _, _, run = stage2
    rank0, rank1 = run.rank_log(0), run.rank_log(1)
    # Both ranks log at INFO here, so a write by rank 1 would show up in its own log.
    for marker in ("wrote connector artifact", "Model weights saved in", "wrote "):
        assert marker in rank0, marker
        assert marker not in rank1, f"rank 1 wrote: {marker}"
    assert (run.output_dir / "model.safetensors").is_file() or (run.output_dir / "model.safetensors.index.json").is_file()


def test_resume_reproduces_the_uninterrupted_losses(stage2, tmp_path):
    zero, args, full = stage2
    checkpoint = full.output_dir / f"checkpoint-{CHECKPOINT_STEP}"
    resumed = run_torchrun(args + ["--resume_from_checkpoint", str(checkpoint)], tmp_path / "resumed")
    expected = full.summary()["losses"][CHECKPOINT_STEP:CHECKPOINT_STEP + 3]
    got = resumed.summary()["losses"][CHECKPOINT_STEP:CHECKPOINT_STEP + 3]
    assert len(got) == 3
    assert got == pytest.approx(expected, rel=1e-5, abs=1e-6)
    # The data position is restored too: the resumed run trains on the records the full run
    # trained on after the checkpoint, not on the epoch's first batches again.
    full_ids = (full.output_dir / "sample_ids" / "rank0.txt").read_text().split()
    resumed_ids = (resumed.output_dir / "sample_ids" / "rank0.txt").read_text().split()
    assert resumed_ids == full_ids[CHECKPOINT_STEP * 2:]

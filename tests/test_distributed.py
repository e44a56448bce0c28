"""2-process DeepSpeed runs on CPU (gloo): stage 1 -> artifact -> stage 2, ZeRO-2/3, resume.

The runs read 8 records, 2 steps an epoch: stage 1's checkpoint at step 3 lies in the second epoch, where
the resumed run must reshuffle as the uninterrupted one did (the default, ungrouped sampler here). Stage 2
resume under ZeRO-3 is test_crash_safety.py's (grouped sampler, killed runs)."""
from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys

import pytest
import torch
from distributed_utils import (  # noqa: F401  (runs is a fixture)
    REPO,
    SHARED_CHECKPOINT as CHECKPOINT_STEP,
    SHARED_STEPS as STEPS,
    SHARED_STEPS_PER_EPOCH as STEPS_PER_EPOCH,
    free_port,
    rank_environment,
    run_distributed,
    runs,
    train_args,
)
from fila_train.utils.errors import REPORTED_EXIT_CODE, SILENT_EXIT_CODE
from safetensors.torch import load_file


@pytest.fixture(scope="module")
def stage1(runs):
    """The baseline's stage 1 of the shared runs: its arguments and the run."""
    return runs["baseline_stage1_zero2"].args, runs["baseline_stage1_zero2"].run


# ZeRO-3 stage 2 (training, only rank 0 writing, resume) is the resume reference run's (test_resume.py).
@pytest.fixture(scope="module")
def stage2(runs):
    """The baseline's stage 2 (ZeRO-2) of the shared runs, started from stage 1's connector artifact."""
    return runs["baseline_zero2"].run


def assert_resumed_exactly(full, resumed) -> None:
    """The losses after the checkpoint equal the uninterrupted run's, and the data position is restored:
    the resumed run trains on the records the full run trained on after the checkpoint."""
    expected = full.summary()["losses"][CHECKPOINT_STEP:]
    got = resumed.summary()["losses"][CHECKPOINT_STEP:]
    assert len(got) == STEPS - CHECKPOINT_STEP
    assert got == pytest.approx(expected, rel=1e-5, abs=1e-6)
    for rank in (0, 1):
        full_ids = (full.output_dir / "sample_ids" / f"rank{rank}.txt").read_text().split()
        resumed_ids = (resumed.output_dir / "sample_ids" / f"rank{rank}.txt").read_text().split()
        assert resumed_ids == full_ids[CHECKPOINT_STEP * 2:], rank


def test_stage1_trains_only_the_connector_and_writes_the_artifact(stage1):
    _, stage1 = stage1
    summary = stage1.summary()
    assert summary["steps"] == STEPS and summary["tune_parts"] == ["connector"]
    assert summary["loss_last"] < summary["loss_first"]
    artifact = load_file(stage1.output_dir / "connector.safetensors")
    assert artifact and all(name.startswith("connector.") for name in artifact)
    # A resumable checkpoint carries its own artifact too.
    assert (stage1.output_dir / f"checkpoint-{CHECKPOINT_STEP}" / "connector.safetensors").is_file()


def test_stage1_artifact_loads_bit_exact_into_stage2_model(stage1, tiny_assets):
    _, stage1 = stage1
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
    run = stage2
    summary = run.summary()
    assert summary["steps"] == STEPS
    assert summary["loss_last"] < 0.9 * summary["loss_first"], summary["losses"]
    ids = [(run.output_dir / "sample_ids" / f"rank{r}.txt").read_text().split() for r in (0, 1)]
    assert len(ids[0]) == len(ids[1]) == STEPS * 2
    per_epoch = STEPS_PER_EPOCH * 2
    epochs = [[ids[r][start:start + per_epoch] for r in (0, 1)] for start in range(0, STEPS * 2, per_epoch)]
    for first, second in epochs:
        assert not set(first) & set(second), "both ranks trained on the same records in one epoch"
    assert epochs[0] != epochs[1], "the second epoch repeated the first one's order"
    assert "loaded connector artifact" in run.rank_log(0) and "no --pretrained_connector" not in run.rank_log(0)


def test_only_rank0_writes(stage2):
    run = stage2
    rank0, rank1 = run.rank_log(0), run.rank_log(1)
    # Both ranks log at INFO here, so a write by rank 1 would show up in its own log.
    for marker in ("wrote connector artifact", "Model weights saved in", "wrote "):
        assert marker in rank0, marker
        assert marker not in rank1, f"rank 1 wrote: {marker}"
    assert (run.output_dir / "model.safetensors").is_file() or (run.output_dir / "model.safetensors.index.json").is_file()


def test_stage1_resume_in_the_second_epoch_reproduces_the_uninterrupted_run(stage1, tmp_path):
    """Stage 1 (the connector alone trains; ZeRO-2)."""
    args, full = stage1
    checkpoint = full.output_dir / f"checkpoint-{CHECKPOINT_STEP}"
    assert_resumed_exactly(full, run_distributed(args + ["--resume_from_checkpoint", str(checkpoint)],
                                              tmp_path / "resumed"))


def test_stage1_resume_with_the_global_batch_split_another_way_reproduces_the_run(stage1, tmp_path):
    """2 ranks x 1 sample x 2 accumulation steps continue a run of 2 ranks x 2 samples exactly (the way out of
    memory: halve the batch, double the accumulation)."""
    args, full = stage1
    checkpoint = full.output_dir / f"checkpoint-{CHECKPOINT_STEP}"
    resumed = run_distributed(args + ["--per_device_train_batch_size", "1", "--gradient_accumulation_steps", "2",
                                      "--resume_from_checkpoint", str(checkpoint)], tmp_path / "resumed")
    expected = full.summary()["losses"][CHECKPOINT_STEP:]
    assert resumed.summary()["losses"][CHECKPOINT_STEP:] == pytest.approx(expected, rel=1e-5, abs=1e-6)

    def records_per_step(run, first_step: int) -> list[set[str]]:
        ids = [(run.output_dir / "sample_ids" / f"rank{rank}.txt").read_text().split() for rank in (0, 1)]
        return [set(ids[0][2 * step:2 * step + 2] + ids[1][2 * step:2 * step + 2])
                for step in range(first_step, len(ids[0]) // 2)]

    # Each step trains on the records the full run's step did (the batches go to the ranks in another order).
    assert records_per_step(resumed, 0) == records_per_step(full, CHECKPOINT_STEP)


@pytest.mark.parametrize("nproc, batch, message", [
    # DeepSpeed refuses it itself, but only once the model is built, with a traceback from every rank.
    (1, 2, "was written by 2 process(es) and this run has 1: ZeRO partitions the optimizer state per process"),
    # Nothing refused it: the run went on from the wrong place in the data.
    (2, 1, "was trained with a global batch of 4 (2 process(es) x 2 per process x 1 accumulation step(s)), this "
           "run's is 2 (2 process(es) x 1 per process x 1 accumulation step(s)): steps count global batches, so the "
           "run would resume at the wrong place in the data; with this layout, --gradient_accumulation_steps 2 "
           "keeps it"),
])
def test_a_resume_that_cannot_continue_the_run_is_one_line_before_the_model_is_built(stage1, tmp_path, nproc, batch,
                                                                                      message):
    args, full = stage1
    checkpoint = full.output_dir / f"checkpoint-{CHECKPOINT_STEP}"
    output = tmp_path / "resumed"
    error = refused_resume(checkpoint, output, nproc, [*args, "--per_device_train_batch_size", str(batch)])
    assert f"{checkpoint} {message}" in error, error
    assert not (output / "run_args.json").exists()  # written once the model is built


def test_a_resume_with_other_rates_schedule_length_or_parts_is_one_line_before_the_model_is_built(stage1, tmp_path):
    """transformers reloads the optimizer, the schedule and the trainer state with the checkpoint's values. Before,
    a resume with --learning_rate 1e-3 logged "lr=0.001" and trained on at the checkpoint's rate, a longer
    --max_steps trained its first new step at rate 0, and other --tune_parts were a traceback once the model
    had loaded."""
    args, full = stage1
    checkpoint = full.output_dir / f"checkpoint-{CHECKPOINT_STEP}"
    error = refused_resume(checkpoint, tmp_path / "resumed", 2, [
        *args, "--learning_rate", "1e-3", "--lr_scheduler_type", "constant", "--max_steps", "8",
        "--tune_parts", "connector,llm"])
    assert f"{checkpoint} was trained with other settings than this run's (" in error, error
    for fragment in ("(--learning_rate, --part_lr, --<part>_lr): {'connector': 0.01} there, "
                     "{'connector': 0.001, 'llm': 0.001} here",
                     "--lr_scheduler_type: linear there, constant here", f"--max_steps: {STEPS} there, 8 here",
                     "--tune_parts: ['connector'] there, ['connector', 'llm'] here"):
        assert fragment in error, (fragment, error)


def test_a_model_only_checkpoint_is_refused_for_resume(stage1, tmp_path):
    """--save_only_model writes no optimizer, scheduler or random state. Before, a resume from such a checkpoint
    went on with a fresh optimizer and a restarted schedule, exit 0, as if it continued the run."""
    args, _ = stage1
    model_only = [*args, "--max_steps", "2", "--save_strategy", "steps", "--save_steps", "1", "--save_only_model", "True"]
    run = run_distributed(model_only, tmp_path / "run", nproc=1)
    checkpoint = run.output_dir / "checkpoint-2"
    error = refused_resume(checkpoint, tmp_path / "resumed", 1, model_only)
    assert f"{checkpoint} was saved with --save_only_model" in error, error
    assert f"--model_name_or_path {checkpoint}" in error


def test_a_run_into_a_folder_with_checkpoints_is_refused_unless_it_resumes(stage1, tmp_path):
    """The scripts keep one checkpoint (--save_total_limit 1). Before, running the same command again after a
    crash started over, and its first save rotated out the crashed run's only checkpoint, exit 0."""
    args, full = stage1
    output = tmp_path / "again"
    output.mkdir()
    shutil.copytree(full.output_dir / f"checkpoint-{CHECKPOINT_STEP}", output / f"checkpoint-{CHECKPOINT_STEP}")
    error = refused_run(output, 1, args)
    assert f"--output_dir {output} holds checkpoint-{CHECKPOINT_STEP} of an earlier run" in error, error
    assert "--resume_from_checkpoint latest" in error
    assert (output / f"checkpoint-{CHECKPOINT_STEP}").is_dir() and not (output / "run_args.json").exists()


def refused_resume(checkpoint, output, nproc: int, args: list[str]) -> str:
    """The one error line of a resume from ``checkpoint`` that must be refused."""
    return refused_run(output, nproc, [*args, "--resume_from_checkpoint", str(checkpoint)])


def refused_run(output, nproc: int, args: list[str]) -> str:
    """The one error line of a run that must be refused."""
    run = subprocess.run(
        [sys.executable, "-m", "fila_train.training.launch", "--nproc_per_node", str(nproc), "--master_port",
         str(free_port()), "-m", "fila_train.cli", "train", "--output_dir", str(output), *args],
        cwd=REPO, env=rank_environment(), capture_output=True, text=True, timeout=300)
    assert run.returncode == REPORTED_EXIT_CODE, run.stderr[-3000:]
    errors = [line for line in run.stderr.splitlines() if ": error: " in line]
    assert len(errors) == 1 and "Traceback" not in run.stderr, run.stderr[-3000:]
    return errors[0]


def test_a_resume_on_other_data_in_another_order_is_one_line_before_training(stage1, tiny_assets, tmp_path):
    """The checkpoint's step says how many batches to skip; on other data, or in another order, the resumed
    run would train some records twice and others never. It went on silently. (One run shows that the
    trainer records both and the check reads both; test_crash_safety.py has each rule alone.)"""
    args, full = stage1
    checkpoint = full.output_dir / f"checkpoint-{CHECKPOINT_STEP}"

    def run_files() -> dict:  # the run's records (run_args.json, data_plan.json, sample ids, checkpoints)
        return {path: path.read_bytes() for path in full.output_dir.rglob("*")
                if path.is_file() and not path.name.startswith("error-rank")}

    before = run_files()
    # Into the run's own folder, as a requeued job resumes: the refusal must leave the run's records alone.
    error = refused_resume(checkpoint, full.output_dir, 2,
                           [*args, "--data_path", str(tiny_assets.stage1_data), "--seed", "8"])
    records = len(tiny_assets.stage1_data.read_text().splitlines())
    trained, now = error.split("; this run's data is ")
    assert trained.endswith(f"{checkpoint} was trained on 8 samples (stage1_captions_first8: 8 of 8 records; plan "
                            f"seed 0, selection {trained.split('selection ')[1][:8]}, records "
                            f"{trained.split(', records ')[1][:8]}), sampler seed 7, ungrouped, random order"), error
    assert now.startswith(f"{records} samples (stage1_captions: {records} of {records} records; plan seed 0"), error
    assert "), sampler seed 8, ungrouped, random order: skipping to the checkpoint's step in another order" in now, error
    assert error.endswith("or pass --ignore_data_skip to start the checkpoint's epoch of this data from its beginning"), error
    assert run_files() == before


def test_a_missing_rank_is_one_line_after_ddp_timeout(stage1, tmp_path):
    """Rank 0 of 2 started alone (a node that never came up): it gives up after --ddp_timeout, on the CPU too
    (HF's CPU branch starts the process group without it: torch's 30 minutes), and says so in one line."""
    args, _ = stage1
    port = free_port()
    env = rank_environment() | {"RANK": "0", "LOCAL_RANK": "0", "WORLD_SIZE": "2", "LOCAL_WORLD_SIZE": "1",
                                "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)}
    run = subprocess.run([sys.executable, "-m", "fila_train.cli", "train", "--output_dir", str(tmp_path / "run"),
                          *args, "--ddp_timeout", "5"],
                         cwd=REPO, env=env, capture_output=True, text=True, timeout=240)
    assert run.returncode == REPORTED_EXIT_CODE, run.stderr[-3000:]
    errors = [line for line in run.stderr.splitlines() if "error" in line.lower()]
    assert len(errors) == 1, run.stderr[-3000:]
    assert f"not all 2 processes joined at 127.0.0.1:{port} within --ddp_timeout 5 s" in errors[0], errors[0]
    assert "1/2 clients joined" in errors[0]  # torch's own count
    assert "Traceback" not in run.stderr


def test_ranks_started_with_different_batch_layouts_stop_before_anything_loads(stage1, tmp_path):
    """Under torchrun each node's script works out --gradient_accumulation_steps from its own GPU count; nodes
    with different counts started their ranks with different accumulations. Before, they trained anyway: each
    stepped after its own number of micro-batches while the gradient reductions paired up, silently wrong."""
    args, _ = stage1
    port, processes = free_port(), []
    for rank, accumulation in enumerate(("1", "2")):
        env = rank_environment() | {"RANK": str(rank), "LOCAL_RANK": "0", "WORLD_SIZE": "2", "LOCAL_WORLD_SIZE": "1",
                                    "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)}
        processes.append(subprocess.Popen(
            [sys.executable, "-m", "fila_train.cli", "train", "--output_dir", str(tmp_path / "run"), *args,
             "--gradient_accumulation_steps", accumulation], cwd=REPO, env=env, stdout=subprocess.PIPE,
            stderr=subprocess.PIPE, text=True))
    outputs = [process.communicate(timeout=240) for process in processes]
    # A configuration error, the same on every rank: rank 0 prints it, rank 1 leaves it to rank 0.
    assert [process.returncode for process in processes] == [REPORTED_EXIT_CODE, SILENT_EXIT_CODE], outputs
    errors = [line for _, stderr in outputs for line in stderr.splitlines() if "error" in line.lower()]
    assert errors == ["fila-train train [rank 0]: error: the 2 processes were started with different batch layouts "
                      "(rank 0: per-device batch 2 x accumulation 1; "
                      "rank 1: per-device batch 2 x accumulation 2): each node's launcher must see the same "
                      "processes per node and be given the same flags (the scripts: the same GPUS_PER_NODE on every "
                      "node)"], outputs
    assert not list((tmp_path / "run").rglob("*.json"))  # before: both trained on (and hung at the end here)


def test_zero3_trains_as_zero2_when_one_rank_draws_only_text_and_the_other_two_canvases(tiny_assets, tmp_path):
    """LLaVA's ZeRO-3 hang: a rank whose batch has no image skips the vision side and its parameter
    gathers, and the other ranks wait for it forever. Here, in every step, rank 0 holds a wide and a tall
    image (two ConvNeXt canvases, two CVFM grids) and rank 1 two text-only records (a blank placeholder on
    a third canvas), under FILA + MMFuser with every part training, the ConvNeXt and the ViT included: then
    the backward's gathers and gradient reductions must match across ranks too, not only the forward's, and
    with every part checkpointed (the recomputations in the backward gather too).
    The grouped sampler deals it so: its pooled last step is sorted by length, and each text-only record
    is its image twin minus the image."""
    from PIL import Image

    images = {"wide": (120, 40), "tall": (40, 120)}  # the tiny 56x28 and 28x56 canvases
    for name, size in images.items():
        Image.new("RGB", size, (240, 240, 230)).save(tmp_path / f"{name}.png")
    record = next(r for r in map(json.loads, tiny_assets.stage2_data.read_text().splitlines()) if "image" in r)
    text_turns = [dict(turn, value=turn["value"].replace("<image>\n", "")) for turn in record["conversations"]]
    records = [dict(record, id=name, image=f"{name}.png") for name in images] + [
        {"id": f"text{k}", "conversations": text_turns} for k in range(2)]
    data = tmp_path / "mixed.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in records))

    steps = 3

    def run_with(zero: int, checkpointed: bool = False):
        args = train_args(tiny_assets, hybrid=True, fuser=True, stage=2, zero=zero, steps=steps) + [
            "--data_path", str(data), "--image_folder", str(tmp_path), "--group_by_modality_length", "True",
            "--log_sample_ids", "True", "--report_to", "none",
            "--tune_parts", "connector,vision,convnext,cvfm,fuser,llm", "--convnext_lr", "1e-3", "--gradient_checkpointing", str(checkpointed)]
        # A hang shows as the timeout: the run itself takes ~20 s.
        return run_distributed(args, tmp_path / f"zero{zero}{'_checkpointed' * checkpointed}", timeout=150)

    run = run_with(zero=3)
    ids = [(run.output_dir / "sample_ids" / f"rank{r}.txt").read_text().split() for r in (0, 1)]
    steps_dealt = [[sorted(ids[r][2 * s:2 * s + 2]) for r in (0, 1)] for s in range(steps)]
    assert steps_dealt == [[["tall", "wide"], ["text0", "text1"]]] * steps, ids  # the premise, every step
    losses = run.summary()["losses"]
    assert len(losses) == steps and all(math.isfinite(loss) and loss > 0 for loss in losses), losses
    # The reference: ZeRO-2 keeps every weight whole on every rank. From the same --seed, the new connector,
    # CVFM and fuser must start alike, and each step's partitioned gathers and reductions must add up alike.
    reference = run_with(zero=2).summary()["losses"]
    torch.testing.assert_close(losses, reference, rtol=1e-5, atol=0)
    checkpointed = run_with(zero=3, checkpointed=True).summary()["losses"]
    torch.testing.assert_close(checkpointed, reference, rtol=1e-5, atol=0)


def test_new_lora_adapters_on_a_saved_model_start_alike_under_zero3_and_zero2(tiny_assets, tmp_path):
    """Training on from a saved fila model with new LoRA adapters: the adapters are drawn after the model loads,
    and under ZeRO-3 the load itself draws random numbers (zero.Init builds CLIP's class embedding with
    torch.randn), where ZeRO-2's builds on the meta device. Before, the same --seed gave other adapters under
    ZeRO-3; the losses matched at step 0 (LoRA's B starts at zero) and parted from step 1 on."""
    import shutil

    from distributed_utils import build_tiny_model

    saved = tmp_path / "saved"
    build_tiny_model(tiny_assets, hybrid=False, fuser=False).save_pretrained(saved)
    for tokenizer_file in tiny_assets.llm.glob("tokenizer*"):
        shutil.copy(tokenizer_file, saved)

    def run_with(zero: int) -> list[float]:
        args = train_args(tiny_assets, hybrid=False, fuser=False, stage=2, zero=zero, steps=3) + [
            "--model_name_or_path", str(saved), "--lora_r", "4", "--learning_rate", "2e-2", "--report_to", "none"]
        return run_distributed(args, tmp_path / f"zero{zero}").summary()["losses"]

    zero3 = run_with(zero=3)
    assert len(zero3) == 3 and all(math.isfinite(loss) and loss > 0 for loss in zero3), zero3
    torch.testing.assert_close(zero3, run_with(zero=2), rtol=1e-5, atol=0)


def saved_fila_model(tiny_assets, folder, fuser: bool, drop: str | None = None,
                     **extra: str) -> dict[str, torch.Tensor]:
    """A saved FILA (+ MMFuser) model (``extra``: its flags) with every tensor moved off its initial value, so that
    no init can pass for a load; without the tensors named ``drop...``. Returns the tensors its files hold."""
    from distributed_utils import build_tiny_model
    from safetensors.torch import save_file

    build_tiny_model(tiny_assets, hybrid=True, fuser=fuser, extra=extra).save_pretrained(folder)
    for tokenizer_file in tiny_assets.llm.glob("tokenizer*"):
        shutil.copy(tokenizer_file, folder)
    generator = torch.Generator().manual_seed(0)
    weights = {name: tensor + 0.01 * torch.randn(tensor.shape, generator=generator)
               for name, tensor in load_file(folder / "model.safetensors").items()
               if drop is None or not name.startswith(drop)}
    save_file(weights, folder / "model.safetensors", metadata={"format": "pt"})
    return weights


def from_saved_args(tiny_assets, saved, fuser: bool) -> list[str]:
    """One ZeRO-3 stage-2 step at learning rate 0 from a saved FILA (+ MMFuser) model: its output holds the weights
    the run loaded."""
    return train_args(tiny_assets, hybrid=True, fuser=fuser, stage=2, zero=3, steps=1) + [
        "--model_name_or_path", str(saved), "--learning_rate", "0", "--report_to", "none",
        "--tune_parts", "connector,cvfm,llm" + ",fuser" * fuser]


def test_a_saved_fila_mmfuser_model_trains_on_under_zero3_from_every_weight_of_its_files(tiny_assets, tmp_path):
    """from_pretrained under ZeRO-3 builds the model inside zero.Init, each module's parameters partitioned (empty
    here) as soon as it is built. Before, the deformable attention's init wrote its offsets' bias into the empty
    tensor, and a strided-conv CVFM aligner indexed it: a traceback from every rank, so stage 2 could not start
    from a saved MMFuser model under ZeRO-3 (ZeRO-2 could)."""
    from fila_train.model import FilaForConditionalGeneration

    saved = tmp_path / "saved"
    weights = saved_fila_model(tiny_assets, saved, fuser=True, vision_option="cvfm.align=strided_conv")
    run = run_distributed(from_saved_args(tiny_assets, saved, fuser=True), tmp_path / "run")
    trained = FilaForConditionalGeneration.from_pretrained(run.output_dir).state_dict()
    assert sorted(trained) == sorted(weights)
    assert [name for name, tensor in weights.items() if not torch.equal(trained[name], tensor)] == []


def test_a_saved_model_without_its_convnext_weights_is_refused_under_zero3_as_under_zero2(tiny_assets, tmp_path):
    """The ConvNeXt branch is marked as loaded when it is built (a fresh build's weights come from its checkpoint,
    which transformers' init must keep), and transformers leaves such weights out of the missing ones. Under
    ZeRO-2 they stay on the meta device, which the load checks; under ZeRO-3 they held whatever zero.Init left
    (its init functions disabled): the run went on from a ConvNeXt of uninitialised memory (here its loss was NaN)."""
    saved = tmp_path / "saved"
    saved_fila_model(tiny_assets, saved, fuser=False, drop="vision_tower.convnext.trunk.stages.1.")
    error = refused_run(tmp_path / "run", 2, from_saved_args(tiny_assets, saved, fuser=False))
    assert f"{saved}: the weights do not match its config.json's model (missing " in error, error
    assert "vision_tower.convnext.trunk.stages.1.blocks.0.conv_dw.bias" in error


def test_a_saved_lora_model_without_an_adapter_weight_is_refused_under_zero3_as_under_zero2(tiny_assets, tmp_path):
    """LoRA adapters are marked as loaded when they are added (PEFT's init must survive transformers'), which kept a
    tensor the files lack out of the missing ones under ZeRO-3, as the ConvNeXt's (above): the run trained on from
    whatever zero.Init left in it. Plain and ZeRO-2 loads refused it already."""
    from distributed_utils import build_tiny_model
    from fila_train.model.lora import LoraSettings, add_lora
    from safetensors.torch import save_file

    saved = tmp_path / "saved"
    model = build_tiny_model(tiny_assets, hybrid=False, fuser=False)
    add_lora(model, LoraSettings(r=4))
    model.save_pretrained(saved)
    for tokenizer_file in tiny_assets.llm.glob("tokenizer*"):
        shutil.copy(tokenizer_file, saved)
    lacking = "language_model.model.layers.0.self_attn.q_proj.lora_B.default.weight"
    weights = load_file(saved / "model.safetensors")
    save_file({name: tensor for name, tensor in weights.items() if name != lacking}, saved / "model.safetensors",
              metadata={"format": "pt"})
    args = train_args(tiny_assets, hybrid=False, fuser=False, stage=2, zero=3, steps=1) + [
        "--model_name_or_path", str(saved), "--report_to", "none"]
    error = refused_run(tmp_path / "run", 2, args)
    assert f"{saved}: the weights do not match its config.json's model (missing 1 ({lacking}))" in error, error

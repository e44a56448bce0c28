"""The stage scripts and their launcher (scripts/lib/launch.sh): real 2-process runs on CPU through
scripts/finetune.sh (torchrun) and scripts/pretrain.sh (DeepSpeed's launcher), DRY_RUN=1 previews
of the hostfile, multi-node torchrun and SLURM layouts, and the misconfigurations that must stop
before anything launches."""
from __future__ import annotations

import json
import os
import shlex
import signal
import subprocess
import sys
from dataclasses import dataclass

import pytest
import torch

from distributed_utils import REPO, TINY, assert_loss_falls, build_tiny_model, free_port

DRY_RUN_PREFIX = "[fila-train] dry run: "
# Layout variables a developer's shell may hold; each test sets the ones it means.
LAYOUT_VARIABLES = ("NNODES", "NODE_RANK", "MASTER_ADDR", "MASTER_PORT", "HOSTFILE", "LAUNCHER", "GPUS_PER_NODE",
                    "NPROC_PER_NODE", "PRECISION", "DRY_RUN", "GLOBAL_BATCH_SIZE", "PER_DEVICE_BATCH_SIZE")
# A 2-node step (task 1 of 2) as srun sets it up.
SRUN_STEP = {"SLURM_JOB_ID": "4242", "SLURM_JOB_NODELIST": "gpu[07-08]", "SLURM_NNODES": "2", "SLURM_STEP_ID": "0",
             "SLURM_STEP_NODELIST": "gpu[07-08]", "SLURM_STEP_NUM_NODES": "2", "SLURM_STEP_NUM_TASKS": "2",
             "SLURM_PROCID": "1", "SLURM_NODEID": "1"}
MULTI_NODE = {"NNODES": "2", "NODE_RANK": "1", "MASTER_ADDR": "10.1.2.3", "GPUS_PER_NODE": "2"}


@dataclass
class ScriptRun:
    returncode: int | str
    stdout: str
    stderr: str

    def command(self) -> list[str]:
        """The launch command a dry run printed, split as the shell would."""
        assert self.returncode == 0, self.stderr
        (line,) = [line for line in self.stdout.splitlines() if line.startswith(DRY_RUN_PREFIX)]
        return shlex.split(line[len(DRY_RUN_PREFIX):])


def run_script(script: str, env: dict[str, str], args: tuple[str, ...] = (), cuda: bool = False,
               timeout: int = 120) -> ScriptRun:
    """``bash script args`` from the repository root with ``env`` over a clean layout; CUDA hidden
    unless ``cuda``, so the previews are the same on every machine."""
    base = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_") and k not in LAYOUT_VARIABLES}
    base |= {"PYTHON": sys.executable, "HF_HUB_OFFLINE": "1", "WANDB_MODE": "offline", "PYTHONUNBUFFERED": "1"}
    if not cuda:
        base["CUDA_VISIBLE_DEVICES"] = ""
    # Own session, so a hung run is killed with all its workers.
    process = subprocess.Popen(["bash", script, *args], cwd=REPO, env=base | env, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        stdout, stderr = process.communicate(timeout=timeout)
        return ScriptRun(process.returncode, stdout, stderr)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        stdout, stderr = process.communicate()
        return ScriptRun(f"timeout after {timeout} s", stdout, stderr)


def dry_run(script: str, env: dict[str, str], args: tuple[str, ...] = (), **kwargs) -> ScriptRun:
    return run_script(script, {"DRY_RUN": "1", "GLOBAL_BATCH_SIZE": "16", "PER_DEVICE_BATCH_SIZE": "2"} | env,
                      args, **kwargs)


def launcher_options(command: list[str]) -> dict[str, str]:
    """The launcher's options, from after ``python -m <launcher>`` to the module flag ("" for bare flags)."""
    options, i = {}, 3
    while command[i] not in ("-m", "--module"):
        bare = command[i + 1].startswith("-")
        options[command[i]] = "" if bare else command[i + 1]
        i += 1 if bare else 2
    return options


def train_args(command: list[str]) -> list[str]:
    return command[command.index("fila_train.cli") + 2:]


def has_flag(args: list[str], name: str, value: str) -> bool:
    return any(args[i:i + 2] == [name, value] for i in range(len(args) - 1))


# ---------------------------------------------------------------- the real run


def test_finetune_sh_trains_with_torchrun_on_two_processes(tiny_assets, tmp_path) -> None:
    from fila_train.training.connector_artifact import save_connector_artifact

    artifact = save_connector_artifact(build_tiny_model(tiny_assets, hybrid=True, fuser=False), tmp_path / "stage1")
    output = tmp_path / "stage2"
    model = {name.upper(): value for name, value in TINY.hybrid_flags(tiny_assets.convnext).items()}
    env = model | {
        "MODEL": str(tiny_assets.llm), "VISION_TOWER": str(tiny_assets.clip), "VISION_ENCODER": "fila_hybrid",
        "DATA_PATH": str(tiny_assets.stage2_data), "IMAGE_FOLDER": str(tiny_assets.image_folder),
        "PRETRAINED_CONNECTOR": str(artifact), "OUTPUT_DIR": str(output),
        "GLOBAL_BATCH_SIZE": "4", "PER_DEVICE_BATCH_SIZE": "2", "NPROC_PER_NODE": "2", "MASTER_PORT": str(free_port()),
        "LEARNING_RATE": "3e-3", "MAX_STEPS": "6", "MAX_LENGTH": "512", "REPORT_TO": "none",
        "DATALOADER_WORKERS": "0", "GRADIENT_CHECKPOINTING": "False", "OMP_NUM_THREADS": "1"}
    run = run_script("scripts/finetune.sh", env, ("--seed", "7", "--save_strategy", "no"), timeout=300)
    log = run.stdout + run.stderr
    assert run.returncode == 0, log[-6000:]
    assert "[fila-train] torchrun: 1 node(s), world size 2" in run.stdout
    assert "backend gloo" in run.stdout and "accumulation 1" in run.stdout
    assert "; 2 process(es)" in log, "the trainer did not see a world of 2 processes"
    assert "loaded connector artifact" in log
    summary = json.loads((output / "train_summary.json").read_text())
    assert summary["steps"] == 6 and set(summary["tune_parts"]) == {"connector", "llm", "cvfm"}
    assert_loss_falls(summary)


def test_pretrain_sh_trains_with_the_deepspeed_launcher(tiny_assets, tmp_path) -> None:
    # LAUNCHER=deepspeed on one node: DeepSpeed's own runner starts the ranks (a HOSTFILE run does the
    # same per host, reached over ssh, which this machine has not got: its command is the dry run below).
    output = tmp_path / "stage1"
    env = {"LAUNCHER": "deepspeed", "MODEL": str(tiny_assets.llm), "VISION_TOWER": str(tiny_assets.clip),
           "VISION_ENCODER": "clip", "DATA_PATH": str(tiny_assets.stage1_data),
           "IMAGE_FOLDER": str(tiny_assets.image_folder), "OUTPUT_DIR": str(output),
           "GLOBAL_BATCH_SIZE": "4", "PER_DEVICE_BATCH_SIZE": "2", "NPROC_PER_NODE": "2",
           "MASTER_PORT": str(free_port()), "LEARNING_RATE": "1e-2", "MAX_STEPS": "4", "MAX_LENGTH": "512",
           "REPORT_TO": "none", "DATALOADER_WORKERS": "0", "OMP_NUM_THREADS": "1"}
    run = run_script("scripts/pretrain.sh", env, ("--seed", "7", "--save_strategy", "no"), timeout=300)
    log = run.stdout + run.stderr
    assert run.returncode == 0, log[-6000:]
    assert "[fila-train] deepspeed: 1 node(s), world size 2" in run.stdout and "backend gloo" in run.stdout
    assert "deepspeed.launcher.launch" in log, "DeepSpeed's runner did not start the ranks"
    assert "; 2 process(es)" in log, "the trainer did not see a world of 2 processes"
    summary = json.loads((output / "train_summary.json").read_text())
    assert summary["steps"] == 4 and summary["tune_parts"] == ["connector"]
    assert (output / "connector.safetensors").is_file()


# ---------------------------------------------------------------- dry runs of each layout


def test_dry_run_torchrun_multi_node() -> None:
    run = dry_run("scripts/finetune.sh", MULTI_NODE | {"MASTER_PORT": "29611"}, ("--seed", "3"))
    command = run.command()
    assert command[:3] == [sys.executable, "-m", "fila_train.training.launch"]  # torchrun, one-line failures
    assert launcher_options(command) == {"--nnodes": "2", "--node_rank": "1", "--master_addr": "10.1.2.3",
                                         "--master_port": "29611", "--nproc_per_node": "2"}
    args = train_args(command)
    # 16 = 2 per device x (2 nodes x 2 processes) x 2 accumulation steps
    assert args[:4] == ["--per_device_train_batch_size", "2", "--gradient_accumulation_steps", "2"]
    assert has_flag(args, "--deepspeed", "zero_configs/zero3.json") and args[-2:] == ["--seed", "3"]
    assert "world size 4, node rank 1, master 10.1.2.3:29611" in run.stdout and "backend gloo" in run.stdout


def test_dry_run_deepspeed_hostfile(tmp_path) -> None:
    hostfile = tmp_path / "hostfile"
    hostfile.write_text("# two nodes\nnode-a slots=4\n\n  node-b slots=4  \n")
    run = dry_run("scripts/pretrain.sh", {"HOSTFILE": str(hostfile), "GLOBAL_BATCH_SIZE": "32"})
    command = run.command()
    assert command[:3] == [sys.executable, "-m", "fila_train.training.deepspeed_launch"]  # DeepSpeed's runner
    # No --master_addr: DeepSpeed asks the first host for its address.
    assert launcher_options(command) == {"--hostfile": str(hostfile), "--master_port": "29500", "--no_local_rank": ""}
    args = train_args(command)
    assert args[:4] == ["--per_device_train_batch_size", "2", "--gradient_accumulation_steps", "2"]
    assert has_flag(args, "--deepspeed", "zero_configs/zero2.json") and has_flag(args, "--conversation_template", "plain")
    assert "deepspeed: 2 node(s), world size 8" in run.stdout and "node-a:4 node-b:4" in run.stdout


def test_dry_run_inside_an_srun_step_takes_the_layout_from_slurm_and_the_backend_from_cuda() -> None:
    # CUDA left visible: on a GPU machine this is nccl / bf16 on all its GPUs.
    run = dry_run("scripts/finetune.sh", SRUN_STEP | {"GLOBAL_BATCH_SIZE": "256", "PER_DEVICE_BATCH_SIZE": "1"},
                  cuda=True)
    cuda = torch.cuda.is_available()
    assert launcher_options(run.command()) == {
        "--nnodes": "2", "--node_rank": "1", "--master_addr": "gpu07", "--master_port": str(29500 + 4242 % 1000),
        "--nproc_per_node": str(torch.cuda.device_count()) if cuda else "2"}
    assert "layout from SLURM step 4242.0" in run.stdout
    assert f"backend {'nccl' if cuda else 'gloo'}" in run.stdout
    assert f"precision {'bf16' if cuda else 'fp32'}" in run.stdout
    assert ("--bf16" in train_args(run.command())) == cuda


def test_sbatch_runs_the_stage_script_as_one_srun_task_per_node(tmp_path) -> None:
    # No SLURM here: scontrol and srun are stand-ins that behave as they do for task 1 of 2.
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "scontrol").write_text('#!/usr/bin/env bash\n[ "$1 $2" = "show hostnames" ] && printf "%s\\n" gpu-a17 gpu-a18\n')
    (bin_dir / "srun").write_text(
        '#!/usr/bin/env bash\necho "srun $*" >&2\nwhile [[ "$1" == -* ]]; do shift; done\n'
        'export SLURM_STEP_ID=0 SLURM_STEP_NUM_NODES=$SLURM_NNODES SLURM_STEP_NUM_TASKS=$SLURM_NNODES '
        'SLURM_STEP_NODELIST=$SLURM_JOB_NODELIST SLURM_PROCID=1 SLURM_NODEID=1\nexec "$@"\n')
    for shim in bin_dir.iterdir():
        shim.chmod(0o755)
    env = {"PATH": f"{bin_dir}:{os.environ['PATH']}", "SLURM_JOB_ID": "777", "SLURM_JOB_NODELIST": "gpu-a[17-18]",
           "SLURM_NNODES": "2", "SLURM_SUBMIT_DIR": str(REPO), "GPUS_PER_NODE": "2"}
    run = dry_run("scripts/slurm/train.sbatch", env, ("scripts/finetune.sh", "--seed", "3"))
    command = run.command()
    assert launcher_options(command) == {"--nnodes": "2", "--node_rank": "1", "--master_addr": "gpu-a17",
                                         "--master_port": str(29500 + 777 % 1000), "--nproc_per_node": "2"}
    assert train_args(command)[-2:] == ["--seed", "3"]
    assert "--ntasks-per-node=1" in run.stderr


def gpu_node_python(tmp_path, local_gpus: int):
    """A stand-in for this machine's python that answers the launcher's device probe as a CUDA node with
    ``local_gpus`` visible GPUs would (a dry run runs nothing else)."""
    shim = tmp_path / "python"
    shim.write_text(f'#!/usr/bin/env bash\nif [ "$1" = -c ]; then echo "1 {local_gpus} nccl"; exit 0; fi\n'
                    f'exec {shlex.quote(sys.executable)} "$@"\n')
    shim.chmod(0o755)
    return str(shim)


@pytest.mark.parametrize("env, include", [({}, "localhost:4,5,6,7"), ({"GPUS_PER_NODE": "2"}, "localhost:4,5")])
def test_deepspeed_on_one_node_runs_on_the_visible_gpus(env, include, tmp_path) -> None:
    """A job given GPUs 4-7 (CUDA_VISIBLE_DEVICES=4,5,6,7, as a scheduler sets it on a shared node). Before, the
    launcher passed --num_gpus 4, and DeepSpeed's runner, given --num_gpus, drops CUDA_VISIBLE_DEVICES ("ignoring
    it") and starts the ranks on GPUs 0-3: another job's."""
    run = dry_run("scripts/pretrain.sh", {"LAUNCHER": "deepspeed", "CUDA_VISIBLE_DEVICES": "4,5,6,7",
                                          "PYTHON": gpu_node_python(tmp_path, 4), "GLOBAL_BATCH_SIZE": "32"} | env)
    command = run.command()
    assert launcher_options(command) == {"--include": include, "--master_port": "29500", "--no_local_rank": ""}
    assert "backend nccl" in run.stdout and "--bf16" in train_args(command)


def test_deepspeed_on_one_node_refuses_gpus_named_by_uuid(tmp_path) -> None:
    run = dry_run("scripts/pretrain.sh", {"LAUNCHER": "deepspeed", "CUDA_VISIBLE_DEVICES": "GPU-5d1c,GPU-77aa",
                                          "PYTHON": gpu_node_python(tmp_path, 2)})
    assert run.returncode == 1 and run.stderr.startswith("[fila-train] error: LAUNCHER=deepspeed"), run.stderr
    assert len(run.stderr.splitlines()) == 1 and DRY_RUN_PREFIX not in run.stdout


# ---------------------------------------------------------------- misconfigurations


MISCONFIGURATIONS = {
    "nnodes_without_master": ({"NNODES": "2", "NODE_RANK": "1"}, "NNODES=2 needs MASTER_ADDR"),
    "node_rank_out_of_range": (MULTI_NODE | {"NODE_RANK": "2"}, "NODE_RANK=2 is out of range for NNODES=2 (0 to 1)"),
    "loopback_master": (MULTI_NODE | {"MASTER_ADDR": "127.0.0.1"}, "MASTER_ADDR=127.0.0.1 is a loopback address"),
    "hostfile_missing": ({"HOSTFILE": "no/such/hostfile"}, "HOSTFILE=no/such/hostfile: no such file"),
    "hostfile_bad_line": ({"HOSTFILE": "{tmp}/bad_hostfile"}, "bad_hostfile line 2: expected 'hostname slots=N'"),
    "hostfile_slots_conflict": ({"HOSTFILE": "{tmp}/hostfile", "GPUS_PER_NODE": "4"},
                                "GPUS_PER_NODE=4 but HOSTFILE={tmp}/hostfile gives node-a slots=2"),
    "srun_task_per_gpu": (SRUN_STEP | {"SLURM_STEP_NUM_TASKS": "16"}, "run one task per node"),
    "srun_rank_exported": (SRUN_STEP | {"NODE_RANK": "0"}, "NODE_RANK=0 but this is srun task 1"),
    "batch_not_divisible": (MULTI_NODE | {"GLOBAL_BATCH_SIZE": "12"},
                            "GLOBAL_BATCH_SIZE=12 is not a multiple of PER_DEVICE_BATCH_SIZE=2 x world size 4 = 8"),
    # Before, any value but 1 meant "run": DRY_RUN=true ran the preflight and launched the training it was to preview.
    "dry_run_not_0_or_1": ({"DRY_RUN": "true"}, "DRY_RUN must be 1 (print the launch command, run nothing) or 0, "
                                                "got 'true'"),
    # Before, GPUS_PER_NODE silently won over NPROC_PER_NODE (its spelling for CPU processes).
    "processes_per_node_twice": ({"GPUS_PER_NODE": "2", "NPROC_PER_NODE": "4"},
                                 "GPUS_PER_NODE=2 and NPROC_PER_NODE=4 both give the processes per node: set one"),
}


@pytest.mark.parametrize("case", MISCONFIGURATIONS)
def test_misconfiguration_fails_before_launch_with_one_line(case, tmp_path) -> None:
    env, reason = MISCONFIGURATIONS[case]
    (tmp_path / "hostfile").write_text("node-a slots=2\nnode-b slots=2\n")
    (tmp_path / "bad_hostfile").write_text("node-a slots=2\nnode-b\n")
    run = dry_run("scripts/finetune.sh", {k: v.format(tmp=tmp_path) for k, v in env.items()})
    assert run.returncode == 1, (run.stdout, run.stderr)
    assert len(run.stderr.splitlines()) == 1 and run.stderr.startswith("[fila-train] error: "), run.stderr
    assert reason.format(tmp=tmp_path) in run.stderr
    assert DRY_RUN_PREFIX not in run.stdout


# ---------------------------------------------------------------- the recipe

# LLaVA-1.5's published recipe (anchors.md): what the stage scripts run when nothing is overridden.
LLAVA_15_RECIPE = {
    "scripts/pretrain.sh": {"learning_rate": 1e-3, "global_batch": 256, "deepspeed": "zero_configs/zero2.json",
                            "group_by_modality_length": False, "trains_llm": False},
    "scripts/finetune.sh": {"learning_rate": 2e-5, "global_batch": 128, "deepspeed": "zero_configs/zero3.json",
                            "group_by_modality_length": True, "trains_llm": True},
}


@pytest.mark.parametrize("script", LLAVA_15_RECIPE)
def test_the_scripts_run_the_llava_1_5_recipe_by_default(script, monkeypatch) -> None:
    """The flags the launched run parses (defaults included), against the published values: 1 epoch, cosine,
    warmup 0.03, weight decay 0, and each stage's learning rate, global batch and ZeRO stage (the length: below)."""
    from fila_train.training.train import parse_args

    monkeypatch.chdir(REPO)  # the flags' paths are the scripts', relative to the repository
    expected = LLAVA_15_RECIPE[script]
    command = run_script(script, {"DRY_RUN": "1"}).command()
    _, _, args = parse_args(train_args(command))
    world_size = int(launcher_options(command)["--nproc_per_node"])
    assert args.per_device_train_batch_size * args.gradient_accumulation_steps * world_size == expected["global_batch"]
    assert args.learning_rate == expected["learning_rate"] and args.deepspeed == expected["deepspeed"]
    assert args.num_train_epochs == 1 and args.max_steps == -1 and args.lr_scheduler_type.value == "cosine"
    assert args.warmup_ratio == 0.03 and args.weight_decay == 0.0
    assert args.group_by_modality_length is expected["group_by_modality_length"]
    assert ("llm" in args.parts()) is expected["trains_llm"]


@pytest.mark.parametrize("script, encoder", [("scripts/pretrain.sh", "fila_hybrid"), ("scripts/finetune.sh", "fila_hybrid"),
                                             ("scripts/finetune.sh", "anyres"), ("scripts/finetune.sh", "clip")])
def test_the_default_length_leaves_room_for_text_after_every_image(script, encoder, monkeypatch) -> None:
    """Each encoder's images, on every canvas of the run's own options, as CLIP-ViT-L/14-336 (the default tower)
    sees them, against the length the scripts give it. FILA's 672x672 canvas makes (4 tiles + the global view) x
    576 = 2880 tokens: LLaVA-1.5's 2048 dropped every record whose image took it. CLIP alone keeps LLaVA-1.5's 2048."""
    from transformers import CLIPVisionConfig

    from fila_train.bench.configs import CLIP_VIT_L_336
    from fila_train.model.vision.registry import build_image_processor
    from fila_train.training.train import parse_args

    monkeypatch.chdir(REPO)
    model, _, args = parse_args(train_args(run_script(script, {"DRY_RUN": "1", "VISION_ENCODER": encoder}).command()))
    processor = build_image_processor(model.vision_encoder, CLIPVisionConfig(**CLIP_VIT_L_336), model.vision_options())
    counts = processor.image_token_counts()
    assert max(counts.values()) < args.model_max_length, counts
    assert args.model_max_length == (2048 if encoder == "clip" else 4096)
    if encoder != "clip":
        assert counts["672x672"] == 2880


def test_finetune_sh_lora_variant_is_llava_s(monkeypatch) -> None:
    """LLaVA-1.5's LoRA stage 2 as the script's header spells it: rank 128, alpha 256, lr 2e-4, connector 2e-5."""
    from fila_train.training.train import parse_args

    monkeypatch.chdir(REPO)
    env = {"DRY_RUN": "1", "LORA_R": "128", "LEARNING_RATE": "2e-4", "CONNECTOR_LR": "2e-5"}
    model, _, args = parse_args(train_args(run_script("scripts/finetune.sh", env).command()))
    lora = model.lora_settings()
    assert (lora["r"], lora["alpha"]) == (128, 256)
    assert args.learning_rate == 2e-4 and args.part_learning_rate("connector") == 2e-5


@pytest.mark.parametrize("script, env, extra, rates", [
    # a part's rate follows --learning_rate unless its own variable is set, extra flags included
    ("scripts/finetune.sh", {}, ("--learning_rate", "1e-4"), {"connector": 1e-4, "cvfm": 1e-4, "llm": 1e-4}),
    ("scripts/finetune.sh", {"CONNECTOR_LR": "2e-5", "CVFM_LR": "1e-2"}, ("--learning_rate", "1e-4"),
     {"connector": 2e-5, "cvfm": 1e-2, "llm": 1e-4}),
    ("scripts/pretrain.sh", {"CONNECTOR": "mmfuser"}, (), {"connector": 1e-3, "cvfm": 1e-3, "fuser": 1e-4}),
    # a part TUNE_PARTS leaves frozen gets no rate (a rate for it stops the run)
    ("scripts/pretrain.sh", {"TUNE_PARTS": "connector", "CONNECTOR": "mmfuser"}, (), {"connector": 1e-3}),
    ("scripts/finetune.sh", {"TUNE_PARTS": "llm"}, (), {"llm": 2e-5}),
])
def test_the_scripts_pass_a_part_rate_only_where_set_and_for_a_trained_part(script, env, extra, rates, monkeypatch):
    """Before, the scripts passed --connector_lr / --cvfm_lr at the environment's LEARNING_RATE: `bash
    scripts/finetune.sh --learning_rate 1e-4` left the connector and CVFM at 2e-5, and a TUNE_PARTS without cvfm
    passed a rate for the frozen CVFM (now a one-line error)."""
    from fila_train.training.parts import check_rates_train
    from fila_train.training.train import parse_args

    monkeypatch.chdir(REPO)
    _, _, args = parse_args(train_args(run_script(script, {"DRY_RUN": "1"} | env, extra).command()))
    check_rates_train(args.parts(), {part: flag for part, (_, flag) in args.part_rates().items()})
    assert {part: args.part_learning_rate(part) for part in args.parts()} == rates


@pytest.mark.parametrize("script, extra, variable", [
    ("scripts/finetune.sh", ("--per_device_train_batch_size", "4"), "PER_DEVICE_BATCH_SIZE"),
    ("scripts/finetune.sh", ("--seed", "3", "--gradient_accumulation_steps=2"), "GLOBAL_BATCH_SIZE"),
    ("scripts/pretrain.sh", ("--per-device-train-batch-size", "4"), "PER_DEVICE_BATCH_SIZE"),
])
def test_an_extra_flag_that_overrides_the_computed_batch_is_one_line(script, extra, variable) -> None:
    """Before, `GLOBAL_BATCH_SIZE=4 PER_DEVICE_BATCH_SIZE=2 NPROC_PER_NODE=1 bash scripts/finetune.sh
    --per_device_train_batch_size 4` printed "global batch 4 = 2 per device x 1 processes x accumulation 2" and
    trained a global batch of 8 (the extra flag came last and won)."""
    run = dry_run(script, {"GLOBAL_BATCH_SIZE": "4", "NPROC_PER_NODE": "1"}, extra)
    flag = next(word for word in extra if "batch_size" in word.replace("-", "_") or "accumulation" in word)
    assert run.returncode == 1, run.stdout
    assert run.stderr == (f"[fila-train] error: {flag.partition('=')[0]} overrides the batch layout this script "
                          f"computes (global batch = per device x processes x accumulation): set {variable} "
                          f"instead\n")
    assert DRY_RUN_PREFIX not in run.stdout


@pytest.mark.parametrize("script, env, unused", [
    ("scripts/finetune.sh", {"VISION_ENCODER": "clip", "CVFM_LAYERS": "1,2", "ANYRES_CANVASES": "336x672",
                             "CONVNEXT_LR": "1e-5", "FUSER_QUERY_LAYER": "-2"},
     "CONVNEXT_LR CVFM_LAYERS ANYRES_CANVASES FUSER_QUERY_LAYER"),
    ("scripts/pretrain.sh", {"VISION_ENCODER": "anyres", "ANYRES_CANVASES": "336x672", "CVFM_LR": "1e-2",
                             "CONVNEXT_CHECKPOINT": "convnext.safetensors", "FUSER_LR": "1e-4"},
     "CONVNEXT_CHECKPOINT CVFM_LR FUSER_LR"),
])
def test_a_variable_for_a_part_the_model_lacks_is_named_not_silently_dropped(script, env, unused) -> None:
    """Before, `VISION_ENCODER=clip CVFM_LAYERS=1,2 bash scripts/finetune.sh` launched the plain LLaVA model with
    no word about CVFM_LAYERS (a typo in VISION_ENCODER's value reads the same way)."""
    run = dry_run(script, env)
    assert run.returncode == 0, run.stderr
    encoder = env["VISION_ENCODER"]
    assert f"[fila-train] note: VISION_ENCODER={encoder} CONNECTOR=mlp2x_gelu has no part for {unused}; not " \
           f"passed\n" in run.stderr
    args = train_args(run.command())
    assert not [word for word in args if word.startswith(("--cvfm", "--convnext", "--fuser"))], args
    assert any(word.startswith("--anyres_canvases") for word in args) == (encoder == "anyres")


def test_variables_for_the_models_own_parts_pass_without_a_note() -> None:
    run = dry_run("scripts/finetune.sh", {"CONNECTOR": "mmfuser", "CVFM_LAYERS": "1,2", "FUSER_QUERY_LAYER": "-2",
                                          "CVFM_LR": "1e-2", "FUSER_LR": "1e-4", "ANYRES_CANVASES": "336x672"})
    assert "note:" not in run.stderr
    args = train_args(run.command())
    assert {"--cvfm_layers=1,2", "--fuser_query_layer=-2", "--cvfm_lr=1e-2", "--fuser_lr=1e-4"} <= set(args), args


def test_a_stage_2_variable_given_to_pretrain_sh_is_named_not_silently_dropped() -> None:
    """pretrain.sh trains the connector side with the plain template: TEMPLATE, LORA_R, GROUP_BY_MODALITY and
    PRETRAINED_CONNECTOR are finetune.sh's. Before, pretrain.sh dropped them without a word."""
    run = dry_run("scripts/pretrain.sh", {"TEMPLATE": "llava_v1", "LORA_R": "8", "PRETRAINED_CONNECTOR": "c.bin"})
    assert run.returncode == 0, run.stderr
    assert "[fila-train] note: pretrain.sh does not use TEMPLATE LORA_R PRETRAINED_CONNECTOR (finetune.sh's, stage " \
           "2); not passed\n" in run.stderr
    args = train_args(run.command())
    assert has_flag(args, "--conversation_template", "plain") and not [a for a in args if a.startswith("--lora")]
    assert "note:" not in dry_run("scripts/pretrain.sh", {}).stderr

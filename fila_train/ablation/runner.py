"""Run every (variant, seed) of an ablation through the normal path: scripts/pretrain.sh, scripts/finetune.sh
(stage 2 from the run's own stage-1 artifact), then ``fila-train eval`` on both probe splits.

Each step is a subprocess with its own log; a step whose output is complete is skipped, so an interrupted
ablation continues where it stopped. Runs go ``parallel`` at a time, each with its own master port.
"""
from __future__ import annotations

import json
import logging
import os
import queue
import socket
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

from ..data.probe import SPLITS, ProbeLayout, ProbeOptions, layout_for, make_probe, probe_language, probe_paths
from ..utils.errors import ConfigError, FilaError
from ..utils.files import write_json_atomic
from .config import AblationConfig, StageRecipe, variant_env

logger = logging.getLogger(__name__)
REPO = Path(__file__).resolve().parents[2]
BASE_PORT = 29700


class AblationRunError(FilaError):
    """A step of one run failed; the message names its log."""


def free_port(first: int) -> int:
    """The first of ``first`` .. ``first + 9`` (one slot's ports) that nothing listens on: a second ablation on the
    same machine would otherwise start torchrun on a port the first one holds and fail with EADDRINUSE."""
    for port in range(first, first + 10):
        with socket.socket() as candidate:
            try:
                candidate.bind(("", port))
            except OSError:
                continue
            return port
    raise AblationRunError(f"no free master port in {first}-{first + 9}; is another ablation running here?")


@dataclass(frozen=True)
class RunPlan:
    variant: str
    seed: int
    folder: Path

    @property
    def label(self) -> str:
        return f"{self.variant}-seed{self.seed}"

    def stage_dir(self, stage: int) -> Path:
        return self.folder / f"stage{stage}"

    def eval_dir(self, split: str) -> Path:
        return self.folder / "eval" / split  # fila-train eval's OUTPUT/<bench name>

    def done(self, step: str) -> Path:
        """The file a finished step leaves: the stages' train_summary.json, the last split's score."""
        return self.eval_dir(SPLITS[-1]) / "score.json" if step == "eval" else \
            self.stage_dir(int(step[-1])) / "train_summary.json"

    def recipe_file(self, step: str) -> Path:
        return self.folder / f"{step}.recipe.json"


def prepare_models(config: AblationConfig, output: Path) -> dict[str, str]:
    """The scripts' model variables: the config's, or the tiny CPU models (made once under OUTPUT/models)."""
    if not config.tiny:
        return dict(config.models)
    paths_file = output / "models" / "paths.json"
    if not paths_file.is_file():
        from ..demo.cli import DEFAULT_NUM_IMAGES, prepare

        prepare(output / "models", num_images=DEFAULT_NUM_IMAGES, seed=0, extra_text=probe_language())
    paths = json.loads(paths_file.read_text())
    return {"MODEL": paths["llm"], "VISION_TOWER": paths["vision_tower"],
            "CONVNEXT_CHECKPOINT": paths["convnext_checkpoint"], "CONVNEXT_DIMS": paths["convnext_dims"],
            "CONVNEXT_DEPTHS": paths["convnext_depths"], "ANYRES_CANVASES": paths["anyres_canvases"],
            "CVFM_LAYERS": paths["cvfm_layers"], "FUSER_KEY_LAYERS": paths["fuser_key_layers"],
            "FUSER_QUERY_LAYER": paths["fuser_query_layer"]}


def prepare_probe(config: AblationConfig, models: dict[str, str], output: Path) -> dict[str, str]:
    folder = output / "probe"
    if "VISION_TOWER" not in models:
        raise ConfigError("ablation config: models must name VISION_TOWER (the probe follows its tiles)")
    layout: ProbeLayout = layout_for(models["VISION_TOWER"], models.get("ANYRES_CANVASES"), config.probe.canvas)
    options = ProbeOptions(config.probe.train, config.probe.held_out, config.probe.seed)
    written = probe_paths(folder)
    if written is not None:
        # A probe made for other settings is not this config's: every run would train and score on it.
        made = json.loads((folder / "probe.json").read_text())
        wanted = {"layout": asdict(layout), "options": asdict(options)}
        changed = _differences({key: made[key] for key in wanted}, wanted)
        if changed:
            raise ConfigError(f"ablation: the probe in {folder} was made with other settings ({changed}); give "
                              f"another --output, or delete {folder} and the runs trained on it")
        return written
    logger.info("probe: %dpx tiles, %dpx patches, %dx%d canvas", layout.tile, layout.patch, *layout.canvas)
    return make_probe(folder, layout, options)


def step_recipes(plan: RunPlan, config: AblationConfig) -> dict[str, dict]:
    """What each step's result depends on (variant, seed, models, probe, the stages up to it): recorded beside a
    finished step, which is kept only for the same recipe. Launch settings (GPUs, ZeRO, ports) are not in it."""
    run = {"variant": plan.variant, "seed": plan.seed, "models": dict(config.models), "probe": asdict(config.probe)}
    stage1 = run | {"stage1": asdict(config.stage1)}
    stage2 = stage1 | {"stage2": asdict(config.stage2)}
    return {"stage1": stage1, "stage2": stage2, "eval": stage2}


def _flat(value: dict, prefix: str = "") -> dict:
    items = {}
    for key, item in value.items():
        items |= _flat(item, f"{prefix}{key}.") if isinstance(item, dict) else {f"{prefix}{key}": item}
    return items


def _differences(recorded: dict, wanted: dict) -> str:
    """"key recorded -> wanted" for every key that differs, or ''."""
    before, after = (_flat(json.loads(json.dumps(value))) for value in (recorded, wanted))  # as stored: lists
    return ", ".join(f"{key} {before.get(key)} -> {after.get(key)}" for key in sorted(before.keys() | after.keys())
                     if before.get(key) != after.get(key))


def check_finished_steps(todo: list[RunPlan], config: AblationConfig) -> None:
    """Refuse, before anything runs, finished steps made with another recipe: kept, they would be compared with
    runs of this one as if alike. Steps finished before recipes were recorded are kept, with a warning."""
    changed, unrecorded = [], []
    for plan in todo:
        for step, recipe in step_recipes(plan, config).items():
            if not plan.done(step).is_file():
                continue
            if not plan.recipe_file(step).is_file():
                unrecorded.append(f"{plan.label} {step}")
                continue
            difference = _differences(json.loads(plan.recipe_file(step).read_text()), recipe)
            if difference:
                changed.append(f"{plan.label} {step} ({difference})")
                break  # the later steps of this run follow from this one
    if unrecorded:
        logger.warning("ablation: kept without a recorded recipe (finished by an earlier version): %s",
                       ", ".join(unrecorded))
    if changed:
        more = f", and {len(changed) - 3} more" if len(changed) > 3 else ""
        raise ConfigError(f"ablation: finished runs in {config.output} were made with another recipe: "
                          f"{'; '.join(changed[:3])}{more}. Give another --output, or delete those runs' "
                          f"folders to train them again")


def _stage_env(recipe: StageRecipe) -> dict[str, str]:
    part_rates = {"CONNECTOR_LR": recipe.connector_lr, "CVFM_LR": recipe.cvfm_lr, "FUSER_LR": recipe.fuser_lr,
                  "CONVNEXT_LR": recipe.convnext_lr}
    return {name: str(rate) for name, rate in part_rates.items() if rate is not None} | {"GLOBAL_BATCH_SIZE": str(recipe.global_batch_size), "PER_DEVICE_BATCH_SIZE": str(recipe.per_device_batch_size),
            "LEARNING_RATE": str(recipe.learning_rate), "MAX_STEPS": str(recipe.max_steps),
            "EPOCHS": "1000",  # max_steps decides: every variant gets exactly the same steps
            "MAX_LENGTH": str(recipe.max_length), "SAVE_STEPS": "1000000000"}


def _run_step(command: list[str], env: dict[str, str], plan: RunPlan, step: str, recipe: dict, what: str) -> None:
    done, log = plan.done(step), plan.folder / f"{step}.log"
    if done.is_file():  # its recipe was checked before anything ran (check_finished_steps)
        logger.info("%s: done before, kept (%s)", what, done)
        return
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("w") as handle:
        result = subprocess.run(command, cwd=REPO, env={**os.environ, **env}, stdout=handle, stderr=subprocess.STDOUT)
    if result.returncode != 0 or not done.is_file():
        raise AblationRunError(f"{what} failed (exit {result.returncode}); see {log}")
    write_json_atomic(plan.recipe_file(step), recipe)
    logger.info("%s: done", what)


def run_one(plan: RunPlan, config: AblationConfig, models: dict[str, str], probe: dict[str, str], slot: int) -> None:
    common = {**models, **config.launch, **variant_env(plan.variant), "IMAGE_FOLDER": probe["image_folder"],
              "REPORT_TO": config.report_to, "LOGGING_STEPS": "5",
              "WANDB_RUN_GROUP": config.name, "WANDB_PROJECT": os.environ.get("WANDB_PROJECT", "fila-train-ablation"),
              # The scripts run this interpreter (its environment), whatever `python` is on PATH.
              "PYTHON": sys.executable, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    if config.threads_per_run:
        common["OMP_NUM_THREADS"] = str(config.threads_per_run)
    recipes = step_recipes(plan, config)
    for stage, script, recipe in ((1, "pretrain.sh", config.stage1), (2, "finetune.sh", config.stage2)):
        env = common | _stage_env(recipe) | {"DATA_PATH": probe[f"stage{stage}"], "OUTPUT_DIR": str(plan.stage_dir(stage)),
                                             "MASTER_PORT": str(free_port(BASE_PORT + 10 * slot))}
        if stage == 2:
            # Length grouping (stage 1 has none) can sort the probe by its answers: with the demo-text tokenizer
            # "0" made a sequence one token longer than "1", so grouped batches held one answer each
            # (docs/ablation.md).
            env |= {"PRETRAINED_CONNECTOR": str(plan.stage_dir(1) / "connector.safetensors"),
                    "TEMPLATE": "vicuna_v1", "GRADIENT_CHECKPOINTING": "False", "GROUP_BY_MODALITY": "False"}
        _run_step(["bash", str(REPO / "scripts" / script), "--seed", str(plan.seed), "--warmup_ratio",
                   str(recipe.warmup_ratio), "--lr_scheduler_type", recipe.lr_scheduler,
                   "--max_grad_norm", str(recipe.max_grad_norm),
                   "--run_name", f"{plan.label}-stage{stage}"],
                  env, plan, f"stage{stage}", recipes[f"stage{stage}"], f"{plan.label} stage {stage}")
    # Both splits in one process: one model load (the bench files are named after their split).
    _run_step([sys.executable, "-m", "fila_train.cli", "eval", "--model", str(plan.stage_dir(2)),
               "--bench", *(probe[split] for split in SPLITS), "--image_folder", probe["image_folder"],
               "--metric", "exact", "--no_short_answer_prompt", "--max_new_tokens", "4",
               "--batch_size", str(config.eval_batch_size), "--output", str(plan.folder / "eval")],
              common, plan, "eval", recipes["eval"], f"{plan.label} eval")


def plans(config: AblationConfig, output: Path) -> list[RunPlan]:
    # Seeds outermost: with runs in parallel, every variant has its first seed early.
    return [RunPlan(variant, seed, output / "runs" / variant / f"seed{seed}")
            for seed in config.seeds for variant in config.variants]


def run_ablation(config: AblationConfig) -> list[RunPlan]:
    """Prepare models and probe, then train and evaluate every run; raises on the first failed run."""
    output = Path(config.output)
    output.mkdir(parents=True, exist_ok=True)
    models = prepare_models(config, output)
    probe = prepare_probe(config, models, output)
    todo = plans(config, output)
    check_finished_steps(todo, config)
    logger.info("ablation %s: %d variants x %d seeds, %d at a time", config.name, len(config.variants),
                len(config.seeds), config.parallel)
    slots: queue.Queue[int] = queue.Queue()
    for slot in range(config.parallel):
        slots.put(slot)

    def slotted(plan: RunPlan) -> None:
        slot = slots.get()  # a slot (its master port) belongs to one running run at a time
        try:
            run_one(plan, config, models, probe, slot)
        finally:
            slots.put(slot)

    with ThreadPoolExecutor(max_workers=config.parallel) as pool:
        errors = [future.exception() for future in [pool.submit(slotted, plan) for plan in todo]]
    failed = [error for error in errors if error is not None]
    if failed:
        raise failed[0]
    return todo

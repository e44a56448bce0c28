"""What an ablation runs: variants, seeds, models, probe size and the two stages' recipe, as dataclasses.

The defaults are the tiny CPU setup (tiny random-init models from ``fila-train demo prepare``); a YAML file
overrides any field for the real models on a GPU cluster (configs/ablation/fila7b.yaml).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from ..utils.errors import ConfigError
from ..utils.yaml_files import load_yaml

# Exact variant names -> the scripts' model variables (scripts/lib/model_flags.sh). "+mmfuser" after any of
# them adds MMFuser as the connector.
VARIANTS: dict[str, dict[str, str]] = {
    "anyres": {"VISION_ENCODER": "anyres"},
    "fila_concat": {"VISION_ENCODER": "fila_hybrid", "CVFM_FUSION": "concat"},
    "fila_add": {"VISION_ENCODER": "fila_hybrid", "CVFM_FUSION": "add"},
    "fila_cross_attn": {"VISION_ENCODER": "fila_hybrid", "CVFM_FUSION": "cross_attn"},
}
MMFUSER_SUFFIX = "+mmfuser"


def variant_env(name: str) -> dict[str, str]:
    base, plus, rest = name.partition(MMFUSER_SUFFIX)
    if base not in VARIANTS or rest:
        raise ConfigError(f"unknown ablation variant {name!r}; choose from {', '.join(VARIANTS)}, each optionally "
                          f"followed by {MMFUSER_SUFFIX!r}")
    return VARIANTS[base] | ({"CONNECTOR": "mmfuser"} if plus else {})


@dataclass
class StageRecipe:
    """One stage, the same for every variant and seed."""

    max_steps: int
    learning_rate: float
    global_batch_size: int = 16
    per_device_batch_size: int = 16
    max_length: int = 512
    warmup_ratio: float = 0.03
    lr_scheduler: str = "cosine"  # the scripts' schedule; the tiny default keeps stage 2's rate up (docs/ablation.md)
    max_grad_norm: float = 1.0  # the scripts' clipping; 0 turns it off
    # Per-part rates (the scripts' CONNECTOR_LR, CVFM_LR, FUSER_LR); None: the stage's learning_rate. A part a
    # variant does not have ignores its rate, so every variant still runs the same recipe.
    connector_lr: float | None = None
    cvfm_lr: float | None = None
    fuser_lr: float | None = None
    convnext_lr: float | None = None  # set: FILA's ConvNeXt trains too (stage 2 only); None: it stays frozen


@dataclass
class ProbeSettings:
    train: int = 2000
    held_out: int = 200
    seed: int = 0
    canvas: str | None = None  # WxH; default: the canvas with the most tiles


@dataclass
class AblationConfig:
    name: str = "fila-ablation"  # also the wandb group
    output: str = "playground/ablation"
    # The comparison FILA's claim rests on (concat is the paper's fusion); add `fila_add fila_cross_attn` (and
    # `+mmfuser`) with --variants. All four at this recipe take about 31 minutes on 2 cores.
    variants: list[str] = field(default_factory=lambda: ["anyres", "fila_concat"])
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2])
    # The scripts' model variables (MODEL, VISION_TOWER, CONVNEXT_CHECKPOINT, ANYRES_CANVASES, CVFM_LAYERS, ...).
    # Empty: the tiny CPU models of `fila-train demo prepare`, made under OUTPUT/models.
    models: dict[str, str] = field(default_factory=dict)
    # Launch variables for both stages (NPROC_PER_NODE, ZERO_CONFIG, HOSTFILE, ...).
    launch: dict[str, str] = field(default_factory=lambda: {"NPROC_PER_NODE": "1", "DATALOADER_WORKERS": "0",
                                                            "ZERO_CONFIG": "zero_configs/zero2.json"})
    probe: ProbeSettings = field(default_factory=ProbeSettings)
    stage1: StageRecipe = field(default_factory=lambda: StageRecipe(max_steps=40, learning_rate=1e-3, cvfm_lr=1e-2))
    # The tiny recipe (docs/ablation.md): unclipped (gradient norms run at 3-18; clipping at 1 stalled every
    # variant), every part at 1e-3 (the LLM at 3e-4 left FILA's seeds at chance) but CVFM at 1e-2 (its zero
    # gates open too slowly at 1e-3), and the random tiny ConvNeXt trained (its stand-in for CLIP
    # pre-training: frozen, it never learned to carry a seam).
    stage2: StageRecipe = field(default_factory=lambda: StageRecipe(max_steps=600, learning_rate=1e-3,
                                                                    max_grad_norm=0.0, cvfm_lr=1e-2,
                                                                    convnext_lr=1e-3))
    parallel: int = 2  # runs at once (CPU: one per core, one thread each; a GPU node: 1)
    threads_per_run: int | None = 1  # OMP_NUM_THREADS of each run (None: leave it)
    eval_batch_size: int = 32
    report_to: str = "wandb"  # or "none"

    def __post_init__(self) -> None:
        for name in self.variants:
            variant_env(name)
        if len(set(self.variants)) != len(self.variants) or len(set(self.seeds)) != len(self.seeds):
            raise ConfigError("ablation: variants and seeds must not repeat")
        if self.stage1.connector_lr is not None:
            raise ConfigError("ablation: stage1.connector_lr is stage 1's learning_rate (scripts/pretrain.sh)")
        if self.stage1.convnext_lr is not None:
            raise ConfigError("ablation: stage1.convnext_lr: the stage-1 artifact does not carry the ConvNeXt; "
                              "train it in stage 2")
        if not self.variants or not self.seeds or self.parallel < 1:
            raise ConfigError("ablation: needs at least one variant, one seed and parallel >= 1")

    @property
    def tiny(self) -> bool:
        return not self.models


def _build(cls: type, data: dict[str, Any], where: str) -> Any:
    """``cls`` from a (partial) dict; nested dataclasses too; an unknown key names the valid ones."""
    fields = {f.name: f for f in dataclasses.fields(cls)}
    values = {}
    for key, value in data.items():
        if key not in fields:
            raise ConfigError(f"{where}: unknown key {key!r}; valid keys: {', '.join(fields)}")
        kind = fields[key].type
        nested = {"ProbeSettings": ProbeSettings, "StageRecipe": StageRecipe}.get(str(kind))
        if nested is not None:
            if not isinstance(value, dict):
                raise ConfigError(f"{where}: {key} must be a mapping, got {value!r}")
            default = getattr(cls(), key) if cls is AblationConfig else None
            value = _build(nested, (dataclasses.asdict(default) if default else {}) | value, f"{where}: {key}")
        values[key] = value
    try:
        return cls(**values)
    except TypeError as error:
        raise ConfigError(f"{where}: {error}") from None


def load_config(path: str | Path | None, overrides: dict[str, Any] | None = None) -> AblationConfig:
    """The defaults, then the YAML file, then ``overrides`` (top-level keys)."""
    data: dict[str, Any] = {}
    if path is not None:
        try:
            data = load_yaml(Path(path).read_text()) or {}
        except (OSError, yaml.YAMLError) as error:
            raise ConfigError(f"ablation config {path}: {error}") from None
        if not isinstance(data, dict):
            raise ConfigError(f"ablation config {path}: expected a mapping of keys, got {type(data).__name__}")
    return _build(AblationConfig, data | (overrides or {}), str(path or "ablation config"))

"""FILA's CNN branch: a CLIP-pretrained ConvNeXt trunk that returns its four stage maps.

The trunk is OpenCLIP's (``open_clip.create_model(name, pretrained=None).visual.trunk``,
built offline) or, when ``dims``/``depths`` are given, a small timm ConvNeXt for tests and
demos. Real weights come from a local file or folder, never from the network.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ...utils.errors import CheckpointError, ConfigError
from ..options import stored_options
from .clip_encoder import CLIP_MEAN, CLIP_STD, same_normalization

WEIGHT_FILES = ("open_clip_model.safetensors", "open_clip_pytorch_model.bin")  # OpenCLIP's HF-hub layout
CONFIG_FILE = "open_clip_config.json"
# Where the trunk sits in the state dicts we accept: a full CLIP model, a visual tower, a bare trunk.
TRUNK_PREFIXES = ("visual.trunk.", "trunk.", "")
# Layer scale of a random (not loaded) trunk. timm starts it at 1e-6, which makes every block an identity: the
# trunk is then a non-overlapping patchify pyramid in which a last-stage cell sees only its own window, so a random
# ConvNeXt carries nothing across a tile border, the one thing FILA needs it for (docs/ablation.md). 1 is what
# ConvNeXt V2 uses (it has no layer scale); loaded checkpoints keep their own.
RANDOM_LAYER_SCALE = 1.0
STAGES = 4  # strides 4, 8, 16, 32


@dataclass
class ConvNeXtBranchConfig:
    model_name: str = "convnext_large_d_320"
    checkpoint: str | None = None  # state-dict file (.bin/.pt/.pth/.safetensors) or OpenCLIP HF-format folder
    dims: tuple[int, ...] | None = None  # with depths: a small random timm ConvNeXt instead of model_name
    depths: tuple[int, ...] | None = None
    # Frozen and run without grad by default (spec). Training it is `--tune_parts ...,convnext`, which sets
    # requires_grad; this flag only says the build starts it trainable (so it needs `convnext` tuned too).
    trainable: bool = False
    # A fresh build from flags needs a checkpoint unless this says random weights are wanted (tiny models,
    # training the ConvNeXt from scratch): a frozen random ConvNeXt-L is never picked silently.
    random_init: bool = False
    # Normalisation the weights were trained with. None: the checkpoint folder's preprocess_cfg,
    # else the OpenCLIP model's, else the OpenAI CLIP constants.
    mean: tuple[float, float, float] | None = None
    std: tuple[float, float, float] | None = None

    def __post_init__(self) -> None:
        for name in ("dims", "depths", "mean", "std"):
            value = getattr(self, name)
            if value is not None:
                setattr(self, name, tuple(value))
        if (self.dims is None) != (self.depths is None):
            raise ConfigError("ConvNeXtBranchConfig: give both dims and depths, or neither")
        # CVFM fuses one stage per interaction point, and the processor scales the canvas by the total stride
        # (ConvNeXtBranch.total_stride) of exactly this many stages; timm would cut extra ones silently.
        if self.dims is not None and (len(self.dims) != STAGES or len(self.depths) != STAGES
                                      or min(self.dims) < 1 or min(self.depths) < 0):
            raise ConfigError(f"ConvNeXtBranchConfig dims={self.dims} depths={self.depths} (--convnext_dims/"
                              f"--convnext_depths): need {STAGES} stages, each with a width >= 1 and a depth >= 0")

    def to_dict(self) -> dict[str, Any]:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ConvNeXtBranchConfig:
        return stored_options(cls, data)


def check_normalization(mean, std, expected_mean=CLIP_MEAN, expected_std=CLIP_STD, atol: float = 1e-6) -> None:
    """Raise ValueError unless (mean, std) equal the constants the images are normalised with."""
    if not same_normalization(mean, std, expected_mean, expected_std, atol):
        raise ConfigError(
            f"ConvNeXt normalisation mean={tuple(mean)} std={tuple(std)} differs from the ViT's "
            f"mean={tuple(expected_mean)} std={tuple(expected_std)}: both branches read the same normalised "
            "pixels, so the ConvNeXt must be a checkpoint trained with the OpenAI CLIP constants"
        )


def _build_trunk(config: ConvNeXtBranchConfig) -> tuple[nn.Module, tuple | None, tuple | None]:
    """(trunk, mean, std) with random weights; mean/std are the model's own, or None if it has none."""
    if config.dims is not None:
        from timm.models.convnext import ConvNeXt

        return ConvNeXt(depths=config.depths, dims=config.dims, num_classes=0, global_pool=""), None, None
    import open_clip

    # Build on the current default device: from_pretrained builds on meta, and open_clip would
    # otherwise move the model to the CPU.
    model = open_clip.create_model(config.model_name, pretrained=None, device=torch.get_default_device())
    trunk = getattr(model.visual, "trunk", None)
    if trunk is None or not hasattr(trunk, "forward_intermediates"):
        raise ConfigError(f"OpenCLIP model {config.model_name!r} has no timm trunk with forward_intermediates")
    return trunk, getattr(model.visual, "image_mean", None), getattr(model.visual, "image_std", None)


def _weights_path(checkpoint: Path) -> Path:
    if checkpoint.is_file():
        return checkpoint
    for name in WEIGHT_FILES:
        if (checkpoint / name).is_file():
            return checkpoint / name
    raise FileNotFoundError(f"no ConvNeXt weights at {checkpoint} (a file, or a folder with one of {WEIGHT_FILES})")


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """Tensors of a safetensors / torch checkpoint file (loaded as data only, never as pickled code)."""
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path), device="cpu")
    state = torch.load(path, map_location="cpu", weights_only=True)
    for key in ("state_dict", "model"):  # OpenCLIP training checkpoints wrap the weights
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    return {k.removeprefix("module."): v for k, v in state.items() if isinstance(v, torch.Tensor)}


def extract_trunk_state(state: dict[str, torch.Tensor], expected: set[str]) -> dict[str, torch.Tensor]:
    """The trunk's tensors out of a full-CLIP, visual-tower or bare-trunk state dict (prefix stripped)."""
    for prefix in TRUNK_PREFIXES:
        found = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
        if expected <= found.keys():
            return {k: found[k] for k in expected}  # drops heads/projections the trunk does not have
    missing = sorted(expected - {k.removeprefix("visual.trunk.") for k in state})
    raise CheckpointError(
        f"checkpoint does not hold this ConvNeXt trunk (tried prefixes {TRUNK_PREFIXES}); "
        f"{len(missing)} keys missing, e.g. {missing[:3]}; is model_name/dims/depths right?"
    )


def read_folder_normalization(checkpoint: Path) -> tuple[tuple, tuple] | None:
    """(mean, std) from an OpenCLIP folder's open_clip_config.json preprocess_cfg, if it says."""
    config_file = checkpoint / CONFIG_FILE if checkpoint.is_dir() else None
    if config_file is None or not config_file.is_file():
        return None
    preprocess = json.loads(config_file.read_text()).get("preprocess_cfg", {})
    if "mean" in preprocess and "std" in preprocess:
        return tuple(preprocess["mean"]), tuple(preprocess["std"])
    return None


def checked_folder_normalization(config: ConvNeXtBranchConfig, folder: Path) -> tuple[tuple, tuple] | None:
    """The folder's own (mean, std), if it says: it says what its weights were trained with, so options that
    contradict it are refused rather than let talk the normalisation check past it."""
    found = read_folder_normalization(folder)
    if found is not None:
        given = (config.mean or found[0], config.std or found[1])
        if not same_normalization(*given, *found):
            raise ConfigError(f"convnext.mean/std {given[0]} {given[1]} contradict {folder}'s {CONFIG_FILE} "
                              f"(mean {found[0]} std {found[1]}): leave them out")
    return found


def config_folder(checkpoint: str) -> Path | None:
    """Where a checkpoint's open_clip_config.json would lie: a local path, or a hub repo's snapshot (the config
    alone is fetched); None where the hub cannot say now, so loading the weights reports it."""
    if Path(checkpoint).exists():
        return Path(checkpoint)
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import EntryNotFoundError, HfHubHTTPError

    try:
        return Path(hf_hub_download(checkpoint, CONFIG_FILE)).parent
    except (EntryNotFoundError, HfHubHTTPError, ValueError):  # not cached offline, no such repo or file
        return None


def check_checkpoint_normalization(config: ConvNeXtBranchConfig) -> None:
    """The branch's normalisation check (ConvNeXtBranch.check_normalization) from the options and the checkpoint's
    config alone, before any weights load."""
    folder = config_folder(config.checkpoint) if config.checkpoint else None
    found = checked_folder_normalization(config, folder) if folder else None
    mean, std = config.mean or (found and found[0]), config.std or (found and found[1])
    if mean and std:  # else the OpenCLIP model's own, known once it is built
        check_normalization(mean, std)


class ConvNeXtBranch(nn.Module):
    """ConvNeXt trunk -> its 4 stage maps (strides 4, 8, 16, 32); frozen and grad-free by default."""

    total_stride = 32  # the last stage's stride; the processor scales the canvas by total_stride / patch

    def __init__(self, config: ConvNeXtBranchConfig):
        super().__init__()
        self.branch_config = config
        trunk, mean, std = _build_trunk(config)
        # Only stage outputs are used: drop the pooling head so no parameter goes unused.
        trunk.prune_intermediate_layers(len(trunk.stages), prune_head=True)
        self.trunk = trunk
        if config.checkpoint is None:
            with torch.no_grad():
                for name, parameter in trunk.named_parameters():
                    if name.endswith(".gamma"):
                        parameter.fill_(RANDOM_LAYER_SCALE)
        else:
            checkpoint = Path(config.checkpoint)
            state = read_state_dict(_weights_path(checkpoint))
            self.trunk.load_state_dict(extract_trunk_state(state, set(self.trunk.state_dict())), strict=True)
            folder = checked_folder_normalization(config, checkpoint)
            if folder is not None:
                mean, std = folder
        self.mean = tuple(config.mean or mean or CLIP_MEAN)
        self.std = tuple(config.std or std or CLIP_STD)
        self.stage_channels: tuple[int, ...] = tuple(info["num_chs"] for info in self.trunk.feature_info)
        if not config.trainable:
            self.trunk.requires_grad_(False)
        self.train()  # eval unless trainable (see train)

    @property
    def trainable(self) -> bool:
        # Whatever made the parameters trainable (the build, or --tune_parts convnext), the forward follows it:
        # parameters that require grad but run under no_grad would silently never train.
        return any(parameter.requires_grad for parameter in self.trunk.parameters())

    def train(self, mode: bool = True) -> ConvNeXtBranch:
        # A frozen branch stays in eval mode (no drop-path) even when the model around it trains.
        return super().train(mode and self.trainable)

    def check_normalization(self, mean=CLIP_MEAN, std=CLIP_STD) -> None:
        check_normalization(self.mean, self.std, mean, std)

    def forward(self, images: torch.Tensor) -> list[torch.Tensor]:
        """[B, 3, H, W] normalised pixels -> 4 maps [B, C_k, H / (4 * 2^k), W / (4 * 2^k)]."""
        images = images.to(dtype=next(self.trunk.parameters()).dtype)
        with torch.set_grad_enabled(self.trainable and torch.is_grad_enabled()):
            return list(self.trunk.forward_intermediates(images, intermediates_only=True))

    def save(self, directory: str | Path) -> Path:
        """Write an OpenCLIP HF-format folder (``visual.trunk.*`` safetensors + config) that ``load`` reads."""
        from safetensors.torch import save_file

        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        state = {f"visual.trunk.{k}": v.detach().contiguous().cpu() for k, v in self.trunk.state_dict().items()}
        save_file(state, str(directory / WEIGHT_FILES[0]))
        arch = ConvNeXtBranchConfig(**{**asdict(self.branch_config), "checkpoint": None, "mean": None, "std": None})
        meta = {
            "model_cfg": {"fila_convnext_branch": arch.to_dict()},
            "preprocess_cfg": {"mean": list(self.mean), "std": list(self.std)},
        }
        (directory / CONFIG_FILE).write_text(json.dumps(meta, indent=2))
        return directory

    @classmethod
    def load(cls, directory: str | Path, config: ConvNeXtBranchConfig | None = None) -> ConvNeXtBranch:
        """Rebuild from a ``save`` folder (or a real OpenCLIP folder, given ``config`` for its architecture)."""
        directory = Path(directory)
        if config is None:
            meta = json.loads((directory / CONFIG_FILE).read_text())
            config = ConvNeXtBranchConfig.from_dict(meta["model_cfg"]["fila_convnext_branch"])
        return cls(ConvNeXtBranchConfig(**{**asdict(config), "checkpoint": str(directory)}))

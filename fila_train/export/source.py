"""Find and read the weights of a training output folder or a ``checkpoint-N`` folder.

Two kinds of source:

- ``safetensors``: a ``save_pretrained`` folder (``trainer.save_model``): ``model.safetensors``
  or sharded ``model-*.safetensors`` + ``model.safetensors.index.json``. Under ZeRO-3 these are
  the 16-bit weights gathered at save time (the training dtype, not the fp32 masters).
- ``deepspeed``: a ZeRO-2/3 checkpoint (``global_stepN/`` with ``*_model_states.pt`` and
  ``zero_pp_rank_*_optim_states.pt``), consolidated on CPU by DeepSpeed's own ``zero_to_fp32``
  into the fp32 master weights (frozen parameters come in their stored dtype), for any world size.

A ``checkpoint-N`` folder usually holds both; the DeepSpeed fp32 masters are preferred because
the 16-bit save has lost precision. DeepSpeed checkpoint files are Python pickles read with
``torch.load(weights_only=False)``, which can run arbitrary code: export only checkpoints you
trust, or pass ``--source safetensors`` to read the safetensors save alone.
"""
from __future__ import annotations

import json
import logging
import pickle
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file

from ..utils.checkpoint_folders import checkpoint_subfolders
from ..utils.errors import FilaError
from .errors import ExportError

logger = logging.getLogger(__name__)

SAFETENSORS_FILE = "model.safetensors"
SAFETENSORS_INDEX = "model.safetensors.index.json"
CONFIG_FILE = "config.json"
LATEST_FILE = "latest"  # DeepSpeed's pointer to the newest tag (global_stepN) of a checkpoint folder
MODEL_STATES = "*_model_states.pt"
OPTIM_STATES = "zero_pp_rank_*_optim_states.pt"
SOURCES = ("auto", "deepspeed", "safetensors")
LOOKED_FOR = (f"{SAFETENSORS_FILE} or {SAFETENSORS_INDEX} (a save_pretrained folder), or a DeepSpeed "
              f"ZeRO checkpoint (global_stepN/ with {MODEL_STATES} and {OPTIM_STATES}, named by '{LATEST_FILE}')")
PICKLE_WARNING = ("DeepSpeed checkpoint files are Python pickles (torch.load with weights_only=False can run "
                  "code): export only checkpoints you trust, or use --source safetensors")


@dataclass(frozen=True)
class CheckpointSource:
    """Where the weights come from: ``kind`` is "deepspeed" (then ``tag`` is the global_stepN folder) or
    "safetensors"."""

    folder: Path
    kind: str
    tag: str | None = None

    def describe(self) -> str:
        if self.kind == "deepspeed":
            return f"DeepSpeed ZeRO checkpoint {self.folder / self.tag} (fp32 master weights via zero_to_fp32)"
        return f"safetensors save {self.folder} (weights as saved by save_pretrained)"


def has_safetensors(folder: Path) -> bool:
    return (folder / SAFETENSORS_FILE).is_file() or (folder / SAFETENSORS_INDEX).is_file()


def deepspeed_tag(folder: Path) -> str | None:
    """The ZeRO checkpoint tag (``global_stepN``) of ``folder``, or None if it holds no ZeRO checkpoint.

    The tag is the one named by ``latest``; without that file, the only ``global_step*`` folder. ``latest`` without
    any ``global_step*`` folder is a checkpoint pruned to save disk: it holds no ZeRO checkpoint.
    """
    candidates = sorted(p.name for p in folder.glob("global_step*") if p.is_dir())
    latest = folder / LATEST_FILE
    if latest.is_file() and candidates:
        tag = latest.read_text().strip()
        if not (folder / tag).is_dir():
            raise ExportError(f"{latest} names the DeepSpeed tag {tag!r}, but {folder / tag} does not exist "
                              f"(found: {candidates})")
    elif len(candidates) == 1:
        tag = candidates[0]
    elif candidates:
        raise ExportError(f"{folder} holds several DeepSpeed tags {candidates} and no '{LATEST_FILE}' file "
                          f"saying which is current")
    else:
        return None
    tag_folder = folder / tag
    if not any(tag_folder.glob(MODEL_STATES)) or not any(tag_folder.glob(OPTIM_STATES)):
        raise ExportError(f"{tag_folder} is not a complete DeepSpeed ZeRO checkpoint: it needs {MODEL_STATES} "
                          f"and {OPTIM_STATES} files")
    return tag


def find_source(folder: str | Path, prefer: str = "auto") -> CheckpointSource:
    """The weights to export from ``folder``; ``prefer``: "auto" (DeepSpeed fp32 masters when present,
    else the safetensors save), "deepspeed" or "safetensors" (that kind or an error)."""
    if prefer not in SOURCES:
        raise ExportError(f"unknown source {prefer!r}; choose one of {SOURCES}")
    folder = Path(folder)
    if not folder.is_dir():
        raise ExportError(f"checkpoint folder {folder} does not exist (or is not a folder)")
    if not (folder / CONFIG_FILE).is_file():
        raise ExportError(f"{folder} has no {CONFIG_FILE}; an exportable folder is a training output or a "
                          f"checkpoint-N folder holding {CONFIG_FILE} and {LOOKED_FOR}")
    tag = deepspeed_tag(folder) if prefer != "safetensors" else None
    if tag is not None:
        return CheckpointSource(folder, "deepspeed", tag)
    if prefer != "deepspeed" and has_safetensors(folder):
        return CheckpointSource(folder, "safetensors")
    wanted = {"auto": LOOKED_FOR, "deepspeed": "a DeepSpeed ZeRO checkpoint (global_stepN/ with "
              f"{MODEL_STATES} and {OPTIM_STATES})", "safetensors": f"{SAFETENSORS_FILE} or {SAFETENSORS_INDEX}"}
    hint = checkpoint_subfolders(folder)
    extra = f"; it holds {', '.join(hint)}: pass one of those" if hint else ""
    raise ExportError(f"{folder} holds no weights to export: looked for {wanted[prefer]}{extra}")


def read_safetensors(folder: Path) -> dict[str, torch.Tensor]:
    index = folder / SAFETENSORS_INDEX
    if not index.is_file():
        return read_weights_file(folder / SAFETENSORS_FILE)
    try:
        weight_map = json.loads(index.read_text())["weight_map"]
    except (json.JSONDecodeError, KeyError) as error:
        raise ExportError(f"{index}: not a safetensors index (no 'weight_map'): {error}") from None
    state_dict: dict[str, torch.Tensor] = {}
    for shard in sorted(set(weight_map.values())):
        tensors = read_weights_file(folder / shard)
        unlisted = sorted(set(tensors) - {k for k, v in weight_map.items() if v == shard})
        if unlisted:
            raise ExportError(f"{folder / shard} holds tensors its index {index} does not list: {unlisted[:5]}")
        state_dict.update(tensors)
    missing = sorted(set(weight_map) - set(state_dict))
    if missing:
        raise ExportError(f"{index} lists tensors no shard holds: {missing[:5]}")
    return state_dict


def read_deepspeed(folder: Path, tag: str) -> dict[str, torch.Tensor]:
    logger.warning(PICKLE_WARNING)
    # Imported here: exporting a safetensors folder (and importing this package) needs no DeepSpeed.
    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

    state_dict = get_fp32_state_dict_from_zero_checkpoint(str(folder), tag=tag)
    if any(key.endswith(".weight") and not tensor.is_floating_point() for key, tensor in state_dict.items()):
        state_dict |= entries_beyond_parameters(folder / tag, state_dict)  # a quantized (QLoRA) LLM
    return state_dict


def entries_beyond_parameters(tag_folder: Path, state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The module state-dict entries that zero_to_fp32 leaves out, being neither parameters nor buffers: the
    quantization statistics bitsandbytes saves next to the packed weights of a QLoRA LLM (integer matrices).

    Each ``*_model_states.pt`` holds the module's state dict as saved (whole under ZeRO-2); only the entries
    missing from ``state_dict`` are taken, from the first file that has them (memory-mapped, not read whole).
    """
    for path in sorted(tag_folder.glob(MODEL_STATES)):
        # Our own read needs no pickled code (tensors, dicts, sizes): weights_only, unlike zero_to_fp32's.
        module = torch.load(path, map_location="cpu", weights_only=True, mmap=True).get("module") or {}
        extra = {key: value for key, value in module.items() if key not in state_dict}
        if extra:
            logger.info("%s: %d entries beyond the parameters and buffers (quantization statistics) taken from %s",
                        tag_folder, len(extra), path.name)
            return extra
    return {}


def read_state_dict(source: CheckpointSource) -> dict[str, torch.Tensor]:
    logger.info("reading weights from the %s", source.describe())
    if source.kind == "deepspeed":
        # A file cut short or damaged, or as many files as another run's processes (DeepSpeed's ValueError).
        try:
            return read_deepspeed(source.folder, source.tag)
        except FilaError:  # ours: not a file's damage
            raise
        except (OSError, EOFError, RuntimeError, ValueError, pickle.UnpicklingError) as error:
            raise ExportError(f"{source.folder / source.tag}: a DeepSpeed checkpoint file is unreadable "
                              f"({type(error).__name__}: {error}); export another checkpoint") from None
    return read_safetensors(source.folder)


def read_weights_file(path: Path) -> dict[str, torch.Tensor]:
    try:
        return load_file(path)
    except (OSError, SafetensorError) as error:  # a copy cut short: "invalid header length", ...
        raise ExportError(f"{path}: unreadable safetensors file ({error})") from None

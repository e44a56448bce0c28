"""The stage-1 artifact: the aligned connector-side weights as one safetensors file.

It holds every stage-1 part (connector, FILA's CVFM, MMFuser's fuser) and records
which architecture it was trained for, so stage 2 refuses a mismatched file
instead of loading it partially.
"""
from __future__ import annotations

import json
import logging
from pathlib import Path

from safetensors import safe_open

from ..utils.distributed import gathered, is_main_process
from ..utils.files import write_safetensors_atomic
from ..utils.errors import CheckpointError
from .artifact_signature import ARTIFACT_NAME, SIGNATURE_KEY, connector_signature, read_signature, signature_mismatches
from ..model.contracts import VISION_ENCODERS, aligned_parts, encoders_started_by
from ..model.llava_release import llava_projector_file, load_projector

logger = logging.getLogger(__name__)

def _aligned_parameters(model, without: set[str] = frozenset()) -> dict:
    aligned = set(aligned_parts()) - without  # the connector and the sub-parts the contracts mark aligned (cvfm, fuser)
    return {name: parameter for part, params in model.named_parts().items()
            if part in aligned for name, parameter in params}


def _signature(model) -> dict[str, str]:
    config = model.config
    return connector_signature(config.vision_encoder, config.connector_type, config.vision_config.hidden_size,
                               config.text_config.hidden_size, config.vision_feature_layer)


def _sub_parts(vision_encoder: str) -> set[str]:
    return {sub.name for sub in VISION_ENCODERS.get(vision_encoder).sub_parts if sub.aligned}


def save_connector_artifact(model, directory: str | Path) -> Path | None:
    """Collective under ZeRO-3 (every rank must call); only rank 0 writes."""
    path = Path(directory) / ARTIFACT_NAME
    parameters = _aligned_parameters(model)
    with gathered(list(parameters.values())):
        if is_main_process():
            # Keep the trained dtype: stage 2 must see bit-identical weights.
            tensors = {name: p.detach() for name, p in parameters.items()}
            signature = _signature(model) | {"starts": ",".join(encoders_started_by(model.config.vision_encoder))}
            write_safetensors_atomic(path, tensors, metadata={SIGNATURE_KEY: json.dumps(signature)})
            logger.info("wrote connector artifact %s (%d tensors)", path, len(tensors))
            return path
    return None


def is_llava_projector_file(path: Path) -> bool:
    """LLaVA's stage-1 output (``mm_projector.bin``, a torch pickle) rather than our safetensors artifact."""
    return path.suffix == ".bin"


def load_llava_projector(model, path: Path) -> None:
    """LLaVA's stage-1 projector into the connector's MLP, after the same architecture and shape check as our
    artifact; FILA's CVFM and MMFuser's fuser keep their own init (closed gates)."""
    fresh = sorted(set(aligned_parts()) - {"connector"} & set(model.named_parts()))
    if fresh:
        logger.info("LLaVA projector %s: %s keep their own init", path, ", ".join(fresh))
    load_projector(model, llava_projector_file(path), str(path))
    logger.info("loaded LLaVA's stage-1 projector %s", path)


def load_connector_artifact(model, path: str | Path) -> None:
    """Load the stage-1 weights into ``model``; mismatched architecture or keys is an error."""
    path = Path(path)
    if path.is_dir():
        path = path / ARTIFACT_NAME
    if not path.is_file():
        raise FileNotFoundError(f"connector artifact not found: {path}")
    if is_llava_projector_file(path):
        load_llava_projector(model, path)
        return
    signature, expected = read_signature(path), _signature(model)
    mismatches = signature_mismatches(signature, expected)
    if mismatches:
        raise CheckpointError(f"{path} was trained for a different model: {', '.join(mismatches)}")
    # An artifact of another encoder with the same tokens (anyres -> fila_hybrid) lacks this encoder's extra
    # sub-parts; they keep their own init.
    fresh = _sub_parts(model.config.vision_encoder) - _sub_parts(signature["vision_encoder"])
    if fresh:
        logger.info("connector artifact from a stage 1 of %s: %s keep their own init", signature["vision_encoder"],
                    ", ".join(sorted(fresh)))
    parameters = _aligned_parameters(model, without=fresh)
    with safe_open(str(path), framework="pt") as handle:
        keys = set(handle.keys())
        missing, unexpected = sorted(set(parameters) - keys), sorted(keys - set(parameters))
        if missing or unexpected:
            raise CheckpointError(f"{path} does not match the model: missing {missing[:5]}, "
                                  f"unexpected {unexpected[:5]}")
        # Every shape is checked before anything is copied: copy_ would broadcast a (1,) gate into (dim,).
        # ds_shape is a ZeRO-3 parameter's full shape (its own shape is its partition's).
        for name, parameter in parameters.items():
            shape, expected = tuple(handle.get_slice(name).get_shape()), tuple(getattr(parameter, "ds_shape",
                                                                                      parameter.shape))
            if shape != expected:
                raise CheckpointError(f"{path}: {name} has shape {shape}, the model expects {expected} (a stage 1 "
                                      f"with other --vision_option / --connector_option values?)")
        with gathered(list(parameters.values()), modifier_rank=0):
            for name, parameter in parameters.items():
                parameter.data.copy_(handle.get_tensor(name).to(parameter.dtype))
    logger.info("loaded connector artifact %s (%d tensors)", path, len(parameters))

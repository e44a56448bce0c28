"""The checks a run passes before anything slow: names, paths, the DeepSpeed config, the stage-1
connector's header and the checkpoint to resume from, in well under a second.

Importing the trainer takes torch, transformers and peft (about 20 s here), and loading a 7B model
under ZeRO-3 takes minutes: a typo must not cost either. Only light modules are imported here, and the
launcher scripts run this once before starting any worker (``python -m fila_train.training.preflight``).
Each problem is one line naming the flag, the file and what is wrong.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import sys
from pathlib import Path

from ..data.mixture import MixtureError, load_mixture
from ..model.contracts import (  # names only: no torch
    CONNECTORS, DEFAULT_CONNECTOR, DEFAULT_VISION_ENCODER, DEFAULT_VISION_FEATURE_LAYER, VISION_ENCODERS)
from ..model.llava_layout import PROJECTOR_DEPTHS, release_layout, release_projector_type
from ..processing.chat_templates import TEMPLATES
from ..utils.errors import ConfigError
from .artifact_signature import ARTIFACT_NAME, connector_signature, read_signature, signature_mismatches
from .checkpoints import CheckpointError, resolve_resume
from .deepspeed_config import check_deepspeed_config
from .llava_flags import translate_llava_flags

HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")  # "org/name" or "name": a hub model id, not a path


class PreflightError(ConfigError):
    """A run that cannot start; the message is one line naming the flag and what is wrong."""


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
    for flag in ("model_name_or_path", "vision_tower", "vision_encoder", "connector_type", "vision_feature_layer",
                 "conversation_template",
                 "convnext_checkpoint", "pretrained_connector", "data_path", "image_folder", "data_root",
                 "deepspeed", "max_grad_norm", "resume_from_checkpoint", "output_dir"):
        # HfArgumentParser takes the dashed spelling too (--output-dir).
        parser.add_argument(f"--{flag}", f"--{flag.replace('_', '-')}", dest=flag)
    return parser


def output_dir_of(argv: list[str]) -> str | None:
    return _parser().parse_known_args(argv)[0].output_dir


def read_config(folder: Path) -> dict | None:
    path = folder / "config.json"
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except ValueError as error:
        raise PreflightError(f"{path}: not valid JSON ({error})") from None


def check_model_path(flag: str, value: str | None, required: bool = True) -> dict | None:
    """A local folder's config.json (None for a hub id, which only the hub can check)."""
    if value is None:
        if required:
            raise PreflightError(f"--{flag} is required")
        return None
    path = Path(value).expanduser()
    if path.is_dir():
        config = read_config(path)
        if config is None:
            raise PreflightError(f"--{flag} {value}: the folder has no config.json (not a transformers model folder)")
        return config
    if path.exists():
        raise PreflightError(f"--{flag} {value}: expected a model folder, found a file")
    if not HUB_ID.match(value):
        raise PreflightError(f"--{flag} {value}: no such folder")
    if os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes", "on"):
        from huggingface_hub import try_to_load_from_cache

        cached = try_to_load_from_cache(value, "config.json")
        if not isinstance(cached, str):
            raise PreflightError(f"--{flag} {value}: no such folder, and not in the hub cache (HF_HUB_OFFLINE is set, "
                                 f"so the hub cannot be asked)")
        return read_config(Path(cached).parent)
    return None


def check_choice(flag: str, value: str | None, choices) -> None:
    if value is not None and value not in choices:
        raise PreflightError(f"--{flag} {value!r} is not one of: {', '.join(sorted(choices))}")


def check_file(flag: str, value: str | None) -> Path | None:
    if value is None:
        return None
    path = Path(value).expanduser()
    if not path.is_file():
        raise PreflightError(f"--{flag} {value}: {'is a folder, not a file' if path.is_dir() else 'no such file'}")
    return path


def check_folder(flag: str, value: str | None) -> None:
    if value is not None and not Path(value).expanduser().is_dir():
        raise PreflightError(f"--{flag} {value}: no such folder")


def check_deepspeed(value: str | None, max_grad_norm: str | None) -> None:
    path = check_file("deepspeed", value)
    if path is None:
        return
    try:
        config = json.loads(path.read_text())
    except ValueError as error:
        raise PreflightError(f"--deepspeed {value}: not valid JSON ({error})") from None
    if not isinstance(config, dict):
        raise PreflightError(f"--deepspeed {value}: expected a JSON object (a DeepSpeed config)")
    try:
        clipping = None if max_grad_norm is None else float(max_grad_norm)
    except ValueError:
        return  # the full parser names the bad number
    try:
        check_deepspeed_config(config, value, clipping)
    except ConfigError as error:
        raise PreflightError(str(error)) from None


def check_data(args: argparse.Namespace) -> None:
    if args.data_path is None:
        raise PreflightError("--data_path is required (a LLaVA annotation file or a mixture .yaml)")
    if args.data_path.endswith((".yaml", ".yml")):
        try:
            spec = load_mixture(args.data_path, args.data_root)
        except MixtureError as error:
            raise PreflightError(f"--data_path: {error}") from None
        for source in spec.sources:
            for annotations in source.annotations:
                if not Path(annotations).is_file():
                    raise PreflightError(f"--data_path {args.data_path}: source {source.name!r}: annotation file "
                                         f"{annotations} not found")
            if source.image_root is not None and not Path(source.image_root).is_dir():
                raise PreflightError(f"--data_path {args.data_path}: source {source.name!r}: image_root "
                                     f"{source.image_root} is not a folder")
        return
    check_file("data_path", args.data_path)
    check_folder("image_folder", args.image_folder)


def hidden_size(config: dict) -> int | None:
    """hidden_size of a model config, or of its vision / text part (CLIP and multimodal folders nest it)."""
    for section in (config, config.get("vision_config") or {}, config.get("text_config") or {}):
        if "hidden_size" in section:
            return section["hidden_size"]
    return None


def connector_depth(connector_type: str) -> int | None:
    """Linear layers in a connector's MLP, for the projectors LLaVA has (mmfuser ends in mlp2x_gelu's)."""
    return {**PROJECTOR_DEPTHS, "mmfuser": PROJECTOR_DEPTHS["mlp2x_gelu"]}.get(connector_type)


def check_release_connector(args: argparse.Namespace, model: dict, layout: str) -> None:
    connector = args.connector_type or DEFAULT_CONNECTOR
    projector = release_projector_type(model)
    if connector_depth(connector) != PROJECTOR_DEPTHS.get(projector):
        raise PreflightError(f"--model_name_or_path {args.model_name_or_path} is an {layout} model with LLaVA's "
                             f"{projector} projector, which --connector_type {connector} cannot start from")


def check_llava_projector(path: Path, args: argparse.Namespace, model: dict | None, tower: dict | None) -> None:
    """LLaVA's stage-1 mm_projector.bin: a torch pickle, so torch is imported for this check only."""
    from ..model.llava_release import check_projector_fits, llava_projector_file

    vision = hidden_size((tower or {}).get("vision_config") or tower or {}) if tower else None
    llm = text_hidden_size(model) if model is not None else None
    try:
        projector = llava_projector_file(path)
        depth = connector_depth(args.connector_type or DEFAULT_CONNECTOR)
        if depth is None:
            raise PreflightError(f"--pretrained_connector {path} is LLaVA's projector, which --connector_type "
                                 f"{args.connector_type} has none of")
        if vision is not None and llm is not None:
            check_projector_fits(projector, depth, vision, llm, str(path))
    except CheckpointError as error:
        raise PreflightError(f"--pretrained_connector {error}") from None


def text_hidden_size(config: dict) -> int | None:
    """The LLM's width: a composite config's text part (fila, llava-hf), else the config itself."""
    return hidden_size(config.get("text_config") or config)


def check_pretrained_connector(args: argparse.Namespace, model: dict | None, tower: dict | None) -> None:
    """The artifact's header against the model the flags describe (sizes from the config files)."""
    if not args.pretrained_connector:  # unset, or "" from a script variable left empty
        return
    path = Path(args.pretrained_connector).expanduser()
    if path.is_dir():
        path = path / ARTIFACT_NAME
    check_file("pretrained_connector", str(path))
    if path.suffix == ".bin":
        check_llava_projector(path, args, model, tower)
        return
    try:
        signature = read_signature(path)
    except Exception as error:  # safetensors reports a bad header in several exception types
        raise PreflightError(f"--pretrained_connector {path}: not a readable safetensors file ({error})") from None
    if model is not None and model.get("model_type") == "fila":
        expected = connector_signature(model.get("vision_encoder", DEFAULT_VISION_ENCODER),
                                       model.get("connector_type", DEFAULT_CONNECTOR),
                                       hidden_size(model.get("vision_config") or {}),
                                       hidden_size(model.get("text_config") or {}),
                                       model.get("vision_feature_layer", DEFAULT_VISION_FEATURE_LAYER))
    elif model is not None and tower is not None:
        expected = connector_signature(args.vision_encoder or DEFAULT_VISION_ENCODER,
                                       args.connector_type or DEFAULT_CONNECTOR,
                                       hidden_size(tower.get("vision_config") or tower), text_hidden_size(model),
                                       args.vision_feature_layer or DEFAULT_VISION_FEATURE_LAYER)
    else:
        return  # a hub model: its sizes are known once it is loaded (load_connector_artifact checks again)
    mismatches = signature_mismatches(signature, expected)
    if mismatches:
        raise PreflightError(f"--pretrained_connector {path} was trained for a different model: "
                             f"{', '.join(mismatches)}")


def preflight(argv: list[str]) -> None:
    """Raise PreflightError naming the first problem in ``argv`` (``fila-train train`` flags)."""
    if "-h" in argv or "--help" in argv:
        return  # the full parser prints the help
    argv, _ = translate_llava_flags(argv)
    args, _ = _parser().parse_known_args(argv)
    check_choice("conversation_template", args.conversation_template, TEMPLATES.names())
    check_choice("vision_encoder", args.vision_encoder, VISION_ENCODERS.names())
    check_choice("connector_type", args.connector_type, CONNECTORS.names())
    model = check_model_path("model_name_or_path", args.model_name_or_path)
    is_fila = model is not None and model.get("model_type") == "fila"
    llava = release_layout(model)
    # A LLaVA release brings its tower (llava-hf holds it, original LLaVA names it in mm_vision_tower).
    tower = check_model_path("vision_tower", args.vision_tower or (model or {}).get("mm_vision_tower"),
                             required=model is not None and not is_fila and llava is None)
    if llava is not None:
        check_release_connector(args, model, llava)
    if args.convnext_checkpoint is not None and not HUB_ID.match(args.convnext_checkpoint) \
            and not Path(args.convnext_checkpoint).expanduser().exists():
        raise PreflightError(f"--convnext_checkpoint {args.convnext_checkpoint}: no such file or folder")
    check_data(args)
    check_deepspeed(args.deepspeed, args.max_grad_norm)
    check_pretrained_connector(args, model, tower)
    if args.resume_from_checkpoint is not None:
        try:
            resolve_resume(args.resume_from_checkpoint, args.output_dir or "output")
        except CheckpointError as error:
            raise PreflightError(str(error)) from None


def main(argv: list[str] | None = None) -> int:
    """For the launcher scripts: exit 1 with one line on stderr when the run cannot start."""
    try:
        preflight(sys.argv[1:] if argv is None else argv)
    except ConfigError as error:  # a PreflightError, or a LLaVA flag value we do not implement
        print(f"[fila-train] error: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""LLaVA's training flags, as aliases of ours: a LLaVA script's flag line runs here unchanged.

Each alias becomes our own flag before anything parses the command line, and the run logs one line naming
it. A value whose LLaVA meaning is not implemented here is refused with one line saying so, never dropped.
"""
from __future__ import annotations

import argparse
from dataclasses import dataclass, field

from ..model.contracts import CONNECTORS, DEFAULT_CONNECTOR, DEFAULT_VISION_ENCODER, VISION_ENCODERS
from ..processing.chat_templates import TEMPLATES
from ..utils.errors import ConfigError

TRUE, FALSE = "True", "False"
ALIGNED = "{aligned}"  # in a value: the connector side of the selected model (connector, cvfm, fuser)


@dataclass(frozen=True)
class LlavaFlag:
    """One LLaVA flag: the flag of ours it sets, and its LLaVA values -> ours."""

    ours: str | None  # None: every accepted value is already our behaviour, nothing is set
    # LLaVA value -> our value (None: nothing to set); an empty dict takes any value as it is.
    values: dict[str, str | None] = field(default_factory=dict)
    refused: str = ""  # what LLaVA does with the other values, which we do not implement
    boolean: bool = False
    llava: bool = True  # False: transformers' old name of one of its flags (any HF script has it, not only LLaVA's)


LLAVA_FLAGS: dict[str, LlavaFlag] = {
    "version": LlavaFlag("conversation_template", {
        "plain": "plain", "v1": "vicuna_v1", "vicuna_v1": "vicuna_v1", "llava_v1": "llava_v1",
        "llava_llama_3": "llava_llama_3"}, "that conversation version has no template here; --conversation_template "
                                    f"takes {', '.join(TEMPLATES.names())}"),
    "mm_projector_type": LlavaFlag("connector_type", {"linear": "linear", "mlp2x_gelu": "mlp2x_gelu"},
                                   "that projector is not implemented; --connector_type takes linear, mlp2x_gelu "
                                   "or mmfuser"),
    "pretrain_mm_mlp_adapter": LlavaFlag("pretrained_connector"),
    "mm_vision_select_layer": LlavaFlag("vision_feature_layer"),
    "mm_vision_select_feature": LlavaFlag(None, {"patch": None},
                                          "only patch features go to the connector here (no CLS token)"),
    "mm_use_im_start_end": LlavaFlag(None, {FALSE: None}, "image start/end tokens are not implemented",
                                     boolean=True),
    "mm_use_im_patch_token": LlavaFlag(None, {FALSE: None}, "image patch tokens are not implemented",
                                       boolean=True),
    # LLaVA: True trains the projector alone (stage 1), False everything but the vision tower (stage 2).
    "tune_mm_mlp_adapter": LlavaFlag("tune_parts", {TRUE: ALIGNED, FALSE: ALIGNED + ",llm"}, boolean=True),
    "freeze_backbone": LlavaFlag(None, {FALSE: None}, "LLaVA then trains the LM head alone (with "
                                                      "--tune_mm_mlp_adapter False); choose parts with --tune_parts",
                                 boolean=True),
    "image_aspect_ratio": LlavaFlag(None, {"pad": None},
                                    "the clip encoder pads to a square (LLaVA-1.5's 'pad'); for tiles use "
                                    "--vision_encoder anyres or fila_hybrid (LLaVA-NeXT's unpadded anyres "
                                    "layout with newline tokens is not implemented)"),
    "mm_vision_tower_lr": LlavaFlag("vision_lr"),
    "mm_projector_lr": LlavaFlag("connector_lr"),
    "lazy_preprocess": LlavaFlag(None, {TRUE: None}, "samples are always prepared lazily here", boolean=True),
    # transformers' old names, in every LLaVA script (the old names warn as deprecated).
    "evaluation_strategy": LlavaFlag("eval_strategy", llava=False),
    "gradient_checkpointing": LlavaFlag("activation_checkpointing", boolean=True, llava=False),
}
PARTS_FLAG = "tune_mm_mlp_adapter"
LLAVA_DEFAULT_PARTS = FALSE  # LLaVA's default: its stage 2 (scripts/v1_5/finetune.sh) does not give the flag


def llava_names(ours: str) -> str:
    """" (LLaVA's --alias)" when LLaVA spells our flag ``ours`` otherwise: an error names the flag as it was given."""
    names = [f"--{name}" for name, flag in LLAVA_FLAGS.items() if flag.ours == ours]
    return f" (LLaVA's {' or '.join(names)})" if names else ""


def _boolean(flag: str, value: str) -> str:
    lowered = value.lower()
    if lowered in ("true", "yes", "t", "y", "1"):
        return TRUE
    if lowered in ("false", "no", "f", "n", "0"):
        return FALSE
    raise ConfigError(f"--{flag} {value!r}: expected True or False")


def _split(argv: list[str], index: int) -> tuple[str, str | None, int]:
    """The flag at ``index``: (name, value or None, index after it); ``--flag=value`` or ``--flag value``."""
    name, sep, value = argv[index][2:].partition("=")
    if sep:
        return name, value, index + 1
    if index + 1 < len(argv) and not argv[index + 1].startswith("--"):
        return name, argv[index + 1], index + 2
    return name, None, index + 1


def _aligned_parts(argv: list[str]) -> str:
    """The connector side of the model ``argv`` selects: what LLaVA's "mm_mlp_adapter" is for FILA / MMFuser."""
    parser = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
    parser.add_argument("--vision_encoder", default=DEFAULT_VISION_ENCODER)
    parser.add_argument("--connector_type", default=DEFAULT_CONNECTOR)
    selected, _ = parser.parse_known_args(argv)
    subs = [sub.name for contract in (VISION_ENCODERS.get(selected.vision_encoder),
                                      CONNECTORS.get(selected.connector_type))
            for sub in contract.sub_parts if sub.aligned]
    return ",".join(["connector", *subs])


def given_flags(argv: list[str]) -> set[str]:
    """The flags ``argv`` gives, spelled with underscores (HfArgumentParser takes --tune-parts too)."""
    return {item[2:].partition("=")[0].replace("-", "_") for item in argv if item.startswith("--")}


def _llava_default_parts(argv: list[str]) -> tuple[list[str], list[str]]:
    """A LLaVA flag line that chooses no parts trains what LLaVA's default --tune_mm_mlp_adapter False trains
    (the LLM and the projector), not our default (the connector alone): its flag and its note, or nothing."""
    given = given_flags(argv)
    if "tune_parts" in given or PARTS_FLAG in given or not any(
            LLAVA_FLAGS[name].llava for name in given & LLAVA_FLAGS.keys()):
        return [], []
    parts = LLAVA_FLAGS[PARTS_FLAG].values[LLAVA_DEFAULT_PARTS].replace(ALIGNED, _aligned_parts(argv))
    return [f"--tune_parts={parts}"], [f"LLaVA's --{PARTS_FLAG} {LLAVA_DEFAULT_PARTS} (its default: not given) is "
                                       f"--tune_parts {parts} here: the LLM and the connector train"]


def _last_values(argv: list[str], names: tuple[str, ...]) -> dict[str, str]:
    """The last value ``argv`` gives each of ``names`` (either spelling: --warmup_steps, --warmup-steps)."""
    values: dict[str, str] = {}
    index = 0
    while index < len(argv):
        if not argv[index].startswith("--"):
            index += 1
            continue
        name, value, index = _split(argv, index)
        if name.replace("-", "_") in names and value is not None:
            values[name.replace("-", "_")] = value
    return values


def _warmup_note(argv: list[str]) -> list[str]:
    """transformers 4's --warmup_ratio (in every LLaVA script, and ours) yields to a --warmup_steps above 0, as it
    did there (TrainingArguments.__post_init__ applies it): the run says so, the scripts always pass a ratio."""
    given = _last_values(argv, ("warmup_steps", "warmup_ratio"))
    try:
        steps_win = "warmup_ratio" in given and float(given.get("warmup_steps", 0)) > 0
    except ValueError:
        return []  # the parser names the bad value
    if not steps_win:
        return []
    return [f"--warmup_steps {given['warmup_steps']} wins over --warmup_ratio {given['warmup_ratio']} (as in "
            f"transformers 4: a warmup_steps above 0 decides)"]


def translate_llava_flags(argv: list[str]) -> tuple[list[str], list[str]]:
    """``argv`` with LLaVA's flags replaced by ours (in place, so the last of two still wins), and one note per
    alias used, LLaVA default applied or warmup flag overruled. A LLaVA value we do not implement is a ConfigError
    naming the flag and why."""
    translated, notes = _llava_default_parts(argv)
    notes += _warmup_note(argv)
    index = 0
    while index < len(argv):
        if not argv[index].startswith("--") or argv[index][2:].partition("=")[0] not in LLAVA_FLAGS:
            translated.append(argv[index])
            index += 1
            continue
        name, value, index = _split(argv, index)
        alias = LLAVA_FLAGS[name]
        if value is None:
            if not alias.boolean:
                raise ConfigError(f"--{name} needs a value")
            value = TRUE
        if alias.boolean:
            value = _boolean(name, value)
        if alias.values and value not in alias.values:
            raise ConfigError(f"LLaVA's --{name} {value}: {alias.refused} (accepted: {', '.join(alias.values)})")
        ours = alias.values.get(value, value) if alias.values else value
        if alias.ours is None or ours is None:
            notes.append(f"LLaVA's --{name} {value} is how fila-train works already: nothing to set")
            continue
        if ALIGNED in ours:
            ours = ours.replace(ALIGNED, _aligned_parts(argv))
        translated.append(f"--{alias.ours}={ours}")  # '=': values such as -2 start with '-'
        notes.append(f"LLaVA's --{name} {value} is --{alias.ours} {ours} here")
    return translated, notes

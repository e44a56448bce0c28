"""Tunable parts: freeze/unfreeze by part, per-part optimizer groups, the parameter table."""
from __future__ import annotations

from torch import nn

from ..model import known_parts
from ..model.contracts import part_prefixes
from ..model.lora import is_lora_parameter
from ..utils.tables import format_table  # noqa: F401  (re-exported for callers)
from ..utils.errors import ConfigError


# With LoRA the LLM's adapters get their own row next to the (frozen) base LLM.
LORA_ROW = "llm (lora)"


def table_rows() -> tuple[str, ...]:
    return tuple(row for part in known_parts() for row in ((part, LORA_ROW) if part == "llm" else (part,)))


def check_parts_exist(parts: list[str], learning_rates: dict[str, float], vision_encoder: str,
                      connector_type: str, saved_model: str | None = None) -> None:
    """Every part named to train, or given a learning rate, is in the model: a part it lacks would be skipped
    without a word (the flags are checked against every registered encoder's and connector's parts).
    ``saved_model``: the saved fila model the run starts from, whose parts no flag changes."""
    present = {part for _, part in part_prefixes(vision_encoder, connector_type)}
    has = [name for name in known_parts() if name in present]
    lacks = f"(vision encoder {vision_encoder!r}, connector {connector_type!r}) does not have: its parts are " \
            f"{', '.join(has)}; drop it"
    if saved_model is None:
        model = f"this model {lacks}, or choose the vision encoder or connector that has it"
    else:
        model = (f"the saved model {saved_model} {lacks} (a saved model keeps the vision encoder and connector it "
                 f"was built with: --vision_encoder and --connector_type do not change them)")
    for part in parts:
        if part not in has:
            raise ConfigError(f"--tune_parts {','.join(parts)!r} names {part}, which {model}")
    for part in learning_rates:
        if part not in has:
            raise ConfigError(f"a learning rate for {part} (--{part}_lr or --part_lr), which {model}")


def check_rates_train(parts: list[str], rate_flags: dict[str, str]) -> None:
    """A learning rate for a part that stays frozen would be dropped without a word (no optimizer group has it).
    ``rate_flags``: part -> the flag that gives it a rate."""
    for part, flag in rate_flags.items():
        if part not in parts:
            raise ConfigError(f"{flag} is a learning rate for {part}, which --tune_parts {','.join(parts)!r} does "
                              f"not train: add {part} to --tune_parts, or drop the rate")


def apply_tune_parts(model, parts: list[str]) -> None:
    """Train exactly the named parts; everything else is frozen. With LoRA adapters on the LLM,
    part "llm" means the adapter weights only: the base LLM stays frozen."""
    lora = model.config.lora is not None
    for part, params in model.named_parts().items():
        for name, parameter in params:
            frozen_base = lora and part == "llm" and not is_lora_parameter(name)
            parameter.requires_grad_(part in parts and not frozen_base)


def table_row(part: str, name: str) -> str:
    return LORA_ROW if part == "llm" and is_lora_parameter(name) else part


def numel(parameter: nn.Parameter) -> int:
    # Under ZeRO-3 a partitioned parameter is empty locally; ds_numel is its full size.
    return getattr(parameter, "ds_numel", parameter.numel())


def parameter_table(model) -> list[tuple[str, int, int]]:
    """(part, total, trainable) for every part present, in architecture order; LoRA adapters as "llm (lora)"."""
    by_row: dict[str, list[nn.Parameter]] = {}
    for part, params in model.named_parts().items():
        for name, parameter in params:
            by_row.setdefault(table_row(part, name), []).append(parameter)
    return [(row, sum(numel(p) for p in by_row[row]), sum(numel(p) for p in by_row[row] if p.requires_grad))
            for row in table_rows() if row in by_row]


def format_parameter_table(model) -> str:
    rows = parameter_table(model)
    total = sum(r[1] for r in rows)
    trainable = sum(r[2] for r in rows)
    body = [[part, f"{t:,}", f"{tr:,}", f"{100 * tr / max(t, 1):.1f}%"] for part, t, tr in rows]
    body.append(["all", f"{total:,}", f"{trainable:,}", f"{100 * trainable / max(total, 1):.1f}%"])
    return format_table(["part", "parameters", "trainable", "share"], body)


def optimizer_groups(model, args, decay_names: set[str]) -> list[dict]:
    """One group per (part, decay) so each part can have its own learning rate."""
    groups: dict[tuple[str, bool], dict] = {}
    for part, params in model.named_parts().items():
        for name, parameter in params:
            if not parameter.requires_grad:
                continue
            decay = name in decay_names
            group = groups.setdefault((part, decay), {
                "params": [], "lr": args.part_learning_rate(part),
                "weight_decay": args.weight_decay if decay else 0.0, "part": part})
            group["params"].append(parameter)
    if not groups:
        raise ConfigError(f"--tune_parts {args.tune_parts!r} leaves no trainable parameter in this model")
    return list(groups.values())

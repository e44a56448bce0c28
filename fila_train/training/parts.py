"""Tunable parts: freeze/unfreeze by part, per-part optimizer groups, the parameter table."""
from __future__ import annotations

from torch import nn

from ..model import PARTS


def apply_tune_parts(model, parts: list[str]) -> None:
    """Train exactly the named parts; everything else is frozen."""
    for part, params in model.named_parts().items():
        for _, parameter in params:
            parameter.requires_grad_(part in parts)


def numel(parameter: nn.Parameter) -> int:
    # Under ZeRO-3 a partitioned parameter is empty locally; ds_numel is its full size.
    return getattr(parameter, "ds_numel", parameter.numel())


def parameter_table(model) -> list[tuple[str, int, int]]:
    """(part, total, trainable) for every part present, in architecture order."""
    parts = model.named_parts()
    rows = []
    for part in PARTS:
        if part in parts:
            params = [p for _, p in parts[part]]
            rows.append((part, sum(numel(p) for p in params),
                         sum(numel(p) for p in params if p.requires_grad)))
    return rows


def format_table(headers: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(str(x)) for x in column) for column in zip(headers, *rows)]
    line = lambda cells: "  ".join(str(c).rjust(w) if i else str(c).ljust(w)
                                   for i, (c, w) in enumerate(zip(cells, widths)))
    return "\n".join([line(headers), line(["-" * w for w in widths])] + [line(r) for r in rows])


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
        raise ValueError(f"--tune_parts {args.tune_parts!r} leaves no trainable parameter in this model")
    return list(groups.values())

"""Mixture specs: which annotation sources a run trains on, and how much of each.

A YAML file lists sources; each has annotation file(s), an image root, one sampling rule
and optional overrides. The selection is a pure function of (spec, record counts, seed):
every rank computes the same plan, and a resumed run skips into the same order.

    seed: 42
    root: ../playground/data          # relative paths below start here (this file's folder if unset)
    total: 600000                     # only with weight rules: the weighted sources share it
    sources:
      - name: docvqa
        annotations: docvqa/train.jsonl      # a path or a list of paths
        image_root: docvqa
        repeat: 2.0                          # or samples: 50000, or weight: 0.1
        template: vicuna_v1                  # optional overrides
        max_tiles: 4
"""
from __future__ import annotations

import math

import zlib
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from ..utils.tables import format_table
from ..utils.yaml_files import DuplicateKeyError, load_yaml
from ..utils.errors import ConfigError

Canvas = tuple[int, int]
SAMPLING_RULES = ("repeat", "samples", "weight")
SOURCE_KEYS = {"name", "annotations", "image_root", *SAMPLING_RULES, "template", "canvases", "max_tiles",
               "allow_absolute_paths"}
MIXTURE_KEYS = {"seed", "root", "total", "sources"}


class MixtureError(ConfigError):
    """A mixture spec that cannot be used; the message names the file, source and field."""


@dataclass(frozen=True)
class SourceSpec:
    name: str
    annotations: tuple[Path, ...]
    image_root: Path | None = None
    repeat: float | None = None
    samples: int | None = None
    weight: float | None = None
    template: str | None = None
    canvases: tuple[Canvas, ...] | None = None
    max_tiles: int | None = None
    allow_absolute_paths: bool = False

    @property
    def rule(self) -> str:
        """The sampling rule as written (repeat 1.0 when none is given)."""
        if self.samples is not None:
            return f"samples: {self.samples}"
        if self.weight is not None:
            return f"weight: {self.weight:g}"
        return f"repeat: {1.0 if self.repeat is None else self.repeat:g}"


@dataclass(frozen=True)
class MixtureSpec:
    sources: tuple[SourceSpec, ...]
    seed: int = 0
    total: int | None = None
    path: Path | None = None

    def describe(self) -> str:
        return str(self.path) if self.path else "the mixture"


@dataclass
class SourcePlan:
    name: str
    annotations: list[str]
    image_root: str | None
    rule: str
    records: int
    sampled: int


@dataclass
class MixturePlan:
    """The resolved selection: per source counts, and (source, record) for every position."""

    sources: list[SourcePlan]
    source_of: np.ndarray
    record_of: np.ndarray
    seed: int
    mixture: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.source_of)

    def to_dict(self) -> dict[str, Any]:
        return {"mixture": self.mixture, "seed": self.seed, "total": len(self),
                "sources": [asdict(source) for source in self.sources], **self.extra}

    def format_table(self) -> str:
        rows = [[s.name, s.rule, f"{s.records:,}", f"{s.sampled:,}",
                 f"{100 * s.sampled / max(len(self), 1):.1f}%"] for s in self.sources]
        rows.append(["total", "", f"{sum(s.records for s in self.sources):,}", f"{len(self):,}", "100%"])
        return format_table(["source", "rule", "records", "sampled", "share"], rows)


def _paths(value: Any, root: Path, where: str) -> tuple[Path, ...]:
    items = value if isinstance(value, list) else [value]
    if not items or not all(isinstance(item, str) and item for item in items):
        raise MixtureError(f"{where}: must be a path or a non-empty list of paths, got {value!r}")
    return tuple(root / item for item in items)


def _number(value: Any, where: str, kind: type, positive: bool = True) -> Any:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or (kind is int and not isinstance(value, int)):
        raise MixtureError(f"{where}: must be {'an integer' if kind is int else 'a number'}, got {value!r}")
    if not math.isfinite(value):  # YAML's .nan / .inf: no count comes of them
        raise MixtureError(f"{where}: must be a finite number, got {value!r}")
    if (value <= 0 if positive else value < 0):
        raise MixtureError(f"{where}: must be {'> 0' if positive else '>= 0'}, got {value!r}")
    return kind(value)


def _canvases(value: Any, where: str) -> tuple[Canvas, ...]:
    try:
        canvases = tuple((int(w), int(h)) for w, h in (str(item).lower().split("x") for item in value))
    except (TypeError, ValueError):
        raise MixtureError(f"{where}: must be a list of WxH canvases such as [672x672, 336x672], "
                           f"got {value!r}") from None
    if not canvases:
        raise MixtureError(f"{where}: is empty")
    return canvases


def _source(entry: Any, index: int, root: Path, where: str) -> SourceSpec:
    if not isinstance(entry, dict):
        raise MixtureError(f"{where}: sources[{index}] must be a mapping, got {entry!r}")
    name = entry.get("name")
    here = f"{where}: source {name!r}" if isinstance(name, str) and name else f"{where}: sources[{index}]"
    if not isinstance(name, str) or not name:
        raise MixtureError(f"{here}: field 'name' is required")
    unknown = sorted(set(entry) - SOURCE_KEYS)
    if unknown:
        raise MixtureError(f"{here}: unknown field(s) {unknown}; known: {sorted(SOURCE_KEYS)}")
    if "annotations" not in entry:
        raise MixtureError(f"{here}: field 'annotations' is required")
    rules = [rule for rule in SAMPLING_RULES if rule in entry]
    if len(rules) > 1:
        raise MixtureError(f"{here}: give one sampling rule, not {rules}")
    image_root = entry.get("image_root")
    if image_root is not None and not (isinstance(image_root, str) and image_root):
        raise MixtureError(f"{here}: field 'image_root' must be a path, got {image_root!r}")
    template = entry.get("template")
    if template is not None:
        from ..processing.chat_templates import TEMPLATES

        if template not in TEMPLATES:
            raise MixtureError(f"{here}: field 'template': unknown template {template!r}; known: "
                               f"{sorted(TEMPLATES.names())}")
    allow_absolute = entry.get("allow_absolute_paths", False)
    if not isinstance(allow_absolute, bool):
        raise MixtureError(f"{here}: field 'allow_absolute_paths' must be true or false")
    return SourceSpec(
        name=name,
        annotations=_paths(entry["annotations"], root, f"{here}: field 'annotations'"),
        image_root=None if image_root is None else root / image_root,
        repeat=None if "repeat" not in entry else _number(entry["repeat"], f"{here}: field 'repeat'", float),
        samples=None if "samples" not in entry else _number(entry["samples"], f"{here}: field 'samples'", int),
        weight=None if "weight" not in entry else _number(entry["weight"], f"{here}: field 'weight'", float),
        template=template,
        canvases=None if "canvases" not in entry else _canvases(entry["canvases"], f"{here}: field 'canvases'"),
        max_tiles=None if "max_tiles" not in entry else _number(entry["max_tiles"], f"{here}: field 'max_tiles'", int),
        allow_absolute_paths=allow_absolute,
    )


def load_mixture(path: str | Path, data_root: str | Path | None = None) -> MixtureSpec:
    """Parse and check a mixture YAML; ``data_root`` overrides its ``root``."""
    path = Path(path)
    where = str(path)
    try:
        data = load_yaml(path.read_text())
    except FileNotFoundError:
        raise MixtureError(f"mixture file not found: {path}") from None
    except DuplicateKeyError as error:
        raise MixtureError(f"{where}: {error}") from None
    except yaml.YAMLError as error:
        raise MixtureError(f"{where}: not valid YAML ({error})") from None
    if not isinstance(data, dict):
        raise MixtureError(f"{where}: must be a mapping with a 'sources' list")
    unknown = sorted(set(data) - MIXTURE_KEYS)
    if unknown:
        raise MixtureError(f"{where}: unknown field(s) {unknown}; known: {sorted(MIXTURE_KEYS)}")
    root = data.get("root", ".")
    if not (isinstance(root, str) and root):
        raise MixtureError(f"{where}: field 'root' must be a path, got {root!r}")
    root = Path(data_root) if data_root is not None else path.parent / root
    sources = data.get("sources")
    if not isinstance(sources, list) or not sources:
        raise MixtureError(f"{where}: field 'sources' must be a non-empty list")
    specs = tuple(_source(entry, index, root, where) for index, entry in enumerate(sources))
    names = [s.name for s in specs]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise MixtureError(f"{where}: source name(s) {duplicates} appear more than once")
    seed = data.get("seed", 0)
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:  # numpy's generators take no negative seed
        raise MixtureError(f"{where}: field 'seed' must be an integer >= 0, got {seed!r}")
    total = data.get("total")
    weighted = [s.name for s in specs if s.weight is not None]
    if weighted and total is None:
        raise MixtureError(f"{where}: sources {weighted} use 'weight', which needs a top-level 'total'")
    if total is not None:
        total = _number(total, f"{where}: field 'total'", int)
        if not weighted:
            raise MixtureError(f"{where}: field 'total' is set but no source uses 'weight'")
    return MixtureSpec(sources=specs, seed=seed, total=total, path=path)


def single_source(annotation_path: str | Path, image_folder: str | Path | None) -> MixtureSpec:
    """The plain LLaVA case, ``--data_path FILE --image_folder DIR``, as a one-source mixture."""
    path = Path(annotation_path)
    return MixtureSpec(sources=(SourceSpec(name=path.stem, annotations=(path,),
                                           image_root=Path(image_folder) if image_folder else None),))


def _source_rng(seed: int, name: str) -> np.random.Generator:
    # Keyed by the source's name, so adding or reordering sources does not change the others.
    return np.random.default_rng([seed, zlib.crc32(name.encode())])


def select(records: int, wanted: int, rng: np.random.Generator) -> np.ndarray:
    """``wanted`` record indices out of ``records``: whole copies, then a random remainder without
    replacement (so repeat 2.5 = every record twice + a random half once more)."""
    copies, remainder = divmod(wanted, records) if records else (0, 0)
    chosen = [np.tile(np.arange(records, dtype=np.int64), copies)]
    if remainder:
        chosen.append(np.sort(rng.choice(records, size=remainder, replace=False)).astype(np.int64))
    return np.concatenate(chosen) if chosen else np.zeros(0, dtype=np.int64)


def split_total(total: int, weights: list[float]) -> list[int]:
    """``total`` split in proportion to ``weights``, summing to it exactly: the floors, plus one for the largest
    remainders (rounding each share on its own gave 99 of a total of 100 over three equal weights)."""
    shares = [total * weight / sum(weights) for weight in weights]
    counts = [math.floor(share) for share in shares]
    by_remainder = sorted(range(len(shares)), key=lambda i: shares[i] - counts[i], reverse=True)  # stable on ties
    for index in by_remainder[:total - sum(counts)]:
        counts[index] += 1
    return counts


def wanted_counts(spec: MixtureSpec, record_counts: list[int]) -> list[int]:
    """Records each source contributes under its rule; weighted sources split ``spec.total``."""
    weighted = [index for index, source in enumerate(spec.sources) if source.weight is not None]
    shares = dict(zip(weighted, split_total(spec.total, [spec.sources[i].weight for i in weighted]))) \
        if weighted else {}
    counts = []
    for index, (source, records) in enumerate(zip(spec.sources, record_counts)):
        if source.samples is not None:
            counts.append(source.samples)
        elif source.weight is not None:
            counts.append(shares[index])
        else:
            counts.append(int(round(records * (1.0 if source.repeat is None else source.repeat))))
    return counts


def resolve_plan(spec: MixtureSpec, record_counts: list[int]) -> MixturePlan:
    """The seeded selection for ``spec`` given each source's record count."""
    plans, source_of, record_of = [], [], []
    for index, (source, records, wanted) in enumerate(zip(spec.sources, record_counts,
                                                          wanted_counts(spec, record_counts))):
        # Every rule is > 0, so a source that would add nothing is a mistake (an empty or wrong file, a share too
        # small to round to one sample), not a choice: before, it dropped out of the run without a word.
        if records == 0:
            raise MixtureError(f"{spec.describe()}: source {source.name!r} has no records in "
                               f"{', '.join(map(str, source.annotations))}")
        if wanted == 0:
            of = f"of total {spec.total}" if source.weight is not None else f"of its {records} records"
            raise MixtureError(f"{spec.describe()}: source {source.name!r} ({source.rule} {of}) rounds to 0 "
                               f"samples; raise its share, or remove the source")
        chosen = select(records, wanted, _source_rng(spec.seed, source.name))
        plans.append(SourcePlan(source.name, [str(p) for p in source.annotations],
                                None if source.image_root is None else str(source.image_root),
                                source.rule, records, len(chosen)))
        source_of.append(np.full(len(chosen), index, dtype=np.int64))
        record_of.append(chosen)
    plan = MixturePlan(plans, np.concatenate(source_of), np.concatenate(record_of), spec.seed,
                       None if spec.path is None else str(spec.path))
    if len(plan) == 0:
        raise MixtureError(f"{spec.describe()}: the plan selects no records")
    return plan

"""``fila-train data inspect``: what a mixture will feed the model, checked before any GPU time.

Per source: records and sampled count, every unusable record (file, line, id, reason), missing
and unreadable images counted apart, token lengths with the real tokenizer and the encoder's
image-token expansion, the share over the maximum length, and the distribution of image sizes.
"""
from __future__ import annotations

from collections import Counter
from dataclasses import asdict, dataclass, field

import numpy as np
from tqdm import tqdm

from ..utils.tables import format_table
from .dataset import SampleError
from .lengths import measure_record
from .mixed_dataset import MixtureDataset

PERCENTILES = (50, 90, 99, 100)


@dataclass
class SourceReport:
    name: str
    records: int
    sampled: int
    errors: list[str] = field(default_factory=list)
    error_kinds: dict[str, int] = field(default_factory=dict)
    with_images: int = 0
    text_only: int = 0
    token_percentiles: dict[str, int] = field(default_factory=dict)
    over_max_length: int = 0
    over_max_share: float = 0.0
    image_width_percentiles: dict[str, int] = field(default_factory=dict)
    image_height_percentiles: dict[str, int] = field(default_factory=dict)
    megapixels_percentiles: dict[str, float] = field(default_factory=dict)


def percentiles(values: np.ndarray, digits: int | None = None) -> dict[str, float]:
    if not len(values):
        return {}
    points = np.percentile(values, PERCENTILES)
    return {f"p{p}" if p < 100 else "max": (round(float(v), digits) if digits else int(round(float(v))))
            for p, v in zip(PERCENTILES, points)}


def inspect_mixture(dataset: MixtureDataset, max_length: int, decode: bool = True,
                    limit: int | None = None) -> list[SourceReport]:
    """Every record of every source (up to ``limit``); images decoded, or only their headers read."""
    reports = []
    for source, plan in zip(dataset.sources, dataset.plan.sources):
        report = SourceReport(source.name, plan.records, plan.sampled)
        kinds: Counter[str] = Counter()
        lengths, sizes = [], []
        count = len(source) if limit is None else min(limit, len(source))
        for index in tqdm(range(count), desc=f"inspect {source.name}", unit="rec", mininterval=1):
            try:
                measure = measure_record(source, index, check="decode" if decode else "header")
            except SampleError as error:
                report.errors.append(str(error))
                kinds[error.kind] += 1
                continue
            lengths.append(abs(measure.length))
            report.with_images += measure.length > 0
            sizes.extend(measure.image_sizes)
        report.text_only = len(lengths) - report.with_images
        report.error_kinds = dict(kinds)
        array = np.asarray(lengths)
        report.token_percentiles = percentiles(array)
        report.over_max_length = int((array > max_length).sum()) if len(array) else 0
        report.over_max_share = round(report.over_max_length / max(len(array), 1), 4)
        if sizes:
            widths, heights = np.asarray(sizes).T
            report.image_width_percentiles = percentiles(widths)
            report.image_height_percentiles = percentiles(heights)
            report.megapixels_percentiles = percentiles(widths * heights / 1e6, digits=3)
        reports.append(report)
    return reports


def format_report(reports: list[SourceReport], max_length: int) -> str:
    def spread(values: dict) -> str:
        return " / ".join(str(values[k]) for k in ("p50", "p90", "p99", "max")) if values else "-"

    rows = [[r.name, f"{r.records:,}", f"{r.sampled:,}", str(len(r.errors)),
             str(r.error_kinds.get("missing_image", 0)), str(r.error_kinds.get("unreadable_image", 0)),
             f"{r.with_images:,}", f"{r.text_only:,}", spread(r.token_percentiles),
             f"{100 * r.over_max_share:.1f}%", spread(r.megapixels_percentiles)] for r in reports]
    return format_table(["source", "records", "sampled", "errors", "missing img", "unreadable img", "w/ image",
                         "text", "tokens p50/p90/p99/max", f"> {max_length}", "Mpix p50/p90/p99/max"], rows)


def report_dict(reports: list[SourceReport]) -> dict:
    return {"sources": [asdict(r) for r in reports], "errors": sum(len(r.errors) for r in reports)}

"""Synthetic document images with LLaVA-format captions and QA, for offline demos and tests.

Three document kinds are rendered with PIL only (no font downloads):

* forms/receipts: a title plus "key: value" lines,
* tables: a title plus a bordered grid with a header row,
* bar charts: a title plus labelled bars with their values written above them.

All text comes from a small closed vocabulary (items, colors, cities, months, days, numbers)
so that a tiny tokenizer and model can actually learn the task. Every answer is derived from
the same ``DocSpec`` that drives the rendering, and the specs are written to
``doc_specs.jsonl`` so answers can be re-checked independently.

Conventions used by the questions:

* table rows/columns are 1-indexed and count *data* rows only (the header row is excluded),
* chart values are unique, so "tallest"/"shortest" always have a single answer,
* all rendered text is lowercase and answers are the exact rendered strings.
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Literal

from PIL import Image, ImageDraw, ImageFont

# ----------------------------------------------------------------------------------------------
# Closed vocabulary (~150 words). Kept small on purpose: the demo model is tiny.
# ----------------------------------------------------------------------------------------------
ITEMS = (
    "apple", "banana", "bread", "butter", "cheese", "coffee", "tea", "milk", "rice", "sugar",
    "salt", "pepper", "eggs", "juice", "soap", "paper", "pencil", "notebook", "lamp", "chair",
    "candle", "towel", "bottle", "basket", "jacket", "shirt", "socks", "boots", "hat", "umbrella",
)  # fmt: skip
COLORS = (
    "red", "blue", "green", "yellow", "orange", "purple", "black", "white", "gray", "brown",
    "pink", "gold",
)  # fmt: skip
CITIES = (
    "paris", "london", "tokyo", "berlin", "madrid", "rome", "cairo", "lima", "oslo", "dublin",
    "vienna", "prague", "sydney", "toronto", "boston", "denver",
)  # fmt: skip
MONTHS = (
    "january", "february", "march", "april", "may", "june", "july", "august", "september",
    "october", "november", "december",
)  # fmt: skip
WEEKDAYS = ("monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday")
STATUSES = ("paid", "open", "closed", "pending", "shipped")
STORE_PREFIXES = (
    "north", "south", "east", "west", "central", "corner", "grand", "little", "happy", "fresh",
)  # fmt: skip
STORE_NOUNS = ("market", "store", "shop", "bakery", "cafe", "pharmacy", "garage", "kiosk")
FORM_NOUNS = ("order", "booking", "shipping", "visitor", "travel", "repair", "delivery", "payment")
TABLE_PERIODS = ("daily", "weekly", "monthly", "annual")
TABLE_NOUNS = ("report", "summary", "inventory", "orders", "schedule", "budget")
CHART_MEASURES = ("rainfall", "sales", "visitors", "orders", "votes", "tickets", "points")

# Category name -> words; used for chart axes, table label columns and form values.
CATEGORIES: dict[str, tuple[str, ...]] = {
    "item": ITEMS,
    "color": COLORS,
    "city": CITIES,
    "month": MONTHS,
    "day": WEEKDAYS,
}
NUMERIC_COLUMNS = ("price", "count", "score")
FORM_KEYS = (
    "item", "city", "color", "month", "day", "date", "status", "amount", "price", "weight",
    "quantity", "order", "invoice", "account", "code", "room", "gate", "seat",
)  # fmt: skip
# Role names the chat templates put at the start of every turn; repeated in the corpus so BPE
# merges them into single tokens (min_frequency would otherwise leave them as fragments).
ROLE_LINES = (
    "system", "user", "assistant", "human", "gpt", "You are a helpful assistant.", "USER: ASSISTANT:",
)  # fmt: skip
ROLE_REPEATS = 10

DocKind = Literal["receipt", "form", "table", "chart"]
QA = tuple[str, str]

MIN_FONT = 15  # smaller text becomes illegible once the encoder downsamples the page
TITLE_QUESTION = "What is the title of this document?"
IMAGE_TOKEN = "<image>"


@dataclass(frozen=True)
class SyntheticDataset:
    """Paths written by :func:`make_synthetic_dataset`."""

    root: Path
    image_dir: Path
    stage1_path: Path  # captions (alignment pre-training)
    stage2_path: Path  # instruction tuning, ~10% text-only
    eval_path: Path  # held-out questions on unseen images
    corpus_path: Path  # tokenizer training text
    specs_path: Path  # ground-truth DocSpec per image (for checking answers)
    num_images: int
    num_eval: int


@dataclass(frozen=True)
class DocSpec:
    """Everything needed to render one document and to answer questions about it."""

    doc_id: str
    kind: DocKind
    title: str
    fields: tuple[tuple[str, str], ...] = ()  # receipt/form "key: value" lines
    header: tuple[str, ...] = ()  # table column names
    rows: tuple[tuple[str, ...], ...] = ()  # table data rows (header excluded)
    bars: tuple[tuple[str, int], ...] = ()  # chart (label, value)
    width: int = 0
    height: int = 0
    font_size: int = 0
    background: tuple[int, int, int] = (255, 255, 255)
    ink: tuple[int, int, int] = (0, 0, 0)

    @property
    def image_file(self) -> str:
        return f"{self.doc_id}.png"


# ----------------------------------------------------------------------------------------------
# Content sampling
# ----------------------------------------------------------------------------------------------
def _number(rng: random.Random, lo: int = 1, hi: int = 99) -> str:
    return str(rng.randint(lo, hi))


def _form_value(key: str, rng: random.Random) -> str:
    """A value whose type matches the key, so questions stay meaningful."""
    if key in CATEGORIES:
        return rng.choice(CATEGORIES[key])
    if key == "date":
        return f"{rng.choice(MONTHS)} {rng.randint(1, 28)}"
    if key == "status":
        return rng.choice(STATUSES)
    if key in ("order", "invoice", "account", "code"):
        return _number(rng, 100, 9999)
    if key in ("room", "gate", "seat"):
        return _number(rng, 1, 60)
    return _number(rng)


def _sample_receipt(doc_id: str, rng: random.Random) -> DocSpec:
    items = rng.sample(ITEMS, rng.randint(2, 5))
    prices = [rng.randint(1, 49) for _ in items]
    fields = [(item, str(p)) for item, p in zip(items, prices, strict=True)]
    fields.append(("total", str(sum(prices))))
    title = f"{rng.choice(STORE_PREFIXES)} {rng.choice(STORE_NOUNS)}"
    return DocSpec(doc_id=doc_id, kind="receipt", title=title, fields=tuple(fields))


def _sample_form(doc_id: str, rng: random.Random) -> DocSpec:
    keys = rng.sample(FORM_KEYS, rng.randint(3, 6))
    fields = tuple((k, _form_value(k, rng)) for k in keys)
    return DocSpec(doc_id=doc_id, kind="form", title=f"{rng.choice(FORM_NOUNS)} form", fields=fields)


def _column_values(name: str, n: int, rng: random.Random) -> list[str]:
    if name in CATEGORIES:
        return [rng.choice(CATEGORIES[name]) for _ in range(n)]
    return [_number(rng) for _ in range(n)]


def _sample_table(doc_id: str, rng: random.Random) -> DocSpec:
    num_cols, num_rows = rng.randint(2, 4), rng.randint(2, 5)
    label_col = rng.choice(sorted(CATEGORIES))
    others = [c for c in (*CATEGORIES, *NUMERIC_COLUMNS) if c != label_col]
    header = [label_col, *rng.sample(others, num_cols - 1)]
    # Unique row labels so "What is the <column> of <label>?" has a single answer.
    columns = [rng.sample(CATEGORIES[label_col], num_rows)]
    columns += [_column_values(name, num_rows, rng) for name in header[1:]]
    rows = tuple(tuple(col[r] for col in columns) for r in range(num_rows))
    title = f"{rng.choice(TABLE_PERIODS)} {rng.choice(TABLE_NOUNS)}"
    return DocSpec(doc_id=doc_id, kind="table", title=title, header=tuple(header), rows=rows)


def _sample_chart(doc_id: str, rng: random.Random) -> DocSpec:
    category = rng.choice(sorted(CATEGORIES))
    labels = rng.sample(CATEGORIES[category], rng.randint(3, 5))
    values = rng.sample(range(5, 100), len(labels))  # unique -> unambiguous tallest/shortest
    title = f"{rng.choice(CHART_MEASURES)} by {category}"
    return DocSpec(doc_id=doc_id, kind="chart", title=title, bars=tuple(zip(labels, values, strict=True)))


_SAMPLERS: dict[DocKind, Callable[[str, random.Random], DocSpec]] = {
    "receipt": _sample_receipt,
    "form": _sample_form,
    "table": _sample_table,
    "chart": _sample_chart,
}


def _sample_page_size(rng: random.Random) -> tuple[int, int]:
    """Wide, tall and regular pages so the dynamic-resolution path sees varied aspect ratios."""
    profile = rng.choices(("wide", "tall", "regular"), weights=(1, 1, 2))[0]
    if profile == "wide":
        return rng.randint(500, 700), rng.randint(150, 320)
    if profile == "tall":
        return rng.randint(200, 380), rng.randint(550, 900)
    return rng.randint(300, 600), rng.randint(250, 600)


def _sample_colors(rng: random.Random) -> tuple[tuple[int, int, int], tuple[int, int, int]]:
    background = rng.choice(((255, 255, 255), (250, 246, 235), (240, 242, 245), (255, 252, 240)))
    ink = rng.choice(((0, 0, 0), (20, 30, 80), (40, 40, 40), (60, 20, 20)))
    return background, ink


# ----------------------------------------------------------------------------------------------
# Rendering
# ----------------------------------------------------------------------------------------------
Font = ImageFont.FreeTypeFont | ImageFont.ImageFont


class _Fonts:
    """Per-run cache of the built-in font at several sizes (loading it decodes an embedded file)."""

    def __init__(self) -> None:
        self._cache: dict[int, Font] = {}

    def get(self, size: int) -> Font:
        if size not in self._cache:
            try:
                self._cache[size] = ImageFont.load_default(size=size)
            except TypeError:  # Pillow < 10.1 has no sizeable default font
                self._cache[size] = ImageFont.load_default()
        return self._cache[size]


@dataclass(frozen=True)
class _Style:
    """Derived sizes for one font size; measuring and drawing share it so they cannot disagree."""

    body: Font
    title: Font
    margin: int
    line_h: int
    title_h: int
    pad: int

    @classmethod
    def make(cls, fonts: _Fonts, size: int) -> _Style:
        body, title = fonts.get(size), fonts.get(round(size * 1.4))
        return cls(
            body=body,
            title=title,
            margin=max(8, size),
            line_h=_text_h(body),
            title_h=_text_h(title),
            pad=max(3, size // 3),
        )


def _text_w(font: Font, text: str) -> int:
    left, _, right, _ = font.getbbox(text)
    return int(right - left)


def _text_h(font: Font) -> int:
    # Fixed reference glyphs so all lines share one height regardless of ascenders.
    _, top, _, bottom = font.getbbox("Agjy|")
    return int(bottom - top)


def _put(draw: ImageDraw.ImageDraw, x: float, y: float, text: str, font: Font, fill: Any, align: str = "left") -> None:
    """Draw text with its visual top-left (or top-centre/right) at (x, y); avoids anchors,
    which the bitmap fallback font does not support."""
    left, _, right, _ = font.getbbox(text)
    _, top, _, _ = font.getbbox("Agjy|")
    width = right - left
    if align == "center":
        x -= width / 2
    elif align == "right":
        x -= width
    draw.text((x - left, y - top), text, font=font, fill=fill)


# -- forms / receipts ---------------------------------------------------------------------------
def _measure_fields(spec: DocSpec, st: _Style) -> tuple[int, int]:
    if spec.kind == "receipt":  # key left, value right-aligned on the same line
        line_w = max(_text_w(st.body, f"{k}:") + 3 * st.pad + _text_w(st.body, v) for k, v in spec.fields)
    else:
        line_w = max(_text_w(st.body, f"{k}: {v}") for k, v in spec.fields)
    width = max(_text_w(st.title, spec.title), line_w) + 2 * st.margin
    height = 2 * st.margin + st.title_h + 2 * st.pad + len(spec.fields) * (st.line_h + 2 * st.pad)
    return width, height


def _draw_fields(draw: ImageDraw.ImageDraw, spec: DocSpec, st: _Style) -> None:
    w, h = spec.width, spec.height
    _put(draw, st.margin, st.margin, spec.title, st.title, spec.ink)
    y = st.margin + st.title_h + st.pad
    draw.line((st.margin, y, w - st.margin, y), fill=spec.ink, width=2)
    # Spread lines over tall pages (up to 2x spacing) instead of leaving them all at the top.
    room = h - st.margin - (y + st.pad)
    step = min(max(st.line_h + 2 * st.pad, room // len(spec.fields)), 2 * (st.line_h + 2 * st.pad))
    y += st.pad + st.pad
    for key, value in spec.fields:
        if spec.kind == "receipt":
            _put(draw, st.margin, y, f"{key}:", st.body, spec.ink)
            _put(draw, w - st.margin, y, value, st.body, spec.ink, align="right")
        else:
            _put(draw, st.margin, y, f"{key}: {value}", st.body, spec.ink)
        y += step


# -- tables -------------------------------------------------------------------------------------
def _table_col_widths(spec: DocSpec, st: _Style) -> list[int]:
    cells = [spec.header, *spec.rows]
    return [max(_text_w(st.body, row[c]) for row in cells) + 2 * st.pad for c in range(len(spec.header))]


def _measure_table(spec: DocSpec, st: _Style) -> tuple[int, int]:
    row_h = st.line_h + 2 * st.pad
    width = max(_text_w(st.title, spec.title), sum(_table_col_widths(spec, st))) + 2 * st.margin
    height = 2 * st.margin + st.title_h + 2 * st.pad + (len(spec.rows) + 1) * row_h
    return width, height


def _draw_table(draw: ImageDraw.ImageDraw, spec: DocSpec, st: _Style) -> None:
    _put(draw, st.margin, st.margin, spec.title, st.title, spec.ink)
    col_ws = _table_col_widths(spec, st)
    # Stretch columns (at most 1.6x) on wide pages so tables do not all hug the left edge.
    stretch = min(1.6, (spec.width - 2 * st.margin) / sum(col_ws))
    col_ws = [int(c * stretch) for c in col_ws]
    row_h = st.line_h + 2 * st.pad
    top = st.margin + st.title_h + 2 * st.pad
    for r, row in enumerate([spec.header, *spec.rows]):
        y, x = top + r * row_h, st.margin
        for c, text in enumerate(row):
            box = (x, y, x + col_ws[c], y + row_h)
            draw.rectangle(box, fill=(215, 215, 215) if r == 0 else None, outline=spec.ink, width=1)
            _put(draw, x + st.pad, y + st.pad, text, st.body, spec.ink)
            x += col_ws[c]


# -- bar charts ---------------------------------------------------------------------------------
_BAR_COLORS = ((70, 110, 200), (220, 110, 50), (60, 160, 90), (170, 70, 160), (200, 60, 60))


def _chart_slot_w(spec: DocSpec, st: _Style) -> int:
    widest = max(max(_text_w(st.body, label), _text_w(st.body, str(v))) for label, v in spec.bars)
    return max(widest, 2 * st.line_h) + 2 * st.pad


def _measure_chart(spec: DocSpec, st: _Style) -> tuple[int, int]:
    width = max(_text_w(st.title, spec.title), len(spec.bars) * _chart_slot_w(spec, st)) + 2 * st.margin
    min_plot_h = 3 * st.line_h
    height = 2 * st.margin + st.title_h + 3 * st.pad + 2 * (st.line_h + st.pad) + min_plot_h
    return width, height


def _draw_chart(draw: ImageDraw.ImageDraw, spec: DocSpec, st: _Style) -> None:
    _put(draw, spec.width / 2, st.margin, spec.title, st.title, spec.ink, align="center")
    n = len(spec.bars)
    slot_w = (spec.width - 2 * st.margin) / n
    bar_w = min(slot_w - 2 * st.pad, 3 * st.line_h)
    plot_top = st.margin + st.title_h + 2 * st.pad + st.line_h + st.pad  # room for value text
    baseline = spec.height - st.margin - st.line_h - st.pad
    max_v = max(v for _, v in spec.bars)
    for i, (label, value) in enumerate(spec.bars):
        cx = st.margin + (i + 0.5) * slot_w
        bar_top = baseline - (baseline - plot_top) * value / max_v
        draw.rectangle((cx - bar_w / 2, bar_top, cx + bar_w / 2, baseline), fill=_BAR_COLORS[i % 5])
        _put(draw, cx, bar_top - st.pad - st.line_h, str(value), st.body, spec.ink, align="center")
        _put(draw, cx, baseline + st.pad, label, st.body, spec.ink, align="center")
    draw.line((st.margin, baseline, spec.width - st.margin, baseline), fill=spec.ink, width=2)


_MEASURE: dict[DocKind, Callable[[DocSpec, _Style], tuple[int, int]]] = {
    "receipt": _measure_fields,
    "form": _measure_fields,
    "table": _measure_table,
    "chart": _measure_chart,
}
_DRAW: dict[DocKind, Callable[[ImageDraw.ImageDraw, DocSpec, _Style], None]] = {
    "receipt": _draw_fields,
    "form": _draw_fields,
    "table": _draw_table,
    "chart": _draw_chart,
}


def _fit_layout(spec: DocSpec, rng: random.Random, fonts: _Fonts) -> DocSpec:
    """Pick a page size and the largest font (<= a random start size) whose layout fits it;
    if even the minimum font does not fit, the page grows instead of clipping text."""
    page_w, page_h = _sample_page_size(rng)
    size = rng.randint(18, 28)
    need_w, need_h = _MEASURE[spec.kind](spec, _Style.make(fonts, size))
    while (need_w > page_w or need_h > page_h) and size > MIN_FONT:
        size -= 1
        need_w, need_h = _MEASURE[spec.kind](spec, _Style.make(fonts, size))
    background, ink = _sample_colors(rng)
    return replace(
        spec,
        width=max(page_w, need_w),
        height=max(page_h, need_h),
        font_size=size,
        background=background,
        ink=ink,
    )


def render_document(spec: DocSpec, fonts: _Fonts | None = None) -> Image.Image:
    """Render a laid-out spec (width/height/font_size set) to an RGB image."""
    fonts = fonts or _Fonts()
    image = Image.new("RGB", (spec.width, spec.height), spec.background)
    _DRAW[spec.kind](ImageDraw.Draw(image), spec, _Style.make(fonts, spec.font_size))
    return image


def rendered_text(spec: DocSpec) -> list[str]:
    """The strings drawn on the page (for the tokenizer corpus)."""
    if spec.kind in ("receipt", "form"):
        return [spec.title, *(f"{k}: {v}" for k, v in spec.fields)]
    if spec.kind == "table":
        return [spec.title, *(" ".join(row) for row in (spec.header, *spec.rows))]
    return [spec.title, *(f"{label} {value}" for label, value in spec.bars)]


# ----------------------------------------------------------------------------------------------
# Captions and questions
# ----------------------------------------------------------------------------------------------
def _join_words(words: Sequence[str]) -> str:
    return words[0] if len(words) == 1 else f"{', '.join(words[:-1])} and {words[-1]}"


def caption_for(spec: DocSpec) -> str:
    if spec.kind == "receipt":
        items = len(spec.fields) - 1
        return f"a receipt titled {spec.title} listing {items} items with a total of {spec.fields[-1][1]}"
    if spec.kind == "form":
        keys = _join_words([k for k, _ in spec.fields])
        return f"a form titled {spec.title} with {len(spec.fields)} fields: {keys}"
    if spec.kind == "table":
        return (
            f"a table titled {spec.title} with {len(spec.header)} columns and {len(spec.rows)} rows, "
            f"the columns are {_join_words(spec.header)}"
        )
    tallest = max(spec.bars, key=lambda b: b[1])[0]
    return f"a bar chart titled {spec.title} with {len(spec.bars)} bars, the tallest bar is {tallest}"


def qa_pool(spec: DocSpec) -> dict[str, list[QA]]:
    """All answerable questions for a document, grouped by question type. Sampling a type first
    keeps e.g. the many table-cell questions from crowding out the others."""
    pool: dict[str, list[QA]] = {"title": [(TITLE_QUESTION, spec.title)]}
    if spec.kind == "receipt":
        items = spec.fields[:-1]
        pool["value"] = [(f"What is the value of {k}?", v) for k, v in items]
        pool["total"] = [("What is the total?", spec.fields[-1][1])]
        pool["count"] = [("How many items are listed?", str(len(items)))]
    elif spec.kind == "form":
        pool["value"] = [(f"What is the value of {k}?", v) for k, v in spec.fields]
        pool["count"] = [("How many fields does the form have?", str(len(spec.fields)))]
    elif spec.kind == "table":
        pool["rows"] = [("How many rows does the table have?", str(len(spec.rows)))]
        pool["cols"] = [("How many columns does the table have?", str(len(spec.header)))]
        pool["cell"] = [
            (f"What is in row {r + 1}, column {c + 1}?", cell)
            for r, row in enumerate(spec.rows)
            for c, cell in enumerate(row)
        ]
        pool["lookup"] = [
            (f"What is the {spec.header[c]} of {row[0]}?", row[c]) for row in spec.rows for c in range(1, len(row))
        ]
    else:
        pool["tallest"] = [("Which bar is the tallest?", max(spec.bars, key=lambda b: b[1])[0])]
        pool["shortest"] = [("Which bar is the shortest?", min(spec.bars, key=lambda b: b[1])[0])]
        pool["value"] = [(f"What is the value of the {label} bar?", str(v)) for label, v in spec.bars]
        pool["count"] = [("How many bars are in the chart?", str(len(spec.bars)))]
    return pool


def sample_questions(spec: DocSpec, rng: random.Random, max_turns: int = 3) -> list[QA]:
    pool = qa_pool(spec)
    kinds = rng.sample(sorted(pool), min(rng.randint(1, max_turns), len(pool)))
    return [rng.choice(pool[k]) for k in kinds]


def _conversation(turns: Iterable[QA], with_image: bool) -> list[dict[str, str]]:
    conv: list[dict[str, str]] = []
    for i, (question, answer) in enumerate(turns):
        prefix = f"{IMAGE_TOKEN}\n" if with_image and i == 0 else ""
        conv.append({"from": "human", "value": prefix + question})
        conv.append({"from": "gpt", "value": answer})
    return conv


def _text_only_qa(rng: random.Random) -> QA:
    """Questions that need no image, so stage-2 batches mix image and text-only samples."""
    kind = rng.choice(("month", "day", "plus", "minus", "letters"))
    if kind == "month":
        i = rng.randrange(12)
        return f"What comes after {MONTHS[i]}?", MONTHS[(i + 1) % 12]
    if kind == "day":
        i = rng.randrange(7)
        return f"What day comes after {WEEKDAYS[i]}?", WEEKDAYS[(i + 1) % 7]
    a, b = rng.randint(0, 20), rng.randint(0, 20)
    if kind == "plus":
        return f"What is {a} plus {b}?", str(a + b)
    if kind == "minus":
        a, b = max(a, b), min(a, b)
        return f"What is {a} minus {b}?", str(a - b)
    word = rng.choice(ITEMS + COLORS)
    return f"How many letters are in the word {word}?", str(len(word))


# ----------------------------------------------------------------------------------------------
# Dataset assembly
# ----------------------------------------------------------------------------------------------
def _doc_rng(seed: int, index: int, purpose: str) -> random.Random:
    # Independent stream per (doc, purpose): changing how many questions one document gets
    # does not reshuffle every later document.
    return random.Random(f"{seed}:{index}:{purpose}")


def _make_spec(index: int, seed: int, fonts: _Fonts) -> DocSpec:
    rng = _doc_rng(seed, index, "doc")
    kind = rng.choice(("receipt", "form", "table", "chart"))
    spec = _SAMPLERS[kind](f"doc_{index:05d}", rng)
    return _fit_layout(spec, rng, fonts)


def _num_text_only(num_images: int) -> int:
    # ~10% of all stage-2 records: text / (images + text) = 0.1  =>  text = images / 9
    return max(1, round(num_images / 9)) if num_images else 0


def _interleave(image_records: list[dict[str, Any]], text_records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Spread text-only records evenly so even an unshuffled loader produces mixed batches."""
    if not text_records:
        return list(image_records)
    every = max(1, len(image_records) // len(text_records))
    out: list[dict[str, Any]] = []
    texts = iter(text_records)
    for i, rec in enumerate(image_records):
        out.append(rec)
        if (i + 1) % every == 0 and (nxt := next(texts, None)) is not None:
            out.append(nxt)
    out.extend(texts)  # leftovers when the division was not exact
    return out


def _write_jsonl(path: Path, records: Iterable[dict[str, Any]]) -> None:
    with path.open("w", encoding="utf-8") as f:
        for rec in records:
            f.write(json.dumps(rec, ensure_ascii=False) + "\n")


def _corpus_lines(specs: Sequence[DocSpec], records: Iterable[dict[str, Any]], captions: Iterable[str]) -> list[str]:
    lines = list(ROLE_LINES) * ROLE_REPEATS
    lines += [" ".join(words) for words in (*CATEGORIES.values(), STATUSES, STORE_PREFIXES, STORE_NOUNS)]
    lines += [" ".join(words) for words in (FORM_NOUNS, TABLE_PERIODS, TABLE_NOUNS, CHART_MEASURES, FORM_KEYS)]
    lines.append(" ".join(str(n) for n in range(200)))
    lines += captions
    for spec in specs:
        lines += rendered_text(spec)
    for rec in records:
        for turn in rec["conversations"]:
            lines += turn["value"].splitlines()
    return lines


def make_synthetic_dataset(
    root: str | Path, *, num_images: int = 240, num_eval: int = 40, seed: int = 0
) -> SyntheticDataset:
    """Render ``num_images`` training + ``num_eval`` held-out documents and write the LLaVA
    JSON files under ``root``. Deterministic for a given seed (byte-identical outputs)."""
    root = Path(root)
    image_dir = root / "images"
    image_dir.mkdir(parents=True, exist_ok=True)
    fonts = _Fonts()

    specs = [_make_spec(i, seed, fonts) for i in range(num_images + num_eval)]
    for spec in specs:
        render_document(spec, fonts).save(image_dir / spec.image_file, format="PNG", compress_level=1)
    train_specs, eval_specs = specs[:num_images], specs[num_images:]

    stage1 = [
        {
            "id": s.doc_id,
            "image": s.image_file,
            "conversations": [
                {"from": "human", "value": f"{IMAGE_TOKEN}\n"},
                {"from": "gpt", "value": caption_for(s)},
            ],
        }
        for s in train_specs
    ]
    image_qa = [
        {
            "id": s.doc_id,
            "image": s.image_file,
            "conversations": _conversation(sample_questions(s, _doc_rng(seed, i, "qa")), with_image=True),
        }
        for i, s in enumerate(train_specs)
    ]
    text_rng = random.Random(f"{seed}:text-only")
    text_qa = [
        {
            "id": f"text_{k:05d}",
            "conversations": _conversation(
                [_text_only_qa(text_rng) for _ in range(text_rng.randint(1, 2))], with_image=False
            ),
        }
        for k in range(_num_text_only(num_images))
    ]
    stage2 = _interleave(image_qa, text_qa)
    eval_records = [
        {"id": f"{s.doc_id}_q{j}", "image": s.image_file, "question": q, "answers": [a]}
        for i, s in enumerate(eval_specs, start=num_images)
        for j, (q, a) in enumerate(sample_questions(s, _doc_rng(seed, i, "qa")))
    ]

    ds = SyntheticDataset(
        root=root,
        image_dir=image_dir,
        stage1_path=root / "stage1_captions.jsonl",
        stage2_path=root / "stage2_instruct.jsonl",
        eval_path=root / "eval_questions.jsonl",
        corpus_path=root / "corpus.txt",
        specs_path=root / "doc_specs.jsonl",
        num_images=num_images,
        num_eval=num_eval,
    )
    _write_jsonl(ds.stage1_path, stage1)
    _write_jsonl(ds.stage2_path, stage2)
    _write_jsonl(ds.eval_path, eval_records)
    _write_jsonl(
        ds.specs_path, ({**asdict(s), "split": "train" if i < num_images else "eval"} for i, s in enumerate(specs))
    )
    # Eval questions/answers stay out of the corpus; their words are covered by the vocabulary lines.
    corpus = _corpus_lines(train_specs, stage2, (r["conversations"][1]["value"] for r in stage1))
    ds.corpus_path.write_text("\n".join(corpus) + "\n", encoding="utf-8")
    return ds

"""The fragmentation probe: a band of small two-texture symbols per image, along a tile border (fragmented) or
inside the tiles (control), in our LLaVA format.

A symbol is two halves side by side (or one above the other), each a one-pixel texture (stripes either way or
a checkerboard, in two phases). The global view (the image squeezed to one tile, 2x smaller) turns every
texture into the same flat grey; a tile sees it pixel for pixel. The question is whether the two halves are the
same pattern (1 / 0, exactly half each per placement): the answer is the seam between the halves, and no half alone tells it.

- fragmented: the seam lies on a border between two tiles, one half in each tile; the ViT never sees the two
  halves in one forward pass.
- control: the same band inside one column (or row) of tiles, the seam in the middle of a patch, so one patch
  (one token) holds both sides of it.

The band repeats the symbol along its line, across the whole image: one symbol is too few tokens among the
views' hundreds for a tiny model to find in minutes. Sizes follow the model: the image is one canvas of the
anyres configuration and the symbol ``symbol_patches`` ViT patches on a side, so the same generator serves the
tiny CPU models (56px tiles) and the real 336/672 setup. Deterministic for a seed.
"""
from __future__ import annotations

import json
import random
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from ..utils.argument_parser import StrictParser
from ..utils.errors import ConfigError
from ..utils.files import write_json_atomic, write_jsonl_atomic

IMAGE_TOKEN = "<image>"
# One-pixel stripes and checkerboards, two phases each: every 2x2 window holds two black pixels, so a 2x
# downscale (the global view of a canvas twice the tile) turns each into the same flat grey (test_probe.py).
# Where two textures meet, a trace of the seam survives the downscale (measured in docs/ablation.md).
TEXTURES = {
    "vertical stripes": lambda xs, ys: xs % 2 == 0,
    "shifted vertical stripes": lambda xs, ys: xs % 2 == 1,
    "horizontal stripes": lambda xs, ys: ys % 2 == 0,
    "shifted horizontal stripes": lambda xs, ys: ys % 2 == 1,
    "checker": lambda xs, ys: (xs + ys) % 2 == 0,
    "shifted checker": lambda xs, ys: (xs + ys) % 2 == 1,
}
QUESTION = "Each symbol in the image has two halves. Are they the same pattern? Answer 1 for yes, 0 for no."
# Digits: one token in every tokenizer, the tiny demo one included ("yes" is two there and learns far slower).
ANSWERS = {True: "1", False: "0"}
SPLITS = ("fragmented", "control")


@dataclass(frozen=True)
class ProbeLayout:
    """The canvas (W, H), cut into ``tile`` x ``tile`` tiles of ``patch`` x ``patch`` patches; a symbol is
    ``symbol_patches`` patches on a side."""

    tile: int
    patch: int
    canvas: tuple[int, int]
    symbol_patches: int = 2

    def __post_init__(self) -> None:
        width, height = self.canvas
        if self.tile % self.patch or self.patch % 2 or width % self.tile or height % self.tile:
            raise ConfigError(f"probe layout: canvas {width}x{height} must be whole tiles of {self.tile}px, and the "
                              f"tile whole patches of an even size, got patch {self.patch}")
        if width == self.tile and height == self.tile:
            raise ConfigError(f"probe layout: canvas {width}x{height} is a single tile, so no symbol can be cut")
        if self.symbol_size >= self.tile or self.tile % self.symbol_size:
            raise ConfigError(f"probe layout: symbols of {self.symbol_patches} patches must tile a {self.tile}px "
                              f"tile with room to spare")

    @property
    def symbol_size(self) -> int:
        return self.symbol_patches * self.patch

    def seams(self, split: str) -> list[tuple[str, int]]:
        """(axis, position) of the band's seam: "x" = a vertical seam at x = position, "y" = a horizontal one."""
        half = self.symbol_size // 2
        seams = []
        for axis, length in (("x", self.canvas[0]), ("y", self.canvas[1])):
            if split == "fragmented":
                seams += [(axis, border) for border in range(self.tile, length, self.tile)]
            else:  # mid-patch, with the whole band inside one tile
                seams += [(axis, at) for at in range(self.patch // 2, length, self.patch)
                          if at // self.tile == (at - half) // self.tile == (at + half - 1) // self.tile]
        return seams


@dataclass(frozen=True)
class ProbeOptions:
    train: int = 2000  # training images (stage 1 captions and stage 2 questions), half of each placement
    held_out: int = 200  # images per held-out split
    seed: int = 0


def symbol(first: str, second: str, axis: str, size: int) -> np.ndarray:
    """size x size grey levels: texture ``first`` in the left (axis "x") or top half, ``second`` in the other."""
    ys, xs = np.mgrid[0:size, 0:size]
    first_half = xs < size // 2 if axis == "x" else ys < size // 2
    return np.where(np.where(first_half, TEXTURES[first](xs, ys), TEXTURES[second](xs, ys)), 0, 255)


def render(layout: ProbeLayout, seam: tuple[str, int], first: str, second: str) -> Image.Image:
    """The band of symbols along ``seam``, on white."""
    axis, at = seam
    size, width = layout.symbol_size, layout.canvas[0]
    pixels = np.full((layout.canvas[1], width), 255, dtype=np.uint8)
    levels = symbol(first, second, axis, size).astype(np.uint8)
    for along in range(0, layout.canvas[1] if axis == "x" else width, size):
        x, y = (at - size // 2, along) if axis == "x" else (along, at - size // 2)
        pixels[y:y + size, x:x + size] = levels
    return Image.fromarray(pixels).convert("RGB")


def _records(layout: ProbeLayout, image_dir: Path, name: str, count: int, placements: list[str],
             rng: random.Random) -> list[dict]:
    seams = {split: layout.seams(split) for split in SPLITS}
    # Exactly half of each placement's answers are "1" (to one image): a model that gives every question the same
    # answer scores 50% on every split and seed, so a constant answer cannot pass for a seed-to-seed spread.
    answers = {}
    for placement in placements:
        share = len(range(placements.index(placement), count, len(placements)))
        answers[placement] = [index % 2 == 0 for index in range(share)]
        rng.shuffle(answers[placement])
    records = []
    (image_dir / name).mkdir(parents=True, exist_ok=True)
    for index in range(count):
        placement = placements[index % len(placements)]
        seam = rng.choice(seams[placement])
        first = rng.choice(list(TEXTURES))
        same = answers[placement].pop()
        second = first if same else rng.choice([name for name in TEXTURES if name != first])
        image = f"{name}/{index:06d}.png"
        render(layout, seam, first, second).save(image_dir / image, format="PNG", compress_level=1)
        records.append({"id": f"{name}_{index:06d}", "image": image, "placement": placement,
                        "answer": ANSWERS[same], "halves": [first, second], "seam": list(seam)})
    return records


def caption(first: str, second: str) -> str:
    return f"symbols of {first} and {second} halves" if first != second else f"symbols of {first} on both halves"


def probe_language(repeats: int = 50) -> list[str]:
    """The probe's words (the question and every caption), ``repeats`` times: the tiny demo LLM learns them
    before the VLM stages, as Vicuna knows English. Without them, stage 1's captions are strings of byte
    tokens that the frozen tiny LLM cannot model (loss about 6.5, near uniform), and the connector and CVFM
    that stage 1 hands over often left stage 2 stuck at chance (docs/ablation.md)."""
    captions = [caption(first, second) for first in TEXTURES for second in TEXTURES]
    return [QUESTION, *captions] * repeats


def make_probe(output: str | Path, layout: ProbeLayout, options: ProbeOptions = ProbeOptions()) -> dict[str, str]:
    """Write images, stage 1 captions, stage 2 questions and one bench file per held-out split; returns the paths."""
    output = Path(output)
    image_dir = output / "images"
    rng = random.Random(f"fila-probe:{options.seed}")
    train = _records(layout, image_dir, "train", options.train, list(SPLITS), rng)
    held_out = {split: _records(layout, image_dir, split, options.held_out, [split], rng) for split in SPLITS}
    paths = {"image_folder": str(image_dir), "stage1": str(output / "stage1.jsonl"),
             "stage2": str(output / "stage2.jsonl"), **{split: str(output / f"{split}.jsonl") for split in SPLITS}}
    write_jsonl_atomic(Path(paths["stage1"]), [
        {"id": r["id"], "image": r["image"], "conversations": [
            {"from": "human", "value": f"{IMAGE_TOKEN}\n"}, {"from": "gpt", "value": caption(*r["halves"])}]} for r in train])
    write_jsonl_atomic(Path(paths["stage2"]), [
        {"id": r["id"], "image": r["image"], "conversations": [
            {"from": "human", "value": f"{IMAGE_TOKEN}\n{QUESTION}"}, {"from": "gpt", "value": r["answer"]}]}
        for r in train])
    for split, records in held_out.items():
        write_jsonl_atomic(Path(paths[split]), [{"id": r["id"], "image": r["image"], "question": QUESTION,
                                                 "answers": [r["answer"]]} for r in records])
    # Relative paths: the same seed writes the same bytes wherever the folder is.
    write_json_atomic(output / "probe.json", {"layout": asdict(layout), "options": asdict(options),
                                              "paths": {name: str(Path(path).relative_to(output))
                                                        for name, path in paths.items()},
                                              "held_out": held_out})
    return paths


def probe_paths(folder: str | Path) -> dict[str, str] | None:
    """The files of a probe written to ``folder`` (None: there is none)."""
    index = Path(folder) / "probe.json"
    if not index.is_file():
        return None
    return {name: str(Path(folder) / path) for name, path in json.loads(index.read_text())["paths"].items()}


def layout_for(model: str | Path, canvases: str | None = None, canvas: str | None = None) -> ProbeLayout:
    """The layout of a model config: a FILA / anyres model folder, or a CLIP tower folder (with ``canvases``
    "WxH,..." or FILA's default canvases for its tile). ``canvas`` picks one; default: the one with most tiles."""
    from transformers import AutoConfig, CLIPVisionConfig

    from ..model.options import parse_value
    from ..model.vision.anyres import AnyresConfig
    from ..model.vision.hybrid_encoder import hybrid_config_for
    config = AutoConfig.from_pretrained(model, trust_remote_code=False)
    if config.model_type == "fila":
        vision_config, options = config.vision_config, dict(config.vision_options or {})
    else:
        vision_config, options = CLIPVisionConfig.from_pretrained(model), {}
    if canvases is not None:
        options["anyres"] = {**options.get("anyres", {}), "canvases": parse_value(canvases, tuple[tuple[int, int], ...])}
    anyres: AnyresConfig = hybrid_config_for(vision_config, options).anyres
    if canvas is None:
        chosen = max(anyres.canvases, key=lambda size: (size[0] * size[1], -abs(size[0] - size[1])))
    else:
        chosen = tuple(parse_value(canvas.lower().replace("x", ","), tuple[int, int]))
        if chosen not in anyres.canvases:
            raise ConfigError(f"--canvas {canvas}: not one of the model's canvases "
                              f"{', '.join(f'{w}x{h}' for w, h in anyres.canvases)}")
    return ProbeLayout(tile=anyres.tile_size, patch=vision_config.patch_size, canvas=chosen)


def main(argv: list[str]) -> int:
    import argparse

    parser = StrictParser(prog="fila-train data probe", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output", type=Path, required=True, help="folder to write (images, JSONL files, probe.json)")
    parser.add_argument("--model", required=True,
                        help="a FILA/anyres model folder, or a CLIP vision tower folder: tile, patch and canvases")
    parser.add_argument("--canvases", help="WxH,... for a CLIP tower (default: FILA's canvases for its tile)")
    parser.add_argument("--canvas", help="WxH: the canvas the images fill (default: the one with the most tiles)")
    defaults = ProbeOptions()
    parser.add_argument("--train", type=int, default=defaults.train, help="training images")
    parser.add_argument("--held_out", type=int, default=defaults.held_out, help="images per held-out split")
    parser.add_argument("--seed", type=int, default=defaults.seed)
    args = parser.parse_args(argv)
    layout = layout_for(args.model, args.canvases, args.canvas)
    paths = make_probe(args.output, layout, ProbeOptions(args.train, args.held_out, args.seed))
    print(f"probe for {layout.tile}px tiles of {layout.patch}px patches on a {layout.canvas[0]}x{layout.canvas[1]} "
          f"canvas, seed {args.seed}:")
    for name, path in paths.items():
        print(f"{name:>12}: {path}")
    return 0

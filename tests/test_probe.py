"""The fragmentation probe: deterministic files in our formats, symbols cut by tile borders (fragmented) or
readable inside one tile (control), sized from a model config, and a global view that cannot see the answer."""
from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from fila_train.data.probe import SPLITS, TEXTURES, ProbeLayout, ProbeOptions, layout_for, make_probe, render
from fila_train.utils.errors import ConfigError

TINY_LAYOUT = ProbeLayout(tile=56, patch=14, canvas=(112, 112))


def tower(folder: Path, image_size: int) -> Path:
    """A CLIP tower's config alone (the probe reads sizes, never weights)."""
    from transformers import CLIPVisionConfig

    CLIPVisionConfig(image_size=image_size, patch_size=14).save_pretrained(folder)
    return folder


def digest(folder: Path) -> str:
    hashes = hashlib.sha256()
    for path in sorted(folder.rglob("*")):
        if path.is_file():
            hashes.update(str(path.relative_to(folder)).encode() + path.read_bytes())
    return hashes.hexdigest()


def tiles_of(image: Image.Image, tile: int) -> dict[tuple[int, int], np.ndarray]:
    pixels = np.asarray(image)[..., 0]
    return {(row, col): pixels[row * tile:(row + 1) * tile, col * tile:(col + 1) * tile]
            for row in range(pixels.shape[0] // tile) for col in range(pixels.shape[1] // tile)}


def test_the_same_seed_writes_the_same_bytes(tmp_path):
    options = ProbeOptions(train=12, held_out=6, seed=3)
    make_probe(tmp_path / "a", TINY_LAYOUT, options)
    make_probe(tmp_path / "b", TINY_LAYOUT, options)
    make_probe(tmp_path / "c", TINY_LAYOUT, ProbeOptions(train=12, held_out=6, seed=4))
    assert digest(tmp_path / "a") == digest(tmp_path / "b") != digest(tmp_path / "c")


def test_files_are_our_formats_with_both_answers(tmp_path):
    from fila_train.data.annotations import AnnotationFile
    from fila_train.evaluation.bench import read_bench
    from fila_train.evaluation.metrics import get_metric

    paths = make_probe(tmp_path, TINY_LAYOUT, ProbeOptions(train=40, held_out=30))
    for split in SPLITS:
        questions = read_bench(paths[split], get_metric("exact"), Path(paths["image_folder"]))
        # Exactly balanced: a constant answer scores 50% on every split (and every seed).
        assert len(questions) == 30 and sorted(q.answers[0] for q in questions) == ["0"] * 15 + ["1"] * 15
    for stage in ("stage1", "stage2"):
        records = AnnotationFile(paths[stage])
        assert len(records) == 40
        first = records[0]["conversations"]
        assert first[0]["value"].startswith("<image>\n") and first[1]["value"]
    answers = [AnnotationFile(paths["stage2"])[i]["conversations"][1]["value"] for i in range(40)]
    for placement in (answers[0::2], answers[1::2]):  # training images alternate fragmented, control
        assert sorted(placement) == ["0"] * 10 + ["1"] * 10


@pytest.mark.parametrize("split", SPLITS)
def test_fragmented_symbols_need_two_tiles_and_control_symbols_one(split):
    """Fragmented: every tile looks the same whatever the answer (each holds one half). Control: one tile
    tells the answer (both halves and their seam lie inside it)."""
    for seam in TINY_LAYOUT.seams(split):
        views = {answer: [tiles_of(render(TINY_LAYOUT, seam, first, second), TINY_LAYOUT.tile)
                          for first in TEXTURES for second in TEXTURES if (first == second) == (answer == "1")]
                 for answer in ("1", "0")}
        for position in views["1"][0]:
            seen = {answer: {tiles[position].tobytes() for tiles in views[answer]} for answer in views}
            if split == "fragmented":
                assert seen["1"] == seen["0"], (seam, position)
        if split == "control":
            assert any(not {tiles[p].tobytes() for tiles in views["1"]} & {tiles[p].tobytes() for tiles in views["0"]}
                       for p in views["1"][0]), seam


def test_the_global_view_turns_every_texture_into_the_same_grey():
    """The model's own global view (the canvas squeezed to one tile): inside a band, every texture gives the same
    flat grey, while the tiles keep every pixel. What crosses the downscale is the band's outline and a trace of
    the seam where two textures meet (measured in docs/ablation.md)."""
    from fila_train.model.vision.anyres import AnyresConfig
    from fila_train.model.vision.hybrid_encoder import HybridImageProcessor

    processor = HybridImageProcessor(AnyresConfig(tile_size=56, canvases=((112, 112),)), 14, high_res=False)
    for split in SPLITS:
        for axis, at in TINY_LAYOUT.seams(split):
            views = {name: processor(render(TINY_LAYOUT, (axis, at), name, name))["pixel_values"] for name in TEXTURES}
            centre = at // 2  # in the global view; the band is 7 of its pixels either side
            inside = [(view[0, 0, 6:50, centre - 3:centre + 3] if axis == "x" else view[0, 0, centre - 3:centre + 3, 6:50])
                      for view in views.values()]
            assert all(np.array_equal(region, inside[0]) for region in inside) and np.ptp(inside[0].numpy()) == 0
            tiles = [view[1:] for view in views.values()]
            assert all(not np.array_equal(tiles[0], other) for other in tiles[1:])


def test_the_layout_follows_the_model_config(tmp_path):
    real = layout_for(tower(tmp_path / "clip336", 336))  # FILA's canvases for 336 tiles: the 2x2 one has most tiles
    assert real == ProbeLayout(tile=336, patch=14, canvas=(672, 672))
    assert layout_for(tower(tmp_path / "clip56", 56), canvases="112x112,56x112") == TINY_LAYOUT
    assert layout_for(tmp_path / "clip56", canvases="112x112,56x112", canvas="56x112").canvas == (56, 112)
    assert real.seams("fragmented") == [("x", 336), ("y", 336)]
    paths = make_probe(tmp_path / "probe", real, ProbeOptions(train=2, held_out=2))
    assert Image.open(Path(paths["image_folder"]) / "fragmented/000000.png").size == (672, 672)
    with pytest.raises(ConfigError, match="not one of the model's canvases 112x112, 56x112"):
        layout_for(tmp_path / "clip56", canvases="112x112,56x112", canvas="224x224")
    with pytest.raises(ConfigError, match="single tile"):
        ProbeLayout(tile=56, patch=14, canvas=(56, 56))


def test_fila_train_data_probe_writes_the_probe(tmp_path, capsys):
    from fila_train.data.cli import main

    assert main(["probe", "--output", str(tmp_path / "probe"), "--model", str(tower(tmp_path / "clip", 56)),
                 "--canvases", "112x112", "--train", "4", "--held_out", "2"]) == 0
    assert "56px tiles of 14px patches on a 112x112 canvas" in capsys.readouterr().out
    assert sorted(p.name for p in (tmp_path / "probe").iterdir()) == [
        "control.jsonl", "fragmented.jsonl", "images", "probe.json", "stage1.jsonl", "stage2.jsonl"]

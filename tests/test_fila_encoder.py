"""Tests for FILA's hybrid encoder pieces: anyres cropping, ConvNeXt branch, CVFM, hybrid encoder.

Everything runs on tiny random models (CLIP width 32, tile 28 = 2x2 patches of 14;
ConvNeXt dims 8..64) so the file takes seconds on CPU; no weights are downloaded.
"""
from __future__ import annotations

import copy
import json
import math
import os
import pickle
import random
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
import pytest
import torch
from PIL import Image
from transformers import CLIPVisionConfig, CLIPVisionModel

from fila_train.model.vision.anyres import AnyresConfig, select_canvas
from fila_train.model.vision.clip_encoder import CLIP_MEAN, CLIP_STD, ClipVisionEncoder, to_normalized_tensor
from fila_train.model.vision.convnext_branch import ConvNeXtBranch, ConvNeXtBranchConfig
from fila_train.model.vision.cvfm import ALIGN_MODES, FUSION_MODES, GATE_MODES, CVFMConfig
from fila_train.model.vision.hybrid_encoder import HybridEncoderConfig, HybridImageProcessor, HybridVisionEncoder

TILE, PATCH, GRID = 28, 14, 2
TINY_CANVASES = ((28, 56), (56, 28), (56, 56), (84, 28), (28, 84))  # the 336 set scaled to a 28 tile
REAL_CANVASES = AnyresConfig().canvases
TINY_DIMS, TINY_DEPTHS = (8, 16, 32, 64), (1, 1, 1, 1)
FILL = tuple(int(255 * m) for m in CLIP_MEAN)  # LLaVA truncates the mean colour


# ---------------------------------------------------------------- helpers


def tiny_vision_config() -> CLIPVisionConfig:
    return CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=5, num_attention_heads=2,
                            image_size=TILE, patch_size=PATCH)


def tiny_hybrid_config(**cvfm: str) -> HybridEncoderConfig:
    return HybridEncoderConfig(
        anyres=AnyresConfig(tile_size=TILE, canvases=TINY_CANVASES),
        convnext=ConvNeXtBranchConfig(dims=TINY_DIMS, depths=TINY_DEPTHS),
        cvfm=CVFMConfig(vit_layers=(1, 2, 3, 4), **cvfm),
    )


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny tensors gain nothing from intra-op threads; on a busy 2-core box they only spin."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def tower() -> CLIPVisionModel:
    torch.manual_seed(0)
    return CLIPVisionModel._from_config(tiny_vision_config()).eval()


def make_encoder(tower: CLIPVisionModel, seed: int = 1, **cvfm: str) -> HybridVisionEncoder:
    torch.manual_seed(seed)
    return HybridVisionEncoder(tower.config, tiny_hybrid_config(**cvfm), tower=tower).eval()


def set_gates(encoder: HybridVisionEncoder, value: float) -> None:
    with torch.no_grad():
        for block in encoder.cvfm:
            block.fusion.gate.alpha.fill_(value)


def noise_image(width: int, height: int, rng: np.random.Generator) -> Image.Image:
    return Image.fromarray(rng.integers(0, 256, size=(height, width, 3), dtype=np.uint8))


def reference_canvas(w: int, h: int, canvases) -> tuple[int, int]:
    """The spec's rule written out plainly: max effective resolution, then min waste, then list order."""
    scored = []
    for order, (cw, ch) in enumerate(canvases):
        scale = min(cw / w, ch / h)
        effective = min(math.floor(w * scale) * math.floor(h * scale), w * h)
        scored.append((-effective, cw * ch - effective, order, (cw, ch)))
    return min(scored)[3]


def reference_fit(image: Image.Image, canvas: tuple[int, int]) -> Image.Image:
    """LLaVA-NeXT's resize-and-pad, written out: fit the long side, ceil the other, paste centred."""
    cw, ch = canvas
    if cw / image.width < ch / image.height:
        new_w, new_h = cw, min(math.ceil(image.height * cw / image.width), ch)
    else:
        new_w, new_h = min(math.ceil(image.width * ch / image.height), cw), ch
    new_w, new_h = max(new_w, 1), max(new_h, 1)
    padded = Image.new("RGB", (cw, ch), FILL)
    padded.paste(image.resize((new_w, new_h), Image.Resampling.BICUBIC), ((cw - new_w) // 2, (ch - new_h) // 2))
    return padded


def reference_views(image: Image.Image, canvases, tile: int) -> tuple[tuple[int, int], torch.Tensor, Image.Image]:
    """(grid, views, padded canvas) with the canvas chosen plainly and one PIL crop per tile."""
    canvas = reference_fit(image, reference_canvas(image.width, image.height, canvases))
    views = [image.resize((tile, tile), Image.Resampling.BICUBIC)]
    for top in range(0, canvas.height, tile):
        for left in range(0, canvas.width, tile):
            views.append(canvas.crop((left, top, left + tile, top + tile)))
    return (canvas.height // tile, canvas.width // tile), torch.stack([to_normalized_tensor(v) for v in views]), canvas


def random_sizes(count: int, rng: random.Random, max_side: int) -> list[tuple[int, int]]:
    """Random sizes plus the extremes: 1:20 and 20:1 aspect ratios and images smaller than one tile."""
    sizes = [(1, 1), (5, 7), (27, 27), (20, 400), (400, 20), (3, 60), (60, 3), (max_side, max_side // 20)]
    while len(sizes) < count:
        aspect = math.exp(rng.uniform(math.log(1 / 20), math.log(20)))
        long_side = rng.randint(1, max_side)
        w, h = (long_side, long_side / aspect) if aspect >= 1 else (long_side * aspect, long_side)
        sizes.append((max(1, round(w)), max(1, round(h))))
    return sizes


def assert_processed_like_reference(processor: HybridImageProcessor, image: Image.Image) -> None:
    tile = processor.anyres.tile_size
    out = processor(image)
    grid, views, canvas = reference_views(image, processor.anyres.canvases, tile)
    assert out["grid"] == grid, image.size
    assert torch.equal(out["pixel_values"], views), image.size
    high_h, high_w = canvas.height * 32 // 14, canvas.width * 32 // 14
    assert out["hr_pixel_values"].shape == (1, 3, high_h, high_w)
    # The high-res canvas is resized from the original image (detail beyond the tiles' resolution).
    high_res = reference_fit(image, (high_w, high_h))
    assert torch.equal(out["hr_pixel_values"][0], to_normalized_tensor(high_res))
    assert processor.num_image_tokens(out) == (1 + grid[0] * grid[1]) * (tile // 14) ** 2


# ---------------------------------------------------------------- 1. canvas choice and tiling


def test_canvas_and_tiles_match_reference_on_tiny_tiles() -> None:
    rng, np_rng = random.Random(0), np.random.default_rng(0)
    processor = HybridImageProcessor(AnyresConfig(tile_size=TILE, canvases=TINY_CANVASES), patch_size=PATCH)
    sizes = random_sizes(220, rng, max_side=300)
    for w, h in sizes:
        assert select_canvas(w, h, TINY_CANVASES) == reference_canvas(w, h, TINY_CANVASES), (w, h)
        assert_processed_like_reference(processor, noise_image(w, h, np_rng))
    assert {reference_canvas(w, h, TINY_CANVASES) for w, h in sizes} == set(TINY_CANVASES)  # all get used


def test_canvas_and_tiles_match_reference_at_336() -> None:
    rng, np_rng = random.Random(1), np.random.default_rng(1)
    for w, h in random_sizes(500, rng, max_side=4000):
        assert select_canvas(w, h, REAL_CANVASES) == reference_canvas(w, h, REAL_CANVASES), (w, h)
    processor = HybridImageProcessor(AnyresConfig(), patch_size=14)
    for w, h in [(1920, 1080), (50, 1000), (1000, 50), (200, 150), (100, 100), (700, 1400), (2000, 600)]:
        assert_processed_like_reference(processor, noise_image(w, h, np_rng))


def test_the_defaults_are_fila_md_s() -> None:
    """fila.md's defaults, which every option left unset takes: the LLaVA-NeXT canvases (W x H) of 336 tiles;
    the OpenCLIP ConvNeXt-L (320), frozen; fusion after ViT blocks 2, 6, 12, 20 by concat over average-pooled
    windows, with a scalar gate; LLaVA's layer -2 features into mlp2x_gelu."""
    from fila_train.model.configuration import FilaConfig

    config = HybridEncoderConfig()
    assert config.anyres.tile_size == 336
    assert sorted(config.anyres.canvases) == sorted([(336, 672), (672, 336), (672, 672), (1008, 336), (336, 1008)])
    assert config.convnext.model_name == "convnext_large_d_320" and not config.convnext.trainable
    cvfm = config.cvfm
    assert (cvfm.vit_layers, cvfm.align, cvfm.fusion, cvfm.gate) == ((2, 6, 12, 20), "avg_pool", "concat", "scalar")
    assert (FilaConfig.vision_feature_layer, FilaConfig.connector_type) == (-2, "mlp2x_gelu")


# ---------------------------------------------------------------- 2. identity at init


def mixed_batch(processor: HybridImageProcessor) -> tuple[dict, list[dict]]:
    """Two images that land on different canvases: 1x3 and 3x1 tiles, different high-res shapes."""
    rng = np.random.default_rng(2)
    processed = [processor(noise_image(100, 30, rng)), processor(noise_image(30, 100, rng)),
                 processor(noise_image(50, 50, rng))]
    return processor.collate(processed), processed


@pytest.mark.parametrize("gate", GATE_MODES)
@pytest.mark.parametrize("align", ALIGN_MODES)
@pytest.mark.parametrize("fusion", FUSION_MODES)
def test_zero_gates_equal_plain_clip(tower: CLIPVisionModel, fusion: str, align: str, gate: str) -> None:
    encoder = make_encoder(tower, fusion=fusion, align=align, gate=gate)
    batch, _ = mixed_batch(encoder.image_processor())
    plain = ClipVisionEncoder(tower.config, tower=tower)
    with torch.no_grad():
        hybrid_out = encoder(batch, output_hidden_states=True)
        plain_out = plain({"pixel_values": batch["pixel_values"]}, output_hidden_states=True)
    torch.testing.assert_close(hybrid_out.features, plain_out.features, rtol=1e-6, atol=1e-6)
    assert len(hybrid_out.hidden_states) == len(plain_out.hidden_states)
    for ours, theirs in zip(hybrid_out.hidden_states, plain_out.hidden_states):
        torch.testing.assert_close(ours, theirs, rtol=1e-6, atol=1e-6)
    with torch.no_grad():  # features without hidden states stop early; same values
        torch.testing.assert_close(encoder(batch).features, plain_out.features, rtol=1e-6, atol=1e-6)


# ---------------------------------------------------------------- 3. alignment


def run_with_planted(encoder: HybridVisionEncoder, batch: dict, stage: int, point: tuple[int, int] | None):
    """Hidden states with a feature planted at one position of ConvNeXt stage ``stage`` (after the branch,
    before CVFM). The feature is a random direction, not a constant: CVFM's LayerNorm would erase a
    shift shared by all channels."""
    feature = 5.0 * torch.randn(encoder.convnext.stage_channels[stage], generator=torch.Generator().manual_seed(7))

    def plant(_module, _inputs, maps: list[torch.Tensor]) -> list[torch.Tensor]:
        maps = [m.clone() for m in maps]
        # The branch also runs (empty) for every configured canvas this batch does not use.
        if point is not None and maps[stage].shape[0] > 0:
            maps[stage][:, :, point[0], point[1]] += feature
        return maps

    handle = encoder.convnext.register_forward_hook(plant)
    try:
        with torch.no_grad():
            return encoder(batch, output_hidden_states=True).hidden_states
    finally:
        handle.remove()


# Windows are cut out of the stage map before any reduction (see WindowAligner), so locality
# holds by construction for all three alignment modes, the strided conv and antialiased
# interpolation included; the test checks it for each.
@pytest.mark.parametrize(("align", "fusion"), [(a, "concat") for a in ALIGN_MODES] + [("avg_pool", "add"),
                                                                                     ("avg_pool", "cross_attn")])
@pytest.mark.parametrize("canvas_size", [(100, 100), (120, 35)])  # 2x2 tiles on 56x56; 1x3 tiles on 84x28
def test_planted_feature_reaches_only_its_tile_and_global(tower, align: str, fusion: str, canvas_size) -> None:
    encoder = make_encoder(tower, align=align, fusion=fusion)
    set_gates(encoder, 0.7)
    processed = encoder.image_processor()(noise_image(*canvas_size, np.random.default_rng(3)))
    rows, cols = processed["grid"]
    batch = encoder.image_processor().collate([processed])
    layers = encoder.hybrid_config.cvfm.vit_layers
    rng = random.Random(4)
    for stage in range(4):
        side = GRID * 2 ** (3 - stage)  # the stage-k window of one tile
        baseline = run_with_planted(encoder, batch, stage, None)
        for r in range(rows):
            for c in range(cols):
                point = (r * side + rng.randrange(side), c * side + rng.randrange(side))
                planted = run_with_planted(encoder, batch, stage, point)
                tile_view = 1 + r * cols + c
                for layer, (before, after) in enumerate(zip(baseline, planted)):
                    changed = [not torch.equal(before[v], after[v]) for v in range(1 + rows * cols)]
                    expect = [layer >= layers[stage] and v in (0, tile_view) for v in range(1 + rows * cols)]
                    assert changed == expect, (align, fusion, stage, (r, c), layer)


# ---------------------------------------------------------------- 4. gradients


def test_gradients_reach_cvfm_only(tower: CLIPVisionModel) -> None:
    encoder = make_encoder(copy.deepcopy(tower), align="strided_conv")
    encoder.clip.requires_grad_(False)  # the trainer freezes the ViT; the ConvNeXt freezes itself
    encoder.train()
    assert not encoder.convnext.training and not any(p.requires_grad for p in encoder.convnext.parameters())
    batch, _ = mixed_batch(encoder.image_processor())
    encoder(batch).features.square().mean().backward()
    # At init only the gates can move (the MLP's output is multiplied by tanh(0) = 0) ...
    for block in encoder.cvfm:
        assert block.fusion.gate.alpha.grad.abs().sum() > 0
    encoder.zero_grad(set_to_none=True)
    set_gates(encoder, 0.5)
    encoder(batch).features.square().mean().backward()
    # ... once open, every CVFM parameter learns; the frozen branches get nothing.
    for name, param in encoder.cvfm.named_parameters():
        assert param.grad is not None and param.grad.abs().sum() > 0, name
    for block in encoder.cvfm:  # what an integrator calls after meta-device construction: back to identity
        block.reset_parameters()
        assert not block.fusion.gate.alpha.any()
    assert all(p.grad is None for p in encoder.clip.parameters())
    assert all(p.grad is None for p in encoder.convnext.parameters())
    tunable = {name.split(".")[0] for name, p in encoder.named_parameters() if p.requires_grad}
    assert tunable == {"cvfm"}


def test_trainable_convnext_gets_gradients(tower: CLIPVisionModel) -> None:
    config = tiny_hybrid_config()
    config.convnext.trainable = True
    encoder = HybridVisionEncoder(tower.config, config, tower=copy.deepcopy(tower)).train()
    set_gates(encoder, 0.5)
    batch, _ = mixed_batch(encoder.image_processor())
    encoder(batch).features.sum().backward()
    assert encoder.convnext.training
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in encoder.convnext.parameters())


# ---------------------------------------------------------------- 5. ConvNeXt save/load, normalisation


def branch_outputs(branch: ConvNeXtBranch) -> list[torch.Tensor]:
    torch.manual_seed(5)
    return branch(torch.randn(2, 3, 64, 96))


def assert_same_branch(a: ConvNeXtBranch, b: ConvNeXtBranch) -> None:
    assert a.trunk.state_dict().keys() == b.trunk.state_dict().keys()
    for key, value in a.trunk.state_dict().items():
        assert torch.equal(value, b.trunk.state_dict()[key]), key
    for x, y in zip(branch_outputs(a), branch_outputs(b)):
        assert torch.equal(x, y)


def test_convnext_save_load_round_trip(tmp_path: Path) -> None:
    torch.manual_seed(6)
    arch = ConvNeXtBranchConfig(dims=TINY_DIMS, depths=TINY_DEPTHS)
    branch = ConvNeXtBranch(arch)
    assert branch.stage_channels == TINY_DIMS
    assert [tuple(m.shape[-2:]) for m in branch_outputs(branch)] == [(16, 24), (8, 12), (4, 6), (2, 3)]

    # 1) save() writes an OpenCLIP HF-format folder; load() reads it back.
    assert_same_branch(branch, ConvNeXtBranch.load(branch.save(tmp_path / "saved")))

    trunk = branch.trunk.state_dict()
    # 2) an open_clip full-model state dict file (.bin): trunk under visual.trunk., plus heads and text keys.
    full = {f"visual.trunk.{k}": v for k, v in trunk.items()}
    full |= {"visual.head.mlp.fc1.weight": torch.zeros(4, 64), "visual.trunk.head.norm.weight": torch.ones(64),
             "text_projection": torch.zeros(8, 8), "logit_scale": torch.tensor(1.0)}
    torch.save(full, tmp_path / "open_clip_model.bin")
    assert_same_branch(branch, ConvNeXtBranch(ConvNeXtBranchConfig(dims=TINY_DIMS, depths=TINY_DEPTHS,
                                                                   checkpoint=str(tmp_path / "open_clip_model.bin"))))

    # 3) a bare-trunk safetensors file, and a DDP-wrapped training checkpoint.
    from safetensors.torch import save_file

    save_file({k: v.contiguous() for k, v in trunk.items()}, str(tmp_path / "trunk.safetensors"))
    torch.save({"epoch": 3, "state_dict": {f"module.{k}": v for k, v in full.items()}}, tmp_path / "epoch_3.pt")
    for name in ("trunk.safetensors", "epoch_3.pt"):
        config = ConvNeXtBranchConfig(dims=TINY_DIMS, depths=TINY_DEPTHS, checkpoint=str(tmp_path / name))
        assert_same_branch(branch, ConvNeXtBranch(config))

    # 4) an HF-hub-style folder holding open_clip_pytorch_model.bin (real laion repos), given the architecture.
    hub = tmp_path / "hub"
    hub.mkdir()
    torch.save(full, hub / "open_clip_pytorch_model.bin")
    assert_same_branch(branch, ConvNeXtBranch.load(hub, arch))

    # A checkpoint of another architecture fails loudly.
    with pytest.raises(ValueError, match="does not hold this ConvNeXt trunk"):
        ConvNeXtBranch(ConvNeXtBranchConfig(dims=(8, 16, 32, 64), depths=(1, 1, 2, 1), checkpoint=str(hub)))



def test_random_convnext_sees_across_a_window_border() -> None:
    """FILA needs the ConvNeXt to carry context across tile borders. With timm's default layer scale (1e-6) a
    random trunk's blocks are identities, so a last-stage cell saw only its own window: the tiny models'
    ConvNeXt could not repair a cut at all (docs/ablation.md)."""
    torch.manual_seed(7)
    branch = ConvNeXtBranch(ConvNeXtBranchConfig(dims=TINY_DIMS, depths=TINY_DEPTHS))
    image = torch.randn(1, 3, 128, 256)
    changed = image.clone()
    changed[..., 128:] = torch.randn(1, 3, 128, 128)  # only the right window (x >= 128) changes
    before, after = branch(image)[-1], branch(changed)[-1]  # last stage: stride 32, the window border at cell 4
    left_cell = (after[..., 3] - before[..., 3]).norm() / before[..., 3].norm()
    assert left_cell > 0.05, f"the cell left of the border moved by {left_cell:.2e} of its norm"
    assert torch.equal(branch(image)[-1], before)  # and the branch is deterministic (eval, no drop-path)
def test_normalisation_mismatch_raises(tower: CLIPVisionModel, tmp_path: Path) -> None:
    config = tiny_hybrid_config()
    config.convnext.mean, config.convnext.std = (0.5, 0.5, 0.5), (0.5, 0.5, 0.5)
    with pytest.raises(ValueError, match="normalisation"):
        HybridVisionEncoder(tower.config, config, tower=tower)
    # Same through a checkpoint folder whose open_clip_config.json declares other constants.
    folder = ConvNeXtBranch(ConvNeXtBranchConfig(dims=TINY_DIMS, depths=TINY_DEPTHS)).save(tmp_path / "imagenet")
    meta = json.loads((folder / "open_clip_config.json").read_text())
    meta["preprocess_cfg"] = {"mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]}
    (folder / "open_clip_config.json").write_text(json.dumps(meta))
    config = tiny_hybrid_config()
    config.convnext.checkpoint = str(folder)
    with pytest.raises(ValueError, match="normalisation"):
        HybridVisionEncoder(tower.config, config, tower=tower)
    # convnext.mean/std that contradict the folder's own: before, the options won and the check above passed, exit 0.
    config.convnext.mean, config.convnext.std = CLIP_MEAN, CLIP_STD
    with pytest.raises(ValueError, match=r"convnext.mean/std .* contradict .*open_clip_config.json \(mean \(0.485"):
        HybridVisionEncoder(tower.config, config, tower=tower)


# ---------------------------------------------------------------- 6. mixed batch, configs, FLOPs


def test_mixed_batch_token_counts_and_batch_invariance(tower: CLIPVisionModel) -> None:
    encoder = make_encoder(tower)
    set_gates(encoder, 0.5)
    processor = encoder.image_processor()
    batch, processed = mixed_batch(processor)
    assert pickle.loads(pickle.dumps(processor)) == processor  # runs in dataloader workers
    assert isinstance(batch["hr_pixel_values"], list)  # different canvases cannot be stacked
    assert [tuple(g) for g in batch["grids"].tolist()] == [(1, 3), (3, 1), (2, 2)]
    with torch.no_grad():
        features = encoder(batch).features
    counts = [processor.num_image_tokens(p) for p in processed]
    assert features.shape == (sum(counts) // processor.tokens_per_view, processor.tokens_per_view, encoder.hidden_size)
    per_image = features.flatten(0, 1).split(counts)
    assert [t.shape[0] for t in per_image] == counts
    # Each image's tokens equal those it gets when encoded alone: order kept, no cross-image mixing.
    for tokens, single in zip(per_image, processed):
        with torch.no_grad():
            alone = encoder(processor.collate([single])).features.flatten(0, 1)
        torch.testing.assert_close(tokens, alone, rtol=1e-5, atol=1e-5)


def test_configs_round_trip_through_json() -> None:
    config = tiny_hybrid_config(fusion="cross_attn", align="interpolate", gate="channel")
    data = json.loads(json.dumps(config.to_dict()))
    assert HybridEncoderConfig.from_dict(data) == config
    assert HybridEncoderConfig.from_dict(HybridEncoderConfig().to_dict()) == HybridEncoderConfig()
    with pytest.raises(ValueError):
        CVFMConfig(fusion="gated_sum")
    with pytest.raises(ValueError):
        AnyresConfig(tile_size=336, canvases=((300, 336),))


def test_flops_and_parameter_overhead(tower: CLIPVisionModel) -> None:
    encoder = make_encoder(tower)
    flops = encoder.vision_flops_per_image((56, 56))
    assert set(flops) == {"vit", "convnext", "cvfm", "total"}
    assert all(v > 0 for v in flops.values())
    assert flops["total"] == pytest.approx(flops["vit"] + flops["convnext"] + flops["cvfm"])
    # The ViT part matches 5 views through the plain CLIP tower (feature layer -2: one block is skipped).
    d, n, layers = 32, GRID * GRID + 1, 4
    per_view = 2 * (3 * 14 * 14 * d * GRID * GRID + layers * (n * (4 * d * d + 2 * d * 64) + 2 * n * n * d))
    assert flops["vit"] * 1e12 == pytest.approx(5 * per_view)
    params = encoder.parameter_counts()
    assert params["overhead"] == params["convnext"] + params["cvfm"] > 0
    assert "TFLOPs" in encoder.overhead_report((56, 56))


def test_the_zero_linking_unused_maps_to_the_loss_stays_zero_in_fp16():
    """Under --fp16 a trained ConvNeXt's stage map sums past fp16's 65504: the old fp16 sum gave inf, and
    inf * 0 made every hidden state NaN at step 0. The link must be an exact 0 that keeps fp16 and the gradient path."""
    from fila_train.model.zero_link import zero_from

    stage_map = torch.full((64, 64, 64), 8.0, dtype=torch.float16, requires_grad=True)  # sums to 2.1M
    hidden = torch.ones(3, dtype=torch.float16, requires_grad=True)
    linked = hidden + zero_from([stage_map])
    assert linked.dtype == torch.float16 and torch.equal(linked, hidden)
    linked.sum().backward()
    assert torch.equal(stage_map.grad, torch.zeros_like(stage_map))  # reached, with nothing added


# ---------------------------------------------------------------- 7. the feature layer


@pytest.mark.parametrize("layer", [6, 30, -7])
def test_a_feature_layer_the_vit_lacks_is_one_line_naming_the_flag(tower: CLIPVisionModel, layer: int) -> None:
    """The 5-layer tower has hidden states 0..5 (-6..-1). Before, the hybrid encoder took the layer modulo 6 (6 and
    30 gave the embeddings, -7 the last layer) with exit 0, and the CLIP and anyres encoders failed with an
    IndexError traceback at their first forward, after every weight had loaded."""
    from fila_train.model.vision.anyres_encoder import AnyresEncoderConfig, AnyresVisionEncoder
    from fila_train.utils.errors import ConfigError

    message = rf"--vision_feature_layer {layer} is out of range for a ViT with 5 layers \(valid -6\.\.5"
    builds = {"clip": lambda: ClipVisionEncoder(tower.config, layer, tower=tower),
              "anyres": lambda: AnyresVisionEncoder(tower.config, AnyresEncoderConfig(tiny_hybrid_config().anyres),
                                                    layer, tower=tower),
              "fila_hybrid": lambda: HybridVisionEncoder(tower.config, tiny_hybrid_config(), layer, tower=tower)}
    for name, build in builds.items():
        with pytest.raises(ConfigError, match=message):
            build()
    for valid in (5, -6, 0):  # the last layer, the embeddings: still allowed
        ClipVisionEncoder(tower.config, valid, tower=tower)


@pytest.mark.parametrize("dims, depths", [((8, 16, 32), (1, 1, 1)), ((8, 16, 32, 64), (1, 1, 1)),
                                          ((8, 16, 32, 64, 128), (1, 1, 1, 1, 1)), ((8, 16, 0, 64), (1, 1, 1, 1))])
def test_a_convnext_shape_fila_cannot_fuse_is_one_line_naming_the_flags(dims, depths) -> None:
    """CVFM fuses one ConvNeXt stage per interaction point and the processor scales the canvas by the total stride 32
    of 4 stages. Before, 3 dims (or 3 depths) were an IndexError traceback inside timm while the model was built,
    after the LLM had loaded; 5 were silently cut to 4 stages by timm, then refused as '5 vit_layers for 4 ConvNeXt
    stages', though the user had given 5 of each."""
    from fila_train.utils.errors import ConfigError

    with pytest.raises(ConfigError, match=r"--convnext_dims/--convnext_depths") as error:
        ConvNeXtBranchConfig(dims=dims, depths=depths)
    assert "\n" not in str(error.value)


@pytest.mark.parametrize("align", ALIGN_MODES)
def test_every_align_mode_runs_in_bf16_on_the_cpu(tower: CLIPVisionModel, align: str) -> None:
    """A bf16 model (--bf16, or inference in bf16) on the CPU. Before, align=interpolate failed at the first forward
    with NotImplementedError: torch's antialiased bilinear resize has no bf16/fp16 CPU kernel."""
    encoder = make_encoder(copy.deepcopy(tower), align=align)
    set_gates(encoder, 0.5)
    batch, _ = mixed_batch(encoder.image_processor())
    with torch.no_grad():
        reference = encoder(batch).features
        features = encoder.to(torch.bfloat16)(batch).features
    assert features.dtype == torch.bfloat16
    torch.testing.assert_close(features.float(), reference, rtol=0, atol=0.1)  # bf16 rounding through 4 blocks

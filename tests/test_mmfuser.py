"""Tests for the MMFuser connector and its deformable attention."""

from __future__ import annotations

import json
import math

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from fila_train.model.connector.deformable_attention import MultiScaleDeformableAttention
from fila_train.model.connector.mmfuser import MMFuser, MMFuserConfig, grid_centres


def _small_fuser(dim: int = 32, levels: int = 4, heads: int = 4, points: int = 2) -> MMFuser:
    cfg = MMFuserConfig(key_layers=tuple(range(-levels - 2, -2)), num_heads=heads, num_points=points)
    return MMFuser(dim, cfg)


def _inputs(fuser: MMFuser, batch: int, hw: tuple[int, int], dtype=torch.float32) -> tuple[Tensor, list[Tensor]]:
    n = hw[0] * hw[1]
    query = torch.randn(batch, n, fuser.dim, dtype=dtype)
    keys = [torch.randn(batch, n, fuser.dim, dtype=dtype) for _ in range(fuser.num_levels)]
    return query, keys


# ---------------------------------------------------------------- reference


def _bilinear_ref(value: Tensor, start: int, h: int, w: int, x: float, y: float) -> Tensor:
    """Bilinear read of one level (flattened row-major at ``start``) at normalised (x, y).

    value: [Nv, hd]. align_corners=False convention: pixel centre i sits at (i + 0.5) / size.
    Neighbours outside the map contribute zero.
    """
    px, py = x * w - 0.5, y * h - 0.5
    x0, y0 = math.floor(px), math.floor(py)
    fx, fy = px - x0, py - y0
    out = torch.zeros(value.shape[-1], dtype=value.dtype)
    for xi, yi, wt in (
        (x0, y0, (1 - fx) * (1 - fy)),
        (x0 + 1, y0, fx * (1 - fy)),
        (x0, y0 + 1, (1 - fx) * fy),
        (x0 + 1, y0 + 1, fx * fy),
    ):
        if 0 <= xi < w and 0 <= yi < h:
            out += wt * value[start + yi * w + xi]
    return out


def _msda_reference(
    attn: MultiScaleDeformableAttention, query: Tensor, ref: Tensor, value: Tensor, shapes: list[tuple[int, int]]
) -> tuple[Tensor, float]:
    """Explicit per-(query, head, level, point) loop, in float64.

    Returns the output and the fraction of sampling points outside their map.
    """
    bsz, nq, _ = query.shape
    heads, levels, points, hd = attn.num_heads, attn.num_levels, attn.num_points, attn.head_dim
    lin = lambda layer, x: x.double() @ layer.weight.double().T + layer.bias.double()  # noqa: E731
    v = lin(attn.value_proj, value).view(bsz, -1, heads, hd)
    off = lin(attn.sampling_offsets, query).view(bsz, nq, heads, levels, points, 2)
    logits = lin(attn.attention_weights, query).view(bsz, nq, heads, levels * points)
    weights = logits.softmax(-1).view(bsz, nq, heads, levels, points)
    starts = [0]
    for h, w in shapes[:-1]:
        starts.append(starts[-1] + h * w)

    out = torch.zeros(bsz, nq, heads, hd, dtype=torch.float64)
    outside, total = 0, 0
    for b in range(bsz):
        for q in range(nq):
            for m in range(heads):
                for lvl, (h, w) in enumerate(shapes):
                    for p in range(points):
                        x = ref[b, q, lvl, 0].item() + off[b, q, m, lvl, p, 0].item() / w
                        y = ref[b, q, lvl, 1].item() + off[b, q, m, lvl, p, 1].item() / h
                        outside += not (0.0 <= x <= 1.0 and 0.0 <= y <= 1.0)
                        total += 1
                        sample = _bilinear_ref(v[b, :, m], starts[lvl], h, w, x, y)
                        out[b, q, m] += weights[b, q, m, lvl, p] * sample
    out = out.view(bsz, nq, heads * hd)
    return lin(attn.output_proj, out), outside / total


@pytest.mark.parametrize(
    "shapes",
    [[(3, 5), (6, 4), (2, 2)], [(4, 4)], [(1, 7), (5, 1)], [(6, 6), (3, 3), (2, 2), (1, 1)]],
)
def test_deformable_attention_matches_explicit_reference(shapes: list[tuple[int, int]]) -> None:
    torch.manual_seed(0)
    dim, heads, points, bsz, nq = 16, 2, 3, 2, 5
    attn = MultiScaleDeformableAttention(dim, len(shapes), num_heads=heads, num_points=points)
    with torch.no_grad():  # random, non-zero offsets (several pixels) and attention logits
        nn.init.normal_(attn.sampling_offsets.weight, std=1.0)
        nn.init.normal_(attn.sampling_offsets.bias, std=3.0)
        nn.init.normal_(attn.attention_weights.weight, std=0.5)
        nn.init.normal_(attn.attention_weights.bias, std=0.5)
        for proj in (attn.value_proj, attn.output_proj):
            nn.init.normal_(proj.bias, std=0.1)

    query = torch.randn(bsz, nq, dim)
    ref = torch.rand(bsz, nq, len(shapes), 2)
    value = torch.randn(bsz, sum(h * w for h, w in shapes), dim)
    spatial_shapes = torch.tensor(shapes, dtype=torch.long)
    level_start = torch.cat([spatial_shapes.new_zeros(1), spatial_shapes.prod(1).cumsum(0)[:-1]])

    out = attn(query, ref, value, spatial_shapes, level_start)
    expected, frac_outside = _msda_reference(attn, query, ref, value, shapes)

    assert frac_outside > 0.1, "test should exercise points outside the maps"
    assert out.dtype == torch.float32
    torch.testing.assert_close(out.double(), expected, atol=1e-5, rtol=1e-5)


def test_directional_grid_init() -> None:
    attn = MultiScaleDeformableAttention(32, num_levels=2, num_heads=8, num_points=3)
    bias = attn.sampling_offsets.bias.view(8, 2, 3, 2)
    assert torch.all(attn.sampling_offsets.weight == 0)
    assert torch.all(attn.attention_weights.weight == 0) and torch.all(attn.attention_weights.bias == 0)
    for p in range(3):  # point p sits on ring p+1
        torch.testing.assert_close(bias[0, 1, p], torch.tensor([p + 1.0, 0.0]))  # angle 0
        torch.testing.assert_close(bias[1, 0, p], torch.tensor([p + 1.0, p + 1.0]))  # 45 deg -> corner
        torch.testing.assert_close(bias[2, 0, p], torch.tensor([0.0, p + 1.0]), atol=1e-6, rtol=0)  # 90 deg
    assert bias.abs().amax(-1).eq(torch.arange(1.0, 4.0)).all()  # max-abs normalisation


# ---------------------------------------------------------------- fuser


def test_identity_at_init() -> None:
    torch.manual_seed(0)
    fuser = _small_fuser()
    query, keys = _inputs(fuser, batch=2, hw=(6, 6))
    out = fuser(query, keys)
    assert torch.equal(out, query)


def test_non_square_grid_and_shape_checks() -> None:
    torch.manual_seed(0)
    fuser = _small_fuser(levels=2)
    with torch.no_grad():
        fuser.gamma1.fill_(1.0)
    query, keys = _inputs(fuser, batch=1, hw=(3, 5))
    assert fuser(query, keys, grid_shape=(3, 5)).shape == query.shape
    with pytest.raises(ValueError):
        fuser(query, keys)  # 15 tokens: not square
    with pytest.raises(ValueError):
        fuser(query, keys[:1], grid_shape=(3, 5))


def test_grid_centres() -> None:
    c = grid_centres(2, 4)
    assert c.shape == (8, 2)
    torch.testing.assert_close(c[0], torch.tensor([0.125, 0.25]))  # (x, y) of top-left
    torch.testing.assert_close(c[5], torch.tensor([0.375, 0.75]))  # row 1, col 1


def test_parameter_count_exact() -> None:
    with torch.device("meta"):
        fuser = MMFuser(1024, MMFuserConfig())
    count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    assert count(fuser) == 5_190_592
    assert count(fuser.cross_attn) == 2_886_400
    assert count(fuser.self_attn) == 2_296_000
    assert not list(fuser.buffers())  # nothing to partition/gather under ZeRO-3


def test_config_roundtrip() -> None:
    cfg = MMFuserConfig(key_layers=(-20, -10), num_points=2)
    d = json.loads(json.dumps(cfg.to_dict()))
    assert MMFuserConfig.from_dict(d) == cfg
    assert MMFuserConfig.from_dict({}) == MMFuserConfig()


def test_bf16_runs_and_samples_in_fp32(monkeypatch: pytest.MonkeyPatch) -> None:
    torch.manual_seed(0)
    fuser = _small_fuser(dim=64)
    with torch.no_grad():
        fuser.gamma1.fill_(1.0)
        fuser.gamma2.fill_(1.0)
    query, keys = _inputs(fuser, batch=2, hw=(5, 5))
    ref_out = fuser(query, keys)

    seen: list[tuple[torch.dtype, torch.dtype]] = []
    orig = F.grid_sample

    def spy(inp: Tensor, grid: Tensor, *args, **kwargs) -> Tensor:
        seen.append((inp.dtype, grid.dtype))
        return orig(inp, grid, *args, **kwargs)

    monkeypatch.setattr(F, "grid_sample", spy)
    fuser_bf16 = fuser.to(torch.bfloat16)
    out = fuser_bf16(query.bfloat16(), [k.bfloat16() for k in keys])

    assert out.dtype == torch.bfloat16
    assert seen and all(d == (torch.float32, torch.float32) for d in seen)
    torch.testing.assert_close(out.float(), ref_out, atol=0.1, rtol=0.05)


def _grads(fuser: MMFuser) -> dict[str, Tensor]:
    fuser.zero_grad(set_to_none=True)
    query, keys = _inputs(fuser, batch=2, hw=(4, 4))
    out = fuser(query, keys)
    (out * torch.randn_like(out)).sum().backward()
    grads = {}
    for name, p in fuser.named_parameters():
        assert p.grad is not None, name
        assert torch.isfinite(p.grad).all(), name
        grads[name] = p.grad
    return grads


def test_gradients_reach_all_parameters() -> None:
    torch.manual_seed(0)
    fuser = _small_fuser()
    with torch.no_grad():
        fuser.gamma1.normal_()
        fuser.gamma2.normal_()
    # At init the offset/attention-weight matrices are zero, so LayerNorm_q only
    # reaches the output through them and gets an exactly-zero gradient (it
    # becomes non-zero after the first update). Everything else learns at once.
    grads = _grads(fuser)
    for name, g in grads.items():
        if not name.startswith("norm_query."):
            assert g.abs().sum() > 0, name

    with torch.no_grad():  # emulate a trained step: non-zero query-dependent weights
        for attn in (fuser.cross_attn, fuser.self_attn):
            attn.sampling_offsets.weight.normal_(std=0.01)
            attn.attention_weights.weight.normal_(std=0.01)
    for name, g in _grads(fuser).items():
        assert g.abs().sum() > 0, name


@pytest.mark.parametrize("options, message", [
    # Before: accepted, and the fuser was an identity for ever (no sampling point, nothing to attend to), exit 0.
    ({"num_points": 0}, "MMFuser option num_points=0 (--connector_option num_points): must be >= 1"),
    # Before: a ValueError traceback (torch.cat of no keys) at the first forward, after the weights loaded.
    ({"key_layers": []}, "MMFuser option key_layers=() (--fuser_key_layers): must name at least one layer"),
    # Before: a ZeroDivisionError traceback while building the model.
    ({"num_heads": 0}, "MMFuser option num_heads=0 (--connector_option num_heads): must be >= 1"),
    ({"layer_norm_eps": 0.0}, "MMFuser option layer_norm_eps=0.0 (--connector_option layer_norm_eps): must be > 0"),
    # Before: refused only while building the model, after the LLM and ViT had loaded.
    ({"num_heads": 3}, "MMFuser option num_heads=3 (--connector_option num_heads): the ViT width 32 is not "
                       "divisible by it"),
])
def test_option_values_the_fuser_cannot_use_are_one_line_before_any_weights_load(options, message) -> None:
    from transformers import CLIPVisionConfig

    from fila_train.model.connector.mmfuser_connector import check_fresh_options
    from fila_train.utils.errors import ConfigError

    vision = CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=6, num_attention_heads=4)
    with pytest.raises(ConfigError) as error:
        check_fresh_options(vision, {"key_layers": [-6, -5], "num_heads": 4, **options})
    assert message in str(error.value) and "\n" not in str(error.value)

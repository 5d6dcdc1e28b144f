"""RoPE (posenc.encodings.rope): float64 properties and golden references.

Two precisions, kept apart on purpose:

- Pure-math properties run ``apply_rotary`` in float64 on float64 cos/sin built here from float64
  angles, so they hold to float64 rounding (tolerance ~1e-10 relative), including negative angles.
- ``RotaryEmbedding`` always computes its angles and cos/sin in float32 (its documented
  convention), so on float64 q/k it applies a rotation by float32-rounded angles. For position m
  and frequency w <= 1, fl32(m * fl32(w)) is within m * 2**-23 of m * w, and evaluating cos/sin
  adds ~1e-7. ``angle_tol`` is that bound with a 4x margin (which also covers Hugging Face's
  float32 inverse frequencies); module tolerances derive from it and grow with the position.
  Where both sides use the same float32 tables the tolerance is 1e-6 (an ulp between cos/sin
  code paths), far below the O(1) error of a wrong sign, pairing or position.
"""

from __future__ import annotations

import math
from unittest import mock

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from posenc import RotaryEmbedding
from posenc.encodings import rotation
from posenc.encodings.rope import LAYOUTS, apply_rotary, rope_cos_sin, rope_inv_freq

F64 = torch.float64
BASES = (10000.0, 500000.0, 100.0, 2.0)


# ---------------------------------------------------------------------------------------------
# helpers


def randn(shape, seed: int, dtype: torch.dtype = F64) -> torch.Tensor:
    return torch.randn(shape, dtype=F64, generator=torch.Generator().manual_seed(seed)).to(dtype)


def angle_tol(max_pos: float) -> float:
    """Bound on |float32 angle - exact angle| in radians, with margin (see module docstring)."""
    return 2.0**-21 * max(abs(max_pos), 1.0) + 1e-6


def rope_atol(x: torch.Tensor, max_pos: float, sides: int = 1) -> float:
    """Each output is x_a cos - x_b sin: an angle error d moves it by at most d * (|x_a| + |x_b|)."""
    return sides * angle_tol(max_pos) * 2.0 * float(x.abs().max()) + 1e-12


def inv_freq64(rotary_dim: int, base: float) -> torch.Tensor:
    return base ** (-torch.arange(0, rotary_dim, 2, dtype=F64) / rotary_dim)


def pairs(rotary_dim: int, layout: str) -> list[tuple[int, int]]:
    """Channel indices of rotation pair i, as documented for each layout."""
    h = rotary_dim // 2
    if layout == "half":
        return [(i, i + h) for i in range(h)]
    return [(2 * i, 2 * i + 1) for i in range(h)]


def cos_sin64(angles: torch.Tensor, rotary_dim: int, layout: str) -> tuple[torch.Tensor, torch.Tensor]:
    """float64 tables (..., rotary_dim) from per-pair angles (..., rotary_dim/2), placed per layout."""
    out = torch.zeros(*angles.shape[:-1], rotary_dim, dtype=F64)
    for i, (a, b) in enumerate(pairs(rotary_dim, layout)):
        out[..., a] = angles[..., i]
        out[..., b] = angles[..., i]
    return out.cos(), out.sin()


def exact_rotate(x: torch.Tensor, positions: torch.Tensor, rotary_dim: int, base: float, layout: str) -> torch.Tensor:
    """apply_rotary with float64 tables for real-valued positions (T,)."""
    angles = positions.to(F64)[:, None] * inv_freq64(rotary_dim, base)  # (T, rd/2)
    cos, sin = cos_sin64(angles, rotary_dim, layout)
    return apply_rotary(x, cos, sin, layout)


def paper_rotation(x: torch.Tensor, positions: torch.Tensor, rotary_dim: int, base: float, layout: str) -> torch.Tensor:
    """RoFormer eq. (13)/(34) pair by pair with python floats: theta_i = base^(-2i/d), and pair i at
    position m is multiplied by [[cos m theta_i, -sin m theta_i], [sin m theta_i, cos m theta_i]].
    x: (B, nh, T, hs) float64; positions: (T,) or (B, T). Channels >= rotary_dim are copied."""
    B, nh, T, _ = x.shape
    pos = positions.expand(B, T).tolist() if positions.dim() == 1 else positions.tolist()
    xs = x.tolist()
    out = [[[list(row) for row in head] for head in batch] for batch in xs]
    for b in range(B):
        for h in range(nh):
            for t in range(T):
                m = pos[b][t]
                for i, (ca, cb) in enumerate(pairs(rotary_dim, layout)):
                    theta = base ** (-2.0 * i / rotary_dim)
                    c, s = math.cos(m * theta), math.sin(m * theta)
                    x1, x2 = xs[b][h][t][ca], xs[b][h][t][cb]
                    out[b][h][t][ca] = x1 * c - x2 * s
                    out[b][h][t][cb] = x1 * s + x2 * c
    return torch.tensor(out, dtype=F64)


def layout_permutation(rotary_dim: int, head_dim: int) -> torch.Tensor:
    """perm with x_half = x_interleaved[..., perm]: pair i moves from (2i, 2i+1) to (i, i + rd/2)."""
    return torch.cat(
        (torch.arange(0, rotary_dim, 2), torch.arange(1, rotary_dim, 2), torch.arange(rotary_dim, head_dim))
    )


# ---------------------------------------------------------------------------------------------
# strategies: head dims 2..16 (odd ones only with partial rotary), T <= 16


@st.composite
def rope_setups(draw, partial: bool = False):
    """(head_dim, rotary_dim, base, layout); partial=True forces rotary_dim < head_dim."""
    head_dim = draw(st.integers(3 if partial else 2, 16))
    max_rd = head_dim - 1 if partial else head_dim
    rotary_dim = 2 * draw(st.integers(1, max_rd // 2))
    return head_dim, rotary_dim, draw(st.sampled_from(BASES)), draw(st.sampled_from(LAYOUTS))


seeds = st.integers(0, 2**32 - 1)
small_positions = st.integers(0, 2000)
real_positions = st.floats(-1000.0, 1000.0, allow_nan=False)


def make(setup, **kwargs) -> RotaryEmbedding:
    head_dim, rotary_dim, base, layout = setup
    return RotaryEmbedding(head_dim, base=base, layout=layout, rotary_dim=rotary_dim, **kwargs)


# ---------------------------------------------------------------------------------------------
# pure-math properties: apply_rotary with float64 tables


@given(rope_setups(), real_positions, real_positions, real_positions, seeds)
def test_exact_dot_product_depends_only_on_relative_position(setup, m, n, s, seed):
    head_dim, rotary_dim, base, layout = setup
    q, k = randn((2, head_dim), seed)
    dot = lambda a, b: (
        exact_rotate(q[None], torch.tensor([a], dtype=F64), rotary_dim, base, layout)
        * exact_rotate(k[None], torch.tensor([b], dtype=F64), rotary_dim, base, layout)
    ).sum()
    tol = 1e-10 * float(q.norm() * k.norm())
    assert abs(float(dot(m, n) - dot(m + s, n + s))) <= tol


@given(rope_setups(), real_positions, seeds)
def test_exact_rotation_preserves_norm(setup, m, seed):
    head_dim, rotary_dim, base, layout = setup
    x = randn((5, head_dim), seed)
    y = exact_rotate(x, torch.full((5,), m, dtype=F64), rotary_dim, base, layout)
    torch.testing.assert_close(y.norm(dim=-1), x.norm(dim=-1), rtol=1e-12, atol=0)


@given(rope_setups(), real_positions, real_positions, seeds)
def test_exact_rotations_compose_and_invert(setup, a, b, seed):
    head_dim, rotary_dim, base, layout = setup
    x = randn((3, head_dim), seed)
    rot = lambda v, p: exact_rotate(v, torch.full((3,), p, dtype=F64), rotary_dim, base, layout)
    atol = 1e-10 * float(x.abs().max())
    torch.testing.assert_close(rot(rot(x, b), a), rot(x, a + b), rtol=0, atol=atol)  # R(a)R(b) = R(a+b)
    torch.testing.assert_close(rot(rot(x, a), -a), x, rtol=0, atol=atol)  # R(-a)R(a) = I
    torch.testing.assert_close(rot(x, 0.0), x, rtol=0, atol=0)  # R(0) = I


# ---------------------------------------------------------------------------------------------
# the same properties through RotaryEmbedding (float32 tables, tolerances from angle_tol)


@given(rope_setups(), small_positions, small_positions, small_positions, seeds)
def test_module_dot_product_depends_only_on_relative_position(setup, m, n, s, seed):
    rope = make(setup, cache_len=16)
    q, k = randn((2, 1, 1, 1, setup[0]), seed)  # each (B=1, nh=1, T=1, hs)
    rq = lambda p: rope(q, q, torch.tensor([p]))[0]
    rk = lambda p: rope(k, k, torch.tensor([p]))[1]
    gap = float((rq(m) * rk(n)).sum() - (rq(m + s) * rk(n + s)).sum())
    assert abs(gap) <= 4 * angle_tol(max(m, n) + s) * float(q.norm() * k.norm())


@given(rope_setups(), small_positions, seeds)
def test_module_preserves_norm(setup, p, seed):
    head_dim = setup[0]
    rope = make(setup, cache_len=8)
    q, k = randn((2, 2, 3, 16, head_dim), seed)
    rq, rk = rope(q, k, torch.arange(p, p + 16))
    # float32 cos/sin satisfy cos^2 + sin^2 = 1 only to ~1e-7
    torch.testing.assert_close(rq.norm(dim=-1), q.norm(dim=-1), rtol=1e-6, atol=0)
    torch.testing.assert_close(rk.norm(dim=-1), k.norm(dim=-1), rtol=1e-6, atol=0)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16])
@given(setup=rope_setups(), seed=seeds)
def test_module_position_zero_is_the_identity_bit_for_bit(dtype, setup, seed):
    rope = make(setup)
    q, k = randn((2, 2, 2, 4, setup[0]), seed, dtype)
    rq, rk = rope(q, k, torch.zeros(4, dtype=torch.long))
    assert torch.equal(rq, q) and torch.equal(rk, k)


@given(rope_setups(), small_positions, small_positions, seeds)
def test_module_rotations_compose(setup, a, b, seed):
    rope = make(setup, cache_len=64)
    x = randn((1, 2, 8, setup[0]), seed)
    pa, pb = torch.arange(a, a + 8), torch.full((8,), b)
    twice = rope(rope(x, x, pb)[0], x, pa)[0]
    once = rope(x, x, pa + b)[0]
    torch.testing.assert_close(twice, once, rtol=0, atol=rope_atol(x, a + b + 8, sides=2))


@given(rope_setups(), small_positions, seeds)
def test_rope_cos_sin_inverse_rotation_at_negative_position(setup, a, seed):
    # the module refuses negative positions (test_module_refuses_bad_positions), so R(-a) is taken
    # from the public pure functions; cos/sin of -fl32(a w) are exactly (cos, -sin) of fl32(a w)
    head_dim, rotary_dim, base, layout = setup
    x = randn((4, head_dim), seed)
    inv_freq = rope_inv_freq(rotary_dim, base)
    fwd = rope_cos_sin(torch.full((4,), a), inv_freq, layout)
    back = rope_cos_sin(torch.full((4,), -a), inv_freq, layout)
    y = apply_rotary(apply_rotary(x, *fwd, layout), *back, layout)
    torch.testing.assert_close(y, x, rtol=0, atol=1e-6 * float(x.abs().max()))


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16, torch.float16])
@given(setup=rope_setups(partial=True), p=small_positions, seed=seeds)
def test_partial_rotary_passes_other_channels_bit_identical(dtype, setup, p, seed):
    head_dim, rotary_dim, base, layout = setup
    rope = make(setup, cache_len=8)
    q, k = randn((2, 2, 2, 10, head_dim), seed, dtype)
    pos = torch.arange(p, p + 10)
    rq, rk = rope(q, k, pos)
    assert torch.equal(rq[..., rotary_dim:], q[..., rotary_dim:])
    assert torch.equal(rk[..., rotary_dim:], k[..., rotary_dim:])
    # the rotated channels are plain RoPE of size rotary_dim
    full = RotaryEmbedding(rotary_dim, base=base, layout=layout, cache_len=8)
    fq, fk = full(q[..., :rotary_dim].contiguous(), k[..., :rotary_dim].contiguous(), pos)
    tol = {"rtol": 0, "atol": 1e-12} if dtype == F64 else {}
    torch.testing.assert_close(rq[..., :rotary_dim], fq, **tol)
    torch.testing.assert_close(rk[..., :rotary_dim], fk, **tol)


@given(rope_setups(), small_positions, seeds)
def test_layouts_agree_up_to_a_fixed_channel_permutation(setup, p, seed):
    head_dim, rotary_dim, base, _ = setup
    half = RotaryEmbedding(head_dim, base=base, layout="half", rotary_dim=rotary_dim)
    inter = RotaryEmbedding(head_dim, base=base, layout="interleaved", rotary_dim=rotary_dim)
    perm = layout_permutation(rotary_dim, head_dim)
    x = randn((2, 2, 6, head_dim), seed)
    pos = torch.arange(p, p + 6)
    out_half = half(x[..., perm], x[..., perm], pos)[0]
    out_inter = inter(x, x, pos)[0]
    torch.testing.assert_close(out_half, out_inter[..., perm], rtol=0, atol=1e-6 * float(x.abs().max()))
    # and the permutation is not the identity, so the layouts really differ
    if rotary_dim >= 4:
        assert not torch.allclose(half(x, x, pos)[0], out_inter, atol=1e-3)


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("rotary_dim", [4, 6])
def test_gradient_is_the_inverse_rotation(layout, rotary_dim):
    # a rotation is orthogonal, so the backward pass must rotate the gradient by -angle
    rope = RotaryEmbedding(6, layout=layout, rotary_dim=rotary_dim, cache_len=4)
    q, k = randn((2, 2, 2, 5, 6), 6)
    positions = torch.stack((torch.arange(5), torch.arange(9, 14)))
    q.requires_grad_(True)
    k.requires_grad_(True)
    assert torch.autograd.gradcheck(lambda a, b: rope(a, b, positions), (q, k))
    grad = randn((2, 2, 5, 6), 7)
    (gq,) = torch.autograd.grad(rope(q, k, positions)[0], q, grad)
    inv_freq = rope.frequencies()  # the module's float64 frequencies
    back = apply_rotary(grad, *rope_cos_sin(-positions, inv_freq, layout), layout)
    torch.testing.assert_close(gq, back, rtol=0, atol=1e-12)


# ---------------------------------------------------------------------------------------------
# golden references


@st.composite
def position_cases(draw, B: int, T: int):
    """(positions or None, largest position): default, an offset arange, or per-row positions."""
    kind = draw(st.sampled_from(["default", "offset", "rows"]))
    if kind == "default":
        return None, T - 1
    if kind == "offset":
        p = draw(st.integers(0, 5000))
        return torch.arange(p, p + T), p + T - 1
    rows = draw(st.lists(st.lists(st.integers(0, 5000), min_size=T, max_size=T), min_size=B, max_size=B))
    pos = torch.tensor(rows)
    return pos, int(pos.max())


@given(data=st.data(), setup=rope_setups(), seed=seeds)
def test_matches_paper_per_pair_rotation(data, setup, seed):
    head_dim, rotary_dim, base, layout = setup
    B, nh, T = data.draw(st.integers(1, 2)), data.draw(st.integers(1, 2)), data.draw(st.integers(1, 8))
    positions, max_pos = data.draw(position_cases(B, T))
    # a small cache, so most positions lie beyond it and must be computed, not clipped
    rope = make(setup, cache_len=data.draw(st.integers(0, 4)))
    q, k = randn((2, B, nh, T, head_dim), seed)
    rq, rk = rope(q, k, positions)
    ref_pos = torch.arange(T) if positions is None else positions
    torch.testing.assert_close(
        rq, paper_rotation(q, ref_pos, rotary_dim, base, layout), rtol=0, atol=rope_atol(q, max_pos)
    )
    torch.testing.assert_close(
        rk, paper_rotation(k, ref_pos, rotary_dim, base, layout), rtol=0, atol=rope_atol(k, max_pos)
    )


@pytest.mark.parametrize("layout", LAYOUTS)
def test_positions_beyond_the_cache_are_computed_not_clipped(layout):
    rope = RotaryEmbedding(8, layout=layout, cache_len=4)
    q = randn((2, 1, 12, 8), 1)
    cases = {
        "default arange longer than the cache": (None, torch.arange(12)),
        "offset": (torch.arange(100, 112), torch.arange(100, 112)),
        "per row": (torch.stack((torch.arange(12), torch.arange(3000, 3012))), None),
    }
    for name, (positions, ref_pos) in cases.items():
        ref_pos = positions if ref_pos is None else ref_pos
        out = rope(q, q, positions)[0]
        ref = paper_rotation(q, ref_pos, 8, 10000.0, layout)
        torch.testing.assert_close(out, ref, rtol=0, atol=rope_atol(q, int(ref_pos.max())), msg=name)
        # what clipping to the cache would give is far from it, so the comparison has power
        clipped = paper_rotation(q, ref_pos.clamp(max=3), 8, 10000.0, layout)
        assert (out - clipped).abs().max() > 0.1, name


def test_cached_and_computed_tables_agree():
    cached = RotaryEmbedding(16, cache_len=64)
    uncached = RotaryEmbedding(16, cache_len=0)
    q = randn((1, 2, 32, 16), 2)
    a = cached(q, q)[0]
    torch.testing.assert_close(a, uncached(q, q)[0], rtol=0, atol=1e-6)
    torch.testing.assert_close(a, cached(q, q, torch.arange(32))[0], rtol=0, atol=1e-6)


def test_positions_inside_the_tables_read_the_same_rows_as_a_full_forward():
    """A decoding step's explicit positions read the built tables: bitwise the rows that the full
    forward (positions None) uses; positions past them are computed."""
    rope = RotaryEmbedding(16, cache_len=64, layout="interleaved")
    cos, sin = rope.cos_sin(None, 64, torch.device("cpu"))
    for positions in (torch.arange(40, 41), torch.tensor([[3, 7], [63, 0]])):
        got = rope.cos_sin(positions, positions.shape[-1], torch.device("cpu"))
        assert torch.equal(got[0], cos[positions]) and torch.equal(got[1], sin[positions])
    computed = RotaryEmbedding(16, cache_len=0, layout="interleaved")
    for positions in (torch.arange(60, 70), torch.tensor([[5, 64]])):  # past the tables
        got = rope.cos_sin(positions, positions.shape[-1], torch.device("cpu"))
        want = computed.cos_sin(positions, positions.shape[-1], torch.device("cpu"))
        assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])


def test_rope_inv_freq_matches_formula():
    for rotary_dim in (2, 8, 64, 128):
        for base in BASES:
            got = rope_inv_freq(rotary_dim, base)
            assert got.dtype == torch.float32
            torch.testing.assert_close(got.double(), inv_freq64(rotary_dim, base), rtol=2**-24, atol=0)


HF_CASES = [  # (head_dim, rotary_dim, base, positions kind)
    (16, 16, 10000.0, "offset"),
    (16, 16, 500000.0, "rows"),
    (12, 8, 10000.0, "rows"),
    (8, 8, 100.0, "default"),
]


def _hf_positions(kind: str, B: int, T: int) -> torch.Tensor | None:
    if kind == "default":
        return None
    if kind == "offset":
        return torch.arange(3000, 3000 + T)
    return torch.stack((torch.arange(T), torch.arange(4090, 4090 + T)))[:B]


@pytest.mark.parametrize("head_dim,rotary_dim,base,kind", HF_CASES)
def test_matches_hugging_face_llama_half_layout(head_dim, rotary_dim, base, kind):
    llama = pytest.importorskip("transformers.models.llama.modeling_llama")
    from transformers import LlamaConfig

    B, nh, T = 2, 2, 8
    positions = _hf_positions(kind, B, T)
    position_ids = (torch.arange(T) if positions is None else positions).expand(B, T)
    # partial rotary the GPT-NeoX way: HF's rotary module sized rotary_dim, applied to the first channels
    config = LlamaConfig(hidden_size=nh * rotary_dim, num_attention_heads=nh, head_dim=rotary_dim, rope_theta=base)
    hf_cos, hf_sin = llama.LlamaRotaryEmbedding(config)(torch.zeros(1, dtype=torch.float32), position_ids)
    q, k = randn((2, B, nh, T, head_dim), 3)
    hq, hk = llama.apply_rotary_pos_emb(q[..., :rotary_dim], k[..., :rotary_dim], hf_cos.double(), hf_sin.double())
    hq, hk = torch.cat((hq, q[..., rotary_dim:]), -1), torch.cat((hk, k[..., rotary_dim:]), -1)

    rope = RotaryEmbedding(head_dim, base=base, layout="half", rotary_dim=rotary_dim, cache_len=16)
    rq, rk = rope(q, k, positions)
    max_pos = int(position_ids.max())
    torch.testing.assert_close(rq, hq, rtol=0, atol=rope_atol(q, max_pos, sides=2))
    torch.testing.assert_close(rk, hk, rtol=0, atol=rope_atol(k, max_pos, sides=2))
    # the tables themselves, both float32
    cos, sin = rope.cos_sin(positions, T, q.device)
    torch.testing.assert_close(cos.expand(B, T, rotary_dim), hf_cos, rtol=0, atol=2 * angle_tol(max_pos))
    torch.testing.assert_close(sin.expand(B, T, rotary_dim), hf_sin, rtol=0, atol=2 * angle_tol(max_pos))


def gptj_rotate_every_two(x: torch.Tensor) -> torch.Tensor:
    x1, x2 = x[..., ::2], x[..., 1::2]
    return torch.stack((-x2, x1), dim=-1).flatten(-2)


def gptj_apply_rotary(x: torch.Tensor, sin: torch.Tensor, cos: torch.Tensor, rotary_dim: int) -> torch.Tensor:
    """GPT-J: sin/cos per pair (..., T, rd/2), repeated onto channels 2i, 2i+1 of the first rotary_dim."""
    sin, cos = sin.repeat_interleave(2, -1), cos.repeat_interleave(2, -1)
    x_rot, x_pass = x[..., :rotary_dim], x[..., rotary_dim:]
    return torch.cat((x_rot * cos + gptj_rotate_every_two(x_rot) * sin, x_pass), dim=-1)


@pytest.mark.parametrize("head_dim,rotary_dim,base,kind", HF_CASES)
def test_matches_gptj_interleaved_rotation(head_dim, rotary_dim, base, kind):
    B, nh, T = 2, 2, 8
    positions = _hf_positions(kind, B, T)
    ref_pos = (torch.arange(T) if positions is None else positions).expand(B, T)
    angles = ref_pos.to(F64)[..., None] * inv_freq64(rotary_dim, base)  # (B, T, rd/2)
    sin, cos = angles.sin()[:, None], angles.cos()[:, None]  # (B, 1, T, rd/2): broadcast over heads
    q = randn((B, nh, T, head_dim), 4)
    rope = RotaryEmbedding(head_dim, base=base, layout="interleaved", rotary_dim=rotary_dim, cache_len=16)
    out = rope(q, q, positions)[0]
    ref = gptj_apply_rotary(q, sin, cos, rotary_dim)
    torch.testing.assert_close(out, ref, rtol=0, atol=rope_atol(q, int(ref_pos.max())))


@pytest.mark.parametrize("head_dim,rotary_dim,base,offset", [(16, 16, 10000.0, 0), (12, 8, 500000.0, 2500)])
def test_matches_rotary_embedding_torch_interleaved(head_dim, rotary_dim, base, offset):
    ret = pytest.importorskip("rotary_embedding_torch")
    T = 8
    positions = torch.arange(offset, offset + T)
    freqs = ret.RotaryEmbedding(dim=rotary_dim, theta=base)(positions)  # (T, rd), pair i at 2i, 2i+1
    q = randn((2, 2, T, head_dim), 5)
    ref = ret.apply_rotary_emb(freqs, q)  # rotates the first rd channels, passes the rest
    rope = RotaryEmbedding(head_dim, base=base, layout="interleaved", rotary_dim=rotary_dim, cache_len=4)
    out = rope(q, q, positions)[0]
    torch.testing.assert_close(out, ref, rtol=0, atol=rope_atol(q, offset + T, sides=2))


# ---------------------------------------------------------------------------------------------
# behaviour at the edges


def test_module_refuses_bad_positions():
    rope = RotaryEmbedding(8)
    q = torch.zeros(1, 1, 3, 8)
    with pytest.raises(ValueError, match="-1"):
        rope(q, q, torch.tensor([0, -1, 2]))
    with pytest.raises(TypeError, match="integer"):
        rope(q, q, torch.tensor([0.0, 1.0, 2.0]))
    with pytest.raises(ValueError, match="head size 8"):
        rope(torch.zeros(1, 1, 3, 6), torch.zeros(1, 1, 3, 6))


def test_tables_are_non_persistent_float32_buffers():
    rope = RotaryEmbedding(16, cache_len=32)
    assert rope.state_dict() == {}
    for name in ("inv_freq", "cos_cached", "sin_cached"):
        assert getattr(rope, name).dtype == torch.float32, name
    assert rope.cos_cached.shape == (32, 16)


@pytest.mark.parametrize("shape", [(1,), (4,), (2, 5, 1), (3, 4)])
def test_positions_that_do_not_match_the_sequence_are_refused(shape):
    rope = RotaryEmbedding(8)
    q = k = torch.randn(2, 2, 5, 8)  # (B, nh, T=5, hs)
    with pytest.raises(ValueError, match=r"positions must have shape \(5,\) or \(B, 5\)"):
        rope(q, k, positions=torch.zeros(shape, dtype=torch.long))


def test_q_and_k_of_different_lengths_are_refused():
    with pytest.raises(ValueError, match="same length"):
        RotaryEmbedding(8)(torch.randn(1, 1, 5, 8), torch.randn(1, 1, 4, 8))


@given(
    layout=st.sampled_from(LAYOUTS),
    shape=st.tuples(st.integers(1, 3), st.integers(1, 3), st.integers(1, 9)),
    rotary_dim=st.sampled_from([2, 4, 8]),
    transposed=st.booleans(),
    tile_bytes=st.sampled_from([1, 40, 100, 1 << 20]),
    seed=seeds,
)
def test_tiled_kernel_equals_the_formula(layout, shape, rotary_dim, transposed, tile_bytes, seed):
    # the eager kernel cuts large tensors into cache-sized tiles; tiny tiles force every split
    # (several dims, strided inputs as attention passes them, partial rotary) to be exercised
    B, nh, T = shape
    x = randn((B, T, nh, 8), seed).transpose(1, 2) if transposed else randn((B, nh, T, 8), seed)
    x = x.float().requires_grad_(True)
    cos, sin = rope_cos_sin(torch.arange(3, 3 + T), rope_inv_freq(rotary_dim, 100.0), layout)
    with mock.patch.object(rotation, "_TILE_BYTES", tile_bytes):
        out = apply_rotary(x, cos, sin, layout)
        grad = torch.randn_like(out)
        (gx,) = torch.autograd.grad(out, x, grad)
    ref = rotation._rotary_reference(x.detach(), cos, sin, layout)
    torch.testing.assert_close(out, ref, rtol=0, atol=1e-6)
    torch.testing.assert_close(gx, rotation._rotary_reference(grad, cos, -sin, layout), rtol=0, atol=1e-6)

"""CausalSelfAttention and QK-norm against hand-written float64 references.

Shapes: B batch, T tokens, C = n_embd, nh heads, hs head size.

Tolerances: float64 paths that share no rounding with the reference agree to 1e-12. Paths that
involve RoPE agree to 1e-5 only, by design: the library computes its angles in float32 (see
posenc/encodings/rope.py) while the reference computes them in float64, and at positions < 32 a
float32 angle is off by at most ~4e-6 rad.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from posenc import AbsolutePE, ALiBi, CausalSelfAttention, NoPE, QKNormAttention, RotaryEmbedding, SinusoidalPE
from posenc.attention import LayerKVCache, causal_attention

C, NH = 32, 4
HS = C // NH
EXACT = dict(rtol=0.0, atol=1e-12)
ROPE_TOL = dict(rtol=0.0, atol=1e-5)


def make_attn(pe=None, *, qk_norm=None, window=None, block_size=1024, seed=0, bias=True) -> CausalSelfAttention:
    torch.manual_seed(seed)
    attn = CausalSelfAttention(C, NH, pe=pe, qk_norm=qk_norm, window=window, bias=bias, block_size=block_size)
    return attn.double().eval()


def inputs(B=2, T=10, seed=1) -> torch.Tensor:
    return torch.randn(B, T, C, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def project(attn: CausalSelfAttention, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """q, k, v of shape (B, nh, T, hs), before any normalisation or encoding."""
    B, T, _ = x.shape
    q, k, v = (x @ attn.c_attn.weight.T + (0 if attn.c_attn.bias is None else attn.c_attn.bias)).split(C, dim=-1)
    return tuple(t.view(B, T, NH, HS).transpose(1, 2) for t in (q, k, v))


def rope_reference(x: torch.Tensor, positions: torch.Tensor, base: float = 10000.0) -> torch.Tensor:
    """Half-layout RoPE from the paper's per-pair 2x2 rotation, angles in float64."""
    half = x.shape[-1] // 2
    out = x.clone()
    for i in range(half):
        theta = positions.to(torch.float64) * base ** (-2.0 * i / x.shape[-1])  # (T,)
        c, s = torch.cos(theta), torch.sin(theta)
        x1, x2 = x[..., i], x[..., i + half]
        out[..., i] = x1 * c - x2 * s
        out[..., i + half] = x1 * s + x2 * c
    return out


def naive_attention(q, k, v, *, scale=None, bias=None, window=None) -> torch.Tensor:
    """softmax(scale * q k^T + bias) v with an explicit causal (and window) mask; queries are the last Tq keys."""
    Tq, Tk = q.shape[-2], k.shape[-2]
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else scale
    scores = scale * q @ k.transpose(-1, -2)  # (B, nh, Tq, Tk)
    if bias is not None:
        scores = scores + bias
    i = torch.arange(Tk - Tq, Tk)[:, None]
    j = torch.arange(Tk)[None, :]
    allowed = j <= i
    if window is not None:
        allowed &= i - j < window
    scores = scores.masked_fill(~allowed, float("-inf"))
    return torch.softmax(scores, dim=-1) @ v


def finish(attn: CausalSelfAttention, y: torch.Tensor) -> torch.Tensor:
    B, _, T, _ = y.shape
    return attn.c_proj(y.transpose(1, 2).reshape(B, T, C))


def alibi_bias(T: int) -> torch.Tensor:
    # Press et al.: for a power-of-two head count n, slope_h = 2^(-8h/n), h = 1..n
    slopes = torch.tensor([2.0 ** (-8.0 * h / NH) for h in range(1, NH + 1)], dtype=torch.float64)
    distance = torch.arange(T)[:, None] - torch.arange(T)[None, :]
    return -slopes.view(NH, 1, 1) * distance  # (nh, T, T)


def rms_norm(x: torch.Tensor, gain: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * gain


# -- against a naive reference ------------------------------------------------------------------


ENCODINGS = {"nope": NoPE, "rope": lambda: RotaryEmbedding(HS), "alibi": lambda: ALiBi(NH)}


@pytest.mark.parametrize(
    "name, window",
    [("nope", None), ("rope", None), ("alibi", None), ("nope", 4), ("rope", 4), ("alibi", 4)],
    ids=["nope", "rope", "alibi", "window", "rope-window", "alibi-window"],
)
def test_attention_matches_naive_float64_reference(name: str, window: int | None) -> None:
    T = 12
    pe = ENCODINGS[name]()
    attn = make_attn(pe, window=window)
    x = inputs(T=T)
    q, k, v = project(attn, x)
    bias = None
    if isinstance(pe, RotaryEmbedding):
        q, k = rope_reference(q, torch.arange(T)), rope_reference(k, torch.arange(T))
    if isinstance(pe, ALiBi):
        bias = alibi_bias(T)
    expected = finish(attn, naive_attention(q, k, v, bias=bias, window=window))
    with torch.no_grad():
        torch.testing.assert_close(attn(x), expected, **(ROPE_TOL if name == "rope" else EXACT))


@pytest.mark.parametrize("window", [1, 3, 7, 50])
def test_sliding_window_matches_masked_reference(window: int) -> None:
    g = torch.Generator().manual_seed(3)
    q, k, v = (torch.randn(2, NH, 9, HS, generator=g, dtype=torch.float64) for _ in range(3))
    expected = naive_attention(q, k, v, window=window)
    torch.testing.assert_close(causal_attention(q, k, v, window=window), expected, **EXACT)
    if window < 9:  # the window must actually cut something off, or the test could not fail
        assert not torch.allclose(causal_attention(q, k, v, window=window), causal_attention(q, k, v), atol=1e-6)
    # window=1: every query sees only itself
    if window == 1:
        torch.testing.assert_close(causal_attention(q, k, v, window=1), v, **EXACT)


def test_sliding_window_with_queries_after_a_cache() -> None:
    g = torch.Generator().manual_seed(4)
    q = torch.randn(1, NH, 3, HS, generator=g, dtype=torch.float64)
    k, v = (torch.randn(1, NH, 10, HS, generator=g, dtype=torch.float64) for _ in range(2))
    torch.testing.assert_close(causal_attention(q, k, v, window=4), naive_attention(q, k, v, window=4), **EXACT)


# -- KV cache -----------------------------------------------------------------------------------


@pytest.mark.parametrize("chunks", [(1,) * 10, (4, 1, 5), (3, 7)], ids=["token-by-token", "4-1-5", "3-7"])
@pytest.mark.parametrize(
    "encoding", ["nope", "rope", "alibi", "rope-window", "rope-qknorm-rms", "alibi-qknorm-l2", "nope-window"]
)
def test_kv_cached_incremental_attention_equals_full(encoding: str, chunks: tuple[int, ...]) -> None:
    pe = ENCODINGS[encoding.split("-")[0]]()
    qk_norm = encoding.rsplit("-", 1)[1] if "qknorm" in encoding else None
    attn = make_attn(pe, qk_norm=qk_norm, window=3 if "window" in encoding else None, block_size=16)
    x = inputs(T=sum(chunks))
    cache, outs, start = LayerKVCache(), [], 0
    with torch.no_grad():
        full = attn(x)
        for n in chunks:
            outs.append(attn(x[:, start : start + n], cache=cache))
            start += n
    assert cache.length == x.shape[1]
    torch.testing.assert_close(torch.cat(outs, dim=1), full, rtol=0.0, atol=1e-10)


def test_kv_cache_with_explicit_positions_equals_full() -> None:
    attn = make_attn(RotaryEmbedding(HS))
    x = inputs(T=8)
    positions = torch.arange(8) + 100
    cache = LayerKVCache()
    with torch.no_grad():
        full = attn(x, positions)
        inc = torch.cat([attn(x[:, :5], positions[:5], cache), attn(x[:, 5:], positions[5:], cache)], dim=1)
    torch.testing.assert_close(inc, full, rtol=0.0, atol=1e-10)
    torch.testing.assert_close(cache.positions, positions, rtol=0, atol=0)


# -- QK-norm ------------------------------------------------------------------------------------


def scale_rows(attn: CausalSelfAttention, which: str, factor: float) -> None:
    rows = {"q": slice(0, C), "k": slice(C, 2 * C)}[which]
    with torch.no_grad():
        attn.c_attn.weight[rows] *= factor
        if attn.c_attn.bias is not None:
            attn.c_attn.bias[rows] *= factor


@settings(max_examples=25, deadline=None)
@given(factor=st.floats(min_value=0.1, max_value=100.0), which=st.sampled_from(["q", "k"]))
def test_rms_qk_norm_output_invariant_to_scaling_wq_or_wk(factor: float, which: str) -> None:
    attn = make_attn(RotaryEmbedding(HS), qk_norm="rms")
    with torch.no_grad():
        # large q, k (mean square >= 24 per head) so that RMSNorm's eps=1e-6 stays negligible even
        # at factor 0.1: it perturbs the normalised vectors by <= eps / (0.01 * 24) ~ 4e-6 relative
        attn.c_attn.weight[: 2 * C].mul_(30.0)
        x = inputs(T=6)
        before = attn(x)
        scale_rows(attn, which, factor)
        after = attn(x)
    torch.testing.assert_close(after, before, rtol=0.0, atol=1e-6)


@settings(max_examples=25, deadline=None)
@given(factor=st.floats(min_value=1e-3, max_value=1e3), which=st.sampled_from(["q", "k"]))
def test_l2_qk_norm_output_invariant_to_scaling_wq_or_wk(factor: float, which: str) -> None:
    attn = make_attn(RotaryEmbedding(HS), qk_norm="l2", block_size=64)
    x = inputs(T=6)
    with torch.no_grad():
        before = attn(x)
        scale_rows(attn, which, factor)
        after = attn(x)
    torch.testing.assert_close(after, before, rtol=0.0, atol=1e-10)


@pytest.mark.parametrize("which", ["q", "k"])
def test_without_qk_norm_scaling_wq_or_wk_changes_the_output(which: str) -> None:
    # negative control: the invariance above is a property of QK-norm, not of the test
    attn = make_attn(RotaryEmbedding(HS))
    x = inputs(T=6)
    with torch.no_grad():
        before = attn(x)
        scale_rows(attn, which, 5.0)
        after = attn(x)
    assert (after - before).abs().max() > 1e-3


def _attention_with_order(attn: CausalSelfAttention, x: torch.Tensor, order: str) -> torch.Tensor:
    q, k, v = project(attn, x)
    rope, norm = attn.pe, attn.qk_norm
    if order == "norm-then-rotate":
        q, k = rms_norm(q, norm.q_norm.weight), rms_norm(k, norm.k_norm.weight)
        q, k = rope.rotate(q, k)
    else:
        q, k = rope.rotate(q, k)
        q, k = rms_norm(q, norm.q_norm.weight), rms_norm(k, norm.k_norm.weight)
    return finish(attn, naive_attention(q, k, v))


def test_qk_norm_acts_before_rope() -> None:
    attn = make_attn(RotaryEmbedding(HS), qk_norm="rms")
    g = torch.Generator().manual_seed(5)
    with torch.no_grad():
        # a non-uniform gain: a uniform one commutes with the rotation and could not tell the orders apart
        attn.qk_norm.q_norm.weight.copy_(0.2 + 3 * torch.rand(HS, generator=g, dtype=torch.float64))
        attn.qk_norm.k_norm.weight.copy_(0.2 + 3 * torch.rand(HS, generator=g, dtype=torch.float64))
        x = inputs(T=10)
        out = attn(x)
        norm_first = _attention_with_order(attn, x, "norm-then-rotate")
        rotate_first = _attention_with_order(attn, x, "rotate-then-norm")
    torch.testing.assert_close(out, norm_first, **EXACT)
    assert (out - rotate_first).abs().max() > 1e-4


def test_qk_norm_orders_agree_when_the_gain_is_uniform() -> None:
    # why the test above needs a non-uniform gain: RMSNorm without one commutes with any rotation
    attn = make_attn(RotaryEmbedding(HS), qk_norm="rms")
    with torch.no_grad():
        attn.qk_norm.q_norm.weight.fill_(1.7)
        x = inputs(T=10)
        a = _attention_with_order(attn, x, "norm-then-rotate")
        b = _attention_with_order(attn, x, "rotate-then-norm")
    # not bit-exact: the float32 cos/sin tables rotate with a norm error of ~1e-7
    torch.testing.assert_close(a, b, rtol=0.0, atol=1e-6)


@pytest.mark.parametrize("block_size", [2, 64, 1024])
def test_l2_qk_norm_temperature_init_and_unit_sdpa_scale(block_size: int) -> None:
    attn = make_attn(qk_norm="l2", block_size=block_size)
    norm = attn.qk_norm
    assert isinstance(norm.temperature, torch.nn.Parameter) and norm.temperature.requires_grad
    assert norm.temperature.shape == (NH,)
    expected = math.log2(block_size**2 - block_size)
    torch.testing.assert_close(
        norm.temperature.detach(), torch.full((NH,), expected, dtype=torch.float64), rtol=1e-6, atol=0
    )
    assert norm.scale == 1.0
    assert make_attn(qk_norm="rms").qk_norm.scale is None  # RMS keeps 1/sqrt(hs)


def test_l2_qk_norm_forward_matches_reference_with_per_head_temperature() -> None:
    attn = make_attn(RotaryEmbedding(HS), qk_norm="l2", block_size=64)
    with torch.no_grad():
        attn.qk_norm.temperature.copy_(torch.tensor([1.0, 4.0, 9.0, 20.0], dtype=torch.float64))
        x = inputs(T=9)
        q, k, v = project(attn, x)
        q, k = F.normalize(q, dim=-1), F.normalize(k, dim=-1)
        q, k = rope_reference(q, torch.arange(9)), rope_reference(k, torch.arange(9))
        g = attn.qk_norm.temperature.view(1, NH, 1, 1)
        expected = finish(attn, naive_attention(g * q, k, v, scale=1.0))
        torch.testing.assert_close(attn(x), expected, **ROPE_TOL)


def _entropy_of_last_query(q: torch.Tensor, k: torch.Tensor, scale: float) -> torch.Tensor:
    p = torch.softmax(scale * q[..., -1:, :] @ k.transpose(-1, -2), dim=-1)  # (B, nh, 1, T)
    return -(p * p.clamp_min(1e-300).log()).sum(-1).mean()


def test_l2_qk_norm_attention_is_not_nearly_uniform_at_init() -> None:
    # Peaked inputs: every key is a noisy copy of one of a few directions, so some keys align with
    # the query. With the paper's temperature the distribution over T keys must be far from uniform;
    # plain 1/sqrt(hs) on unit vectors (the mistake the temperature avoids) is nearly uniform.
    T = 64
    attn = make_attn(qk_norm="l2", block_size=1024, bias=False)
    g = torch.Generator().manual_seed(6)
    with torch.no_grad():
        q, k, _ = project(attn, inputs(B=2, T=T))
        q = k + 0.3 * torch.randn(k.shape, generator=g, dtype=torch.float64)  # each query near its own key
        qn, kn = attn.qk_norm(q, k)
        entropy = _entropy_of_last_query(qn, kn, attn.qk_norm.scale)
        uniform_like = _entropy_of_last_query(F.normalize(q, dim=-1), kn, 1.0 / math.sqrt(HS))
    log_t = math.log(T)
    assert entropy < 0.5 * log_t, (entropy, log_t)
    assert uniform_like > 0.95 * log_t, (uniform_like, log_t)  # the control shows what "nearly uniform" means


def test_qk_norm_attention_is_causal_self_attention_with_rms_default() -> None:
    attn = QKNormAttention(C, NH, pe=RotaryEmbedding(HS))
    assert isinstance(attn, CausalSelfAttention) and attn.qk_norm is not None and attn.qk_norm.kind == "rms"
    assert QKNormAttention(C, NH, qk_norm="l2").qk_norm.kind == "l2"


@pytest.mark.parametrize("kind", ["rms", "rms_full"])
def test_qk_norm_eps_reaches_both_norms(kind) -> None:
    norm = QKNormAttention(C, NH, qk_norm=kind, qk_norm_eps=0.5).qk_norm
    assert norm.q_norm.eps == norm.k_norm.eps == 0.5
    q = torch.full((1, NH, 3, HS), 0.1)  # mean square 0.01: the eps of 0.5 dominates
    torch.testing.assert_close(norm(q, q)[0], q / math.sqrt(0.01 + 0.5))


# -- refusals -----------------------------------------------------------------------------------


@pytest.mark.parametrize("pe", [AbsolutePE(16, C), SinusoidalPE(16, C)], ids=["learned", "sinusoidal"])
def test_attention_refuses_an_input_level_encoding(pe) -> None:
    with pytest.raises(ValueError, match=type(pe).__name__):
        CausalSelfAttention(C, NH, pe=pe)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(n_embd=30, n_head=4), "n_embd=30"),
        (dict(n_embd=C, n_head=NH, window=0), "window must be an int >= 1, got 0"),
        (dict(n_embd=C, n_head=NH, window=2.5), "2.5"),
        (dict(n_embd=C, n_head=NH, qk_norm="layer"), "'layer'"),
        (dict(n_embd=C, n_head=NH, qk_norm="rms", qk_norm_eps=0.0), "qk_norm_eps"),
        (dict(n_embd=C, n_head=NH, qk_norm="l2", qk_norm_eps=1e-5), "qk_norm='l2'"),
        (dict(n_embd=C, n_head=NH, qk_norm_eps=1e-5), "qk_norm=None"),
    ],
    ids=["indivisible", "window-0", "window-float", "qk-norm-kind", "qk-eps-0", "qk-eps-l2", "qk-eps-no-norm"],
)
def test_attention_refuses_bad_arguments(kwargs: dict, match: str) -> None:
    with pytest.raises((ValueError, TypeError), match=match):
        CausalSelfAttention(**kwargs)

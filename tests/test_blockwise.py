"""The blockwise path (posenc.attention.blockwise) against a dense float64 reference.

The reference is softmax(QK^T * scale + bias + mask) V written out in float64 over the whole
(B, nh, Tq, Tk) score tensor, with rows that see no key set to 0. Inputs are float32; values and
gradients (q, k, v and the encoding's parameters) must agree to 1e-5. The bias itself is the
encoding's float32 output in both, so the comparison isolates the attention arithmetic.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given
from hypothesis import strategies as st

from posenc.attention import blockwise, dense
from posenc.attention.blockwise import blockwise_attention
from posenc.attention.kernel import attend, choose_backend
from posenc.attention.mask import Mask
from posenc.encodings.alibi import ALiBi
from posenc.encodings.fire import FIRE
from posenc.encodings.kerple import KerpleLog
from posenc.encodings.t5 import T5RelativeBias

F64 = torch.float64
TOL = dict(rtol=1e-5, atol=1e-5)
ENCODINGS = {"alibi": ALiBi, "t5": T5RelativeBias, "kerple": KerpleLog, "fire": FIRE}


def make_encoding(name: str | None, n_head: int):
    if name is None:
        return None
    torch.manual_seed(1)
    enc = ENCODINGS[name](n_head)
    if name == "t5":  # a table large enough to move the attention
        torch.nn.init.normal_(enc.relative_attention_bias.weight)
    if name == "fire":  # a threshold inside the tested lengths, so both regimes are exercised
        enc = FIRE(n_head, init_threshold=9.0)
    return enc


def dense_reference(
    q,
    k,
    v,
    *,
    bias=None,
    window=None,
    q_segments=None,
    k_segments=None,
    key_padding_mask=None,
    scale=None,
):
    """float64 softmax(QK^T * scale + bias + mask) V over the full score tensor."""
    B, nh, Tq, hs = q.shape
    n_kv, Tk = k.shape[1], k.shape[2]
    scale = 1.0 / math.sqrt(hs) if scale is None else scale
    qd = q.to(F64)
    kd = k.to(F64).repeat_interleave(nh // n_kv, dim=1)  # (B, nh, Tk, hs)
    vd = v.to(F64).repeat_interleave(nh // n_kv, dim=1)
    s = qd @ kd.transpose(-1, -2) * scale  # (B, nh, Tq, Tk)
    if bias is not None:
        s = s + bias.to(F64)
    qi = torch.arange(Tk - Tq, Tk)[:, None]
    ki = torch.arange(Tk)[None, :]
    allowed = (ki <= qi).expand(B, 1, Tq, Tk)
    if window is not None:
        allowed = allowed & (qi - ki < window)
    if q_segments is not None:
        allowed = allowed & (q_segments[:, :, None] == k_segments[:, None, :])[:, None]
    if key_padding_mask is not None:
        allowed = allowed & key_padding_mask[:, None, None, :]
    s = s.masked_fill(~allowed, float("-inf"))
    p = torch.softmax(s, dim=-1).nan_to_num(0.0)  # rows with no visible key -> 0
    return p @ vd


def qkv(B, nh, n_kv, Tq, Tk, hs, seed=0):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(B, nh, Tq, hs, generator=g, requires_grad=True)
    k = torch.randn(B, n_kv, Tk, hs, generator=g, requires_grad=True)
    v = torch.randn(B, n_kv, Tk, hs, generator=g, requires_grad=True)
    return q, k, v


def grads(out, inputs, upstream):
    inputs = [t for t in inputs if t.requires_grad]
    return torch.autograd.grad(out, inputs, upstream.to(out.dtype))


def assert_parity(enc, q, k, v, q_pos, k_pos, *, fn=blockwise_attention, check_grads=True, **kw):
    mask_kw = {name: kw[name] for name in ("window", "q_segments", "k_segments", "key_padding_mask") if name in kw}
    bias = None if enc is None else enc.score_bias(q_pos, k_pos)
    ref = dense_reference(q, k, v, bias=bias, **mask_kw)
    got = fn(q, k, v, score_bias=None if enc is None else enc.score_bias, q_positions=q_pos, k_positions=k_pos, **kw)
    assert got.shape == q.shape and got.dtype == q.dtype
    torch.testing.assert_close(got.to(F64), ref, **TOL)
    if not check_grads:
        return
    params = [] if enc is None else [p for p in enc.parameters() if p.requires_grad]
    upstream = torch.randn(q.shape, generator=torch.Generator().manual_seed(7), dtype=F64)
    g_got = grads(got, [q, k, v, *params], upstream)
    g_ref = grads(ref, [q, k, v, *params], upstream)
    for a, b in zip(g_got, g_ref, strict=True):
        assert torch.isfinite(a).all()
        torch.testing.assert_close(a.to(F64), b.to(F64), **TOL)


@st.composite
def attention_case(draw):
    n_kv = draw(st.sampled_from([1, 2]))
    nh = n_kv * draw(st.sampled_from([1, 2, 3]))
    Tk = draw(st.integers(1, 48))
    Tq = draw(st.integers(1, Tk))
    window = draw(st.one_of(st.none(), st.integers(1, Tk + 2)))
    block_q = draw(st.integers(1, 20))
    block_k = draw(st.integers(1, 20))
    offset = draw(st.integers(0, 40))
    return dict(nh=nh, n_kv=n_kv, Tq=Tq, Tk=Tk, window=window, block_q=block_q, block_k=block_k, offset=offset)


@pytest.mark.parametrize("name", [None, *ENCODINGS])
@given(case=attention_case())
def test_blockwise_matches_dense_reference(name, case):
    enc = make_encoding(name, case["nh"])
    q, k, v = qkv(2, case["nh"], case["n_kv"], case["Tq"], case["Tk"], 8)
    k_pos = torch.arange(case["Tk"]) + case["offset"]
    q_pos = k_pos[case["Tk"] - case["Tq"] :]  # the queries are the last keys (KV cache when Tq < Tk)
    assert_parity(enc, q, k, v, q_pos, k_pos, window=case["window"], block_q=case["block_q"], block_k=case["block_k"])


@pytest.mark.parametrize("name", list(ENCODINGS))
@pytest.mark.parametrize("window", [None, 5])
def test_per_row_positions_segments_and_padding(name, window):
    """(B, T) positions, packed documents and left padding, all at once."""
    B, nh, Tk, Tq = 3, 4, 29, 29
    enc = make_encoding(name, nh)
    q, k, v = qkv(B, nh, 2, Tq, Tk, 8, seed=3)
    k_pos = torch.stack([torch.arange(Tk), torch.arange(Tk) + 11, torch.arange(Tk)])
    k_pos[2, 10:] = torch.arange(Tk - 10)  # a second document restarting its positions
    segments = torch.zeros(B, Tk, dtype=torch.long)
    segments[2, 10:] = 1
    segments[1, 20:] = 5
    padding = torch.ones(B, Tk, dtype=torch.bool)
    padding[1, :4] = False
    assert_parity(
        enc,
        q,
        k,
        v,
        k_pos,
        k_pos,
        window=window,
        q_segments=segments,
        k_segments=segments,
        key_padding_mask=padding,
        block_q=8,
        block_k=6,
    )


def test_rows_with_no_visible_key_are_zero_not_nan():
    q, k, v = qkv(2, 2, 2, 6, 10, 4)
    padding = torch.ones(2, 10, dtype=torch.bool)
    padding[0] = False  # row 0 sees nothing at all
    padding[1, :7] = False  # row 1: the first query (key index 4) sees nothing
    y = blockwise_attention(q, k, v, key_padding_mask=padding, block_q=4, block_k=3)
    assert torch.isfinite(y).all()
    assert (y[0] == 0).all() and (y[1, :, :3] == 0).all() and (y[1, :, 3:] != 0).any()
    y.sum().backward()
    assert all(torch.isfinite(t.grad).all() for t in (q, k, v))
    assert_parity(None, q, k, v, None, None, key_padding_mask=padding, block_q=4, block_k=3)


def test_segments_derive_from_each_other():
    q, k, v = qkv(1, 2, 2, 4, 10, 4)
    seg = torch.tensor([[0, 0, 0, 1, 1, 1, 1, 2, 2, 2]])
    a = blockwise_attention(q, k, v, k_segments=seg)
    b = blockwise_attention(q, k, v, q_segments=seg[:, 6:], k_segments=seg)
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    with pytest.raises(ValueError, match="pass k_segments"):
        blockwise_attention(q, k, v, q_segments=seg[:, 6:])


def test_no_tensor_of_the_full_score_size_is_built_or_saved():
    """Every bias tile requested and every tensor saved for backward stays below nh * Tq * Tk / 4."""
    B, nh, T = 1, 4, 256
    enc = ALiBi(nh)
    q, k, v = qkv(B, nh, nh, T, T, 16)
    tiles: list[tuple[int, int]] = []

    def spy(qp, kp, *features):
        tiles.append((qp.shape[-1], kp.shape[-1]))
        return enc.score_bias(qp, kp)

    saved: list[int] = []

    def pack(t):
        saved.append(t.numel())
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        y = blockwise_attention(q, k, v, score_bias=spy, block_q=32, block_k=32)
    forward_tiles = list(tiles)
    y.sum().backward()
    limit = nh * T * T // 4
    assert max(saved) < limit, max(saved)
    assert all(nq <= 32 for nq, _ in tiles) and len(tiles) == 2 * len(forward_tiles)  # backward recomputes
    assert max(nq * nk * nh for nq, nk in tiles) < limit


@pytest.mark.parametrize("window", [8, 32, 64])
def test_window_bounds_the_key_span(window):
    """A sliding window scores only the keys a block can see: the work falls with the window."""
    T, block = 256, 16
    q, k, v = qkv(1, 1, 1, T, T, 4)
    spans: list[int] = []

    def spy(qp, kp, *features):
        spans.append(kp.shape[-1])
        return None

    with torch.no_grad():
        blockwise_attention(q, k, v, score_bias=spy, window=window, block_q=block, block_k=block)
    assert max(spans) <= block * (math.ceil((block + window - 1) / block) + 1)
    assert sum(spans) <= T * (window + 2 * block)


def test_dropout_is_replayed_in_backward():
    """The recomputed tiles draw the same dropout mask as the forward: the output under the same
    seed matches a no-grad run, and the gradient matches the reference with that mask."""
    q, k, v = qkv(1, 2, 2, 12, 12, 4)
    torch.manual_seed(5)
    y = blockwise_attention(q, k, v, dropout_p=0.3, block_q=4, block_k=4)
    torch.manual_seed(5)
    with torch.no_grad():
        y_ng = blockwise_attention(q, k, v, dropout_p=0.3, block_q=4, block_k=4)
    torch.testing.assert_close(y, y_ng, rtol=0, atol=0)
    # dy/dv is linear in the (dropped) probabilities: summing over queries gives sum_i P_drop[i, j],
    # which the gradient must reproduce by replaying the same mask
    (gv,) = torch.autograd.grad(y.sum(), v)
    assert torch.isfinite(gv).all()
    torch.manual_seed(5)
    v2 = v.detach().clone().requires_grad_()
    y2 = blockwise_attention(q, k, v2, dropout_p=0.3, block_q=4, block_k=4)
    (gv2,) = torch.autograd.grad(y2.sum(), v2)
    torch.testing.assert_close(gv, gv2, rtol=0, atol=0)


def test_low_precision_inputs_use_float32_scores():
    q, k, v = qkv(1, 2, 2, 20, 20, 8)
    enc = ALiBi(2)
    pos = torch.arange(20)
    qb, kb, vb = (t.detach().to(torch.bfloat16) for t in (q, k, v))
    y = blockwise_attention(qb, kb, vb, score_bias=enc.score_bias, block_q=8, block_k=8)
    assert y.dtype == torch.bfloat16
    ref = dense_reference(qb, kb, vb, bias=enc.score_bias(pos, pos))
    # bf16 value product: one bf16 rounding of the probabilities and of the output (2**-8 relative)
    torch.testing.assert_close(y.to(F64), ref, rtol=2e-2, atol=2e-2)


@pytest.mark.parametrize(
    "bad, match",
    [
        (dict(window=0), "window must be an int >= 1"),
        (dict(chunk=-3), "chunk must be an int >= 1"),
        (dict(dropout_p=1.0), "dropout_p"),
        (dict(block_q=0), "block_q and block_k"),
        (dict(key_padding_mask=torch.ones(1, 5)), "key_padding_mask must be a bool"),
    ],
)
def test_invalid_arguments_raise(bad, match):
    q, k, v = qkv(1, 2, 2, 6, 6, 4)
    with pytest.raises(ValueError, match=match):
        blockwise_attention(q, k, v, **bad)
    with pytest.raises(TypeError, match="window must be an int"):
        blockwise_attention(q, k, v, window=2.5)


def test_shape_errors_name_the_shapes():
    q, k, v = qkv(1, 3, 2, 6, 6, 4)
    with pytest.raises(ValueError, match="3 heads"):
        blockwise_attention(q, k, v)
    q, k, v = qkv(1, 2, 2, 7, 6, 4)
    with pytest.raises(ValueError, match="Tq=7 > Tk=6"):
        blockwise_attention(q, k, v)


# ----------------------------------------------------------------------------- dispatch


def test_choose_backend_rules(monkeypatch):
    """Past the dense path's budget (tests/test_dense.py checks the rule within it)."""
    monkeypatch.setattr(dense, "DENSE_BUDGET", 0)
    q, k, _ = qkv(1, 2, 2, 8, 8, 4)
    q1 = q[:, :, -1:]
    enc = ALiBi(2)
    assert choose_backend(q, k) == "sdpa"
    assert choose_backend(q1, k) == "sdpa"  # KV-cache step: Tq < Tk, a boolean mask
    assert choose_backend(q1, k, window=4) == choose_backend(q1, k, chunk=4) == "sdpa"  # over the keys it sees
    assert choose_backend(q1, k, window=4, score_bias=enc.score_bias) == "blockwise"
    assert choose_backend(q[:, :, -2:], k, window=4) == "blockwise"
    assert choose_backend(q, k, score_bias=enc.score_bias) == "blockwise"
    assert choose_backend(q, k, window=4) == "blockwise"
    assert choose_backend(q, k, chunk=4) == "blockwise"
    assert choose_backend(q, k, softcap=30.0) == "blockwise"
    assert choose_backend(q, k, sinks=torch.zeros(2)) == "blockwise"
    assert choose_backend(q, k, key_padding_mask=torch.ones(1, 8, dtype=torch.bool)) == "blockwise"


def test_attend_plain_is_sdpa_is_causal():
    q, k, v = qkv(2, 4, 2, 16, 16, 8)
    y = attend(q, k, v)
    ref = F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)
    torch.testing.assert_close(y, ref, rtol=0, atol=0)
    assert_parity(None, q, k, v, None, None, fn=attend)


@pytest.mark.parametrize("backend", ["auto", "dense", "blockwise"])
def test_attend_with_bias_window_and_cache(backend):
    enc = make_encoding("kerple", 4)
    q, k, v = qkv(2, 4, 4, 5, 21, 8)
    k_pos = torch.arange(21) + 3
    assert_parity(enc, q, k, v, k_pos[-5:], k_pos, fn=attend, window=7, backend=backend)


def test_attend_refuses_bad_backend_requests():
    q, k, v = qkv(1, 2, 2, 8, 8, 4)
    with pytest.raises(ValueError, match="backend must be"):
        attend(q, k, v, backend="fused")
    with pytest.raises(ValueError, match="supports no score_bias"):
        attend(q, k, v, backend="sdpa", window=3)
    with pytest.raises(ValueError, match="no attention dropout"):
        attend(q, k, v, backend="flex", dropout_p=0.1)


def test_sdpa_in_a_kv_cache_step_equals_blockwise():
    q, k, v = qkv(1, 4, 2, 3, 11, 8)
    torch.testing.assert_close(
        attend(q, k, v, backend="sdpa"), attend(q, k, v, backend="blockwise"), rtol=1e-6, atol=1e-6
    )


@pytest.mark.parametrize("window, chunk", [(5, None), (None, 4), (6, 4), (30, None)])
def test_a_one_query_window_or_chunk_step_reads_only_the_keys_it_sees(window, chunk):
    """A decoding step of a local layer runs SDPA over the keys from Mask.first_key on: equal to the
    blockwise path over the whole cache, and keys it cannot see may hold anything (NaN here)."""
    q, k, v = (t.detach() for t in qkv(2, 4, 2, 1, 17, 8))
    want = attend(q, k, v, window=window, chunk=chunk, backend="blockwise")
    torch.testing.assert_close(attend(q, k, v, window=window, chunk=chunk), want, rtol=1e-6, atol=1e-6)
    lo = Mask(window=window, chunk=chunk).first_key(16)
    k[:, :, :lo], v[:, :, :lo] = float("nan"), float("nan")
    torch.testing.assert_close(attend(q, k, v, window=window, chunk=chunk), want, rtol=1e-6, atol=1e-6)


def test_query_blocks_keep_a_tile_within_its_budget():
    assert blockwise.query_block(1, 4, 128) == 128  # short rows: the largest block
    assert blockwise.query_block(1, 4, 4096) == 32  # 1 x 4 x 32 x 4096 = 2**19 elements
    assert blockwise.query_block(16, 4, 4096) == 16  # never below 16, whatever the budget
    for B, nh, Tk in [(1, 4, 1000), (2, 8, 3000), (3, 2, 70000)]:
        bq = blockwise.query_block(B, nh, Tk)
        assert bq == 16 or (B * nh * bq * Tk <= blockwise.TILE_BUDGET < B * nh * 2 * bq * Tk or bq == 128)

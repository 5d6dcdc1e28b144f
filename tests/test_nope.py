"""NoPE (posenc.encodings.nope): no positional signal, so attention is plain causal attention.

Everything here runs in float64, where the only differences between the library and the naive
reference are summation order (tolerance 1e-12 relative to the values).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from hypothesis import given
from hypothesis import strategies as st

from posenc import CausalSelfAttention, NoPE, RotaryEmbedding
from posenc.attention import causal_attention

F64 = torch.float64
seeds = st.integers(0, 2**32 - 1)


def naive_causal_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    T = q.shape[-2]
    scores = q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1])  # (B, nh, T, T)
    scores = scores.masked_fill(torch.ones(T, T, dtype=torch.bool).triu(1), float("-inf"))
    return torch.softmax(scores, dim=-1) @ v


def naive_self_attention(attn: CausalSelfAttention, x: torch.Tensor) -> torch.Tensor:
    """c_attn -> heads -> softmax(q k^T / sqrt(hs) + causal mask) v -> c_proj, with nothing positional."""
    B, T, C = x.shape
    nh = attn.n_head
    q, k, v = attn.c_attn(x).split(C, dim=2)
    q, k, v = (t.view(B, T, nh, C // nh).transpose(1, 2) for t in (q, k, v))  # (B, nh, T, hs)
    y = naive_causal_attention(q, k, v).transpose(1, 2).reshape(B, T, C)
    return attn.c_proj(y)


def random_attention(n_embd: int, n_head: int, seed: int, pe=None) -> CausalSelfAttention:
    attn = CausalSelfAttention(n_embd, n_head, pe=pe).double().eval()
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in attn.parameters():
            p.copy_(torch.randn(p.shape, dtype=F64, generator=g) * 0.3)
    return attn


def test_hooks_are_neutral():
    nope = NoPE()
    assert nope.where == "none" and nope.max_positions is None
    assert list(nope.parameters()) == [] and list(nope.buffers()) == []
    q, k = torch.randn(2, 1, 2, 3, 4)
    pos = torch.arange(3)
    rq, rk = nope.rotate(q, k, pos)
    assert rq is q and rk is k
    assert nope.embed(pos) is None
    assert nope.score_bias(pos, pos) is None


@given(st.integers(1, 2), st.integers(1, 4), st.integers(1, 16), st.integers(1, 16), seeds)
def test_causal_attention_equals_sdpa_and_naive(B, n_head, head_dim, T, seed):
    g = torch.Generator().manual_seed(seed)
    q, k, v = torch.randn(3, B, n_head, T, head_dim, dtype=F64, generator=g)
    out = causal_attention(q, k, v)
    torch.testing.assert_close(out, F.scaled_dot_product_attention(q, k, v, is_causal=True), rtol=0, atol=1e-12)
    torch.testing.assert_close(out, naive_causal_attention(q, k, v), rtol=0, atol=1e-12)


@given(st.integers(1, 2), st.integers(1, 4), st.integers(1, 8), st.integers(1, 16), st.integers(0, 1000), seeds)
def test_self_attention_with_nope_equals_naive_reference(B, n_head, head_dim, T, offset, seed):
    attn = random_attention(n_head * head_dim, n_head, seed, pe=NoPE())
    x = torch.randn(B, T, n_head * head_dim, dtype=F64, generator=torch.Generator().manual_seed(seed + 1))
    with torch.no_grad():
        ref = naive_self_attention(attn, x)
        torch.testing.assert_close(attn(x), ref, rtol=0, atol=1e-12)
        # positions carry no information: any offset gives the same output
        torch.testing.assert_close(attn(x, torch.arange(offset, offset + T)), ref, rtol=0, atol=1e-12)
    # pe=None means NoPE
    plain = random_attention(n_head * head_dim, n_head, seed)
    assert isinstance(plain.pe, NoPE)
    with torch.no_grad():
        torch.testing.assert_close(plain(x), ref, rtol=0, atol=1e-12)


def _last_output_after_reordering_the_past(attn: CausalSelfAttention, x: torch.Tensor) -> torch.Tensor:
    reordered = torch.cat((x[:, :-1].flip(1), x[:, -1:]), dim=1)
    with torch.no_grad():
        return (attn(x)[:, -1] - attn(reordered)[:, -1]).abs().max()


@given(st.integers(1, 4), st.integers(2, 8), st.integers(3, 16), seeds)
def test_without_positions_the_order_of_the_past_is_invisible(n_head, head_dim, T, seed):
    # the last query attends to every earlier key with no position signal: a permutation of the
    # earlier tokens only reorders a sum
    attn = random_attention(n_head * head_dim, n_head, seed, pe=NoPE())
    x = torch.randn(1, T, n_head * head_dim, dtype=F64, generator=torch.Generator().manual_seed(seed + 1))
    assert _last_output_after_reordering_the_past(attn, x) <= 1e-12 * max(1.0, float(x.abs().max()))


def test_with_rope_the_order_of_the_past_is_visible():
    # control for the test above: the same check with RoPE sees the permutation
    n_head, head_dim, T = 2, 8, 8
    attn = random_attention(n_head * head_dim, n_head, 0, pe=RotaryEmbedding(head_dim))
    x = torch.randn(1, T, n_head * head_dim, dtype=F64, generator=torch.Generator().manual_seed(1))
    assert _last_output_after_reordering_the_past(attn, x) > 1e-3

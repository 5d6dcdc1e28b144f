"""ALiBi (posenc.encodings.alibi): slopes against the paper, shift invariance, attention reference.

The slopes are kept in float32 by the module; the references here are float64, so comparisons with
the module's tensors carry a float32 rounding tolerance (2**-24 relative per slope).
"""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from posenc import ALiBi, alibi_slopes
from posenc.attention import causal_attention

F64 = torch.float64


def reference_get_slopes(n: int) -> list[float]:
    """``get_slopes`` from ofirpress/attention_with_linear_biases (the paper's code), verbatim logic."""

    def get_slopes_power_of_2(n):
        start = 2 ** (-(2 ** -(math.log2(n) - 3)))
        ratio = start
        return [start * ratio**i for i in range(n)]

    if math.log2(n).is_integer():
        return get_slopes_power_of_2(n)
    closest_power_of_2 = 2 ** math.floor(math.log2(n))
    extra = reference_get_slopes(2 * closest_power_of_2)[0::2][: n - closest_power_of_2]
    return get_slopes_power_of_2(closest_power_of_2) + extra


@pytest.mark.parametrize("n_head", range(1, 17))
def test_slopes_match_reference_rule(n_head):
    got = alibi_slopes(n_head)
    assert got == pytest.approx(reference_get_slopes(n_head), rel=1e-12, abs=0)
    module = ALiBi(n_head).slopes
    assert module.dtype == torch.float32
    torch.testing.assert_close(module.double(), torch.tensor(got, dtype=F64), rtol=2**-24, atol=0)


def test_slopes_closed_form_examples():
    # the paper: for 8 heads the slopes are 1/2, 1/4, ..., 1/256
    assert alibi_slopes(8) == [2.0**-k for k in range(1, 9)]
    assert alibi_slopes(4) == [2.0**-2, 2.0**-4, 2.0**-6, 2.0**-8]
    assert alibi_slopes(1) == [2.0**-8]
    # 12 heads: the 8-head slopes, then every other slope of 16 heads: 2^-0.5, 2^-1.5, 2^-2.5, 2^-3.5
    expected_12 = [2.0**-k for k in range(1, 9)] + [2.0 ** -(k + 0.5) for k in range(4)]
    assert alibi_slopes(12) == pytest.approx(expected_12, rel=1e-15)
    # every head count gets distinct, positive slopes <= 1/sqrt(2)
    for n in range(1, 17):
        s = alibi_slopes(n)
        assert len(set(s)) == n and all(0 < v <= 2**-0.5 for v in s)


@pytest.mark.parametrize("bad", [0, -3, 2.5, "8"])
def test_invalid_head_count_is_refused(bad):
    with pytest.raises(ValueError, match=repr(bad).replace(".", r"\.")):
        ALiBi(bad)


def test_score_bias_values_and_shapes():
    alibi = ALiBi(3)
    slopes = torch.tensor(alibi_slopes(3), dtype=torch.float32)
    pos = torch.arange(5)
    bias = alibi.score_bias(pos, pos)
    assert bias.shape == (3, 5, 5) and bias.dtype == torch.float32
    for h in range(3):
        for i in range(5):
            for j in range(5):
                assert bias[h, i, j] == -slopes[h] * (i - j)
    rows = torch.stack((torch.arange(5), torch.arange(10, 15)))
    batched = alibi.score_bias(rows, rows)
    assert batched.shape == (2, 3, 5, 5)
    assert torch.equal(batched[0], bias) and torch.equal(batched[1], bias)
    # decoding: one query against past keys
    step = alibi.score_bias(torch.tensor([4]), pos)
    assert step.shape == (3, 1, 5) and torch.equal(step, bias[:, 4:5])


position_lists = st.lists(st.integers(0, 1000), min_size=1, max_size=16)


@given(st.integers(1, 16), position_lists, position_lists, st.integers(0, 10_000), st.booleans())
def test_bias_is_shift_invariant(n_head, q_pos, k_pos, shift, batched):
    alibi = ALiBi(n_head)
    q, k = torch.tensor(q_pos), torch.tensor(k_pos)
    if batched:
        q, k = torch.stack((q, q + 7)), torch.stack((k, k + 7))
    # distances are integers, so the shifted bias is the same float32 numbers, bit for bit
    assert torch.equal(alibi.score_bias(q + shift, k + shift), alibi.score_bias(q, k))


def reference_alibi_attention(q, k, v, q_pos, k_pos, n_head):
    """float64 softmax(q k^T / sqrt(d) + bias + causal mask) v with the closed-form slopes."""
    slopes = torch.tensor(reference_get_slopes(n_head), dtype=F64).view(-1, 1, 1)  # (nh, 1, 1)
    dist = (q_pos[..., :, None] - k_pos[..., None, :]).to(F64)  # (B, Tq, Tk)
    bias = -slopes * dist[:, None]  # (B, nh, Tq, Tk)
    scores = q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1]) + bias
    Tq, Tk = q.shape[-2], k.shape[-2]
    future = torch.arange(Tk)[None, :] > torch.arange(Tk - Tq, Tk)[:, None]  # queries are the last Tq keys
    scores = scores.masked_fill(future, float("-inf"))
    return torch.softmax(scores, dim=-1) @ v


@given(
    n_head=st.integers(1, 6),
    head_dim=st.integers(2, 16),
    Tk=st.integers(1, 16),
    data=st.data(),
    seed=st.integers(0, 2**32 - 1),
)
def test_causal_attention_with_alibi_matches_explicit_softmax(n_head, head_dim, Tk, data, seed):
    B = 2
    Tq = data.draw(st.integers(1, Tk))
    offsets = data.draw(st.lists(st.integers(0, 1000), min_size=B, max_size=B))
    per_row = data.draw(st.booleans())
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(B, n_head, Tq, head_dim, dtype=F64, generator=g)
    k, v = torch.randn(2, B, n_head, Tk, head_dim, dtype=F64, generator=g)
    k_pos = torch.arange(Tk) + torch.tensor(offsets)[:, None]  # (B, Tk)
    q_pos = k_pos[:, Tk - Tq :]
    alibi = ALiBi(n_head)
    if per_row:
        bias = alibi.score_bias(q_pos, k_pos)  # (B, nh, Tq, Tk)
    else:
        bias = alibi.score_bias(q_pos[0], k_pos[0])  # (nh, Tq, Tk), shared by the rows
    out = causal_attention(q, k, v, bias=bias)
    ref = reference_alibi_attention(q, k, v, q_pos, k_pos, n_head)
    # float32 slopes move a score by <= 2**-24 * slope * distance (distance < 16 here)
    torch.testing.assert_close(out, ref, rtol=0, atol=1e-6 * float(v.abs().max()))


def test_alibi_changes_attention():
    # control for the test above: the same attention without the bias is measurably different
    g = torch.Generator().manual_seed(0)
    q, k, v = torch.randn(3, 1, 4, 12, 8, dtype=F64, generator=g)
    pos = torch.arange(12)
    with_bias = causal_attention(q, k, v, bias=ALiBi(4).score_bias(pos, pos))
    assert (with_bias - causal_attention(q, k, v)).abs().max() > 1e-2


@pytest.mark.parametrize(
    "cast",
    [lambda m: m.to(torch.bfloat16), lambda m: m.half(), lambda m: m.double()],
    ids=["to-bf16", "half", "double"],
)
@pytest.mark.parametrize("bias_max", [8.0, 4.0])
def test_slopes_stay_exact_float32_after_a_dtype_cast(cast, bias_max):
    """A cast rebuilds the slopes from the module's own ``bias_max`` (it once fell back to 8)."""
    alibi = cast(ALiBi(12, bias_max=bias_max))
    assert alibi.slopes.dtype == torch.float32
    assert torch.equal(alibi.slopes, torch.tensor(alibi_slopes(12, bias_max), dtype=torch.float32))
    assert alibi.state_dict() == {}

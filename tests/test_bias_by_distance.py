"""``bias_by_distance``: the bias of an encoding that depends on q - k alone, computed once per
distance and laid out as a Toeplitz matrix, equals the bias over every (query, key) pair in values
and in every parameter's gradient (T5's ``score_bias`` takes it; ALiBi and KERPLE, whose form is
two or three elementwise operations per pair, stay by pair, and check the helper here); positions
that are not consecutive take the pairs' route."""

from __future__ import annotations

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from posenc.encodings.alibi import ALiBi
from posenc.encodings.base import bias_by_distance, bias_over_heads
from posenc.encodings.kerple import KerpleLog
from posenc.encodings.t5 import T5RelativeBias

F64 = torch.float64


def encodings():
    torch.manual_seed(0)
    t5 = T5RelativeBias(3, num_buckets=8, max_distance=20)
    with torch.no_grad():
        t5.relative_attention_bias.weight.normal_()  # distinct buckets' values, not the 0.02-std start
    return [ALiBi(3), KerpleLog(3), t5]


def by_pair(enc, q, k):
    return enc._bias_by_pair(q, k) if isinstance(enc, T5RelativeBias) else bias_over_heads(enc, enc.n_head, q, k)


def grads(bias, enc, upstream):
    params = [p for p in enc.parameters() if p.requires_grad]
    return torch.autograd.grad(bias, params, upstream) if params else ()


@settings(deadline=None, max_examples=40)
@given(
    q0=st.integers(0, 40), Tq=st.integers(1, 24), k0=st.integers(0, 40), Tk=st.integers(1, 40), seed=st.integers(0, 99)
)
def test_toeplitz_equals_every_pair(q0, Tq, k0, Tk, seed):
    q, k = torch.arange(q0, q0 + Tq), torch.arange(k0, k0 + Tk)
    upstream = torch.randn(3, Tq, Tk, generator=torch.Generator().manual_seed(seed))
    for enc in encodings():
        enc = enc.to(F64)
        got, want = bias_by_distance(enc, enc.n_head, q, k), by_pair(enc, q, k)
        assert got.shape == want.shape == (3, Tq, Tk)
        torch.testing.assert_close(got, want.to(got.dtype), rtol=0, atol=0)
        for a, b in zip(
            grads(got, enc, upstream.to(got.dtype)), grads(want, enc, upstream.to(want.dtype)), strict=True
        ):
            # T5 computes in float32 (its table is cast): sums in another order differ by rounding (~1e-6 of sums of ~20)
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-4)


def test_the_pairs_route_where_positions_are_not_one_run():
    """Per-row (B, T) positions and gaps go over every pair: a Toeplitz layout would be wrong there."""
    for enc in encodings():
        called = []

        def pair(q, k, enc=enc, called=called):
            called.append(1)
            return by_pair(enc, q, k)

        for q, k in [
            (torch.tensor([0, 1, 3]), torch.arange(4)),
            (torch.arange(4), torch.tensor([0, 2, 4, 6])),
            (torch.arange(3).expand(2, 3), torch.arange(3).expand(2, 3)),
            (torch.tensor([3, 2, 1]), torch.arange(4)),
        ]:
            got = bias_by_distance(enc, enc.n_head, q, k, by_pair=pair)
            torch.testing.assert_close(got, by_pair(enc, q, k))
        assert len(called) == 4


def test_t5_takes_it():
    t5 = encodings()[2]
    q, k = torch.arange(5, 20), torch.arange(0, 20)
    torch.testing.assert_close(t5.score_bias(q, k), bias_by_distance(t5, 3, q, k), rtol=0, atol=0)
    rows = torch.arange(3).view(3, 1) + torch.arange(5)  # per-row positions: by pair
    torch.testing.assert_close(t5.score_bias(rows, rows), t5._bias_by_pair(rows, rows), rtol=0, atol=0)

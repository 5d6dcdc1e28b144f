"""KERPLE log (posenc.encodings.kerple): the paper's formula in float64, positivity of r1 and r2,
translation invariance, KV cache, per-row positions and float32 math.
"""

from __future__ import annotations

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from posenc.encodings import ENCODINGS
from posenc.encodings.base import ModelDims
from posenc.encodings.kerple import KerpleLog

F64 = torch.float64


def reference_kerple_log(r1: torch.Tensor, r2: torch.Tensor, q_pos: torch.Tensor, k_pos: torch.Tensor) -> torch.Tensor:
    """Chi et al. 2022, eq. for the logarithmic kernel: -r1 * log(1 + r2 * |m - n|), float64."""
    d = (q_pos[:, None] - k_pos[None, :]).abs().to(F64)
    return -r1.to(F64)[:, None, None] * torch.log(1 + r2.to(F64)[:, None, None] * d)


def test_matches_paper_formula():
    torch.manual_seed(0)
    enc = KerpleLog(5)
    q_pos, k_pos = torch.arange(100, 160), torch.arange(0, 160)
    got = enc.score_bias(q_pos, k_pos)
    assert got.dtype == torch.float32 and got.shape == (5, 60, 160)
    want = reference_kerple_log(enc.r1.detach(), enc.r2.detach(), q_pos, k_pos)
    torch.testing.assert_close(got.to(F64), want, rtol=2e-6, atol=1e-6)


def test_parameters_stay_positive_and_init_follows_the_paper():
    torch.manual_seed(0)
    enc = KerpleLog(64)
    assert ((enc.r1 >= 1e-2 - 1e-7) & (enc.r1 <= 2)).all() and ((enc.r2 >= 1e-2 - 1e-7) & (enc.r2 <= 1)).all()
    with torch.no_grad():
        enc.raw_r1.fill_(-30.0)
        enc.raw_r2.fill_(-30.0)
    assert (enc.r1 > 0).all() and (enc.r2 > 0).all()
    bias = enc.score_bias(torch.arange(10), torch.arange(10))
    assert (bias <= 0).all() and torch.isfinite(bias).all()


@given(T=st.integers(1, 40), offset=st.integers(0, 100_000), nh=st.integers(1, 4))
def test_translation_invariant_at_any_offset(T, offset, nh):
    enc = KerpleLog(nh)
    pos = torch.arange(T)
    torch.testing.assert_close(enc.score_bias(pos + offset, pos + offset), enc.score_bias(pos, pos), rtol=0, atol=0)


@given(Tk=st.integers(1, 200), data=st.data())
def test_kv_cache_rows_are_rows_of_the_full_bias(Tk, data):
    Tq = data.draw(st.integers(1, Tk))
    offset = data.draw(st.integers(0, 50))
    enc = KerpleLog(3)
    k_pos = torch.arange(Tk) + offset
    full = enc.score_bias(k_pos, k_pos)
    torch.testing.assert_close(enc.score_bias(k_pos[Tk - Tq :], k_pos), full[:, Tk - Tq :], rtol=0, atol=0)


def test_per_row_positions():
    enc = KerpleLog(2)
    pos = torch.stack([torch.arange(30), torch.arange(30) + 9])
    bias = enc.score_bias(pos, pos)
    assert bias.shape == (2, 2, 30, 30)
    for b in range(2):
        torch.testing.assert_close(bias[b], enc.score_bias(pos[b], pos[b]), rtol=0, atol=0)


def test_float32_math_under_a_low_precision_model():
    enc = KerpleLog(3).to(torch.bfloat16)
    pos = torch.arange(50)
    bias = enc.score_bias(pos, pos)
    assert bias.dtype == torch.float32
    want = reference_kerple_log(enc.r1.detach(), enc.r2.detach(), pos, pos)  # from the bf16-stored raws
    torch.testing.assert_close(bias.to(F64), want, rtol=2e-6, atol=1e-6)


def test_gradients_reach_both_parameters():
    enc = KerpleLog(2)
    pos = torch.arange(20)
    enc.score_bias(pos, pos).sum().backward()
    assert (enc.raw_r1.grad != 0).all() and (enc.raw_r2.grad != 0).all()


def test_build_and_registry():
    code, cls = ENCODINGS["kerple"]
    assert (code, cls) == ("K", KerpleLog) and cls.where == "scores"
    enc = cls.build(ModelDims(n_embd=48, n_head=6, block_size=32))
    assert enc.raw_r1.shape == (6,)
    with pytest.raises(ValueError, match="n_head"):
        KerpleLog(0)

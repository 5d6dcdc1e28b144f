"""Absolute position embeddings (posenc.encodings.absolute): the learned table and Vaswani's sinusoids.

The sinusoidal table is evaluated with float32 angles, so against the float64 formula its error
grows with the position: fl32(p * fl32(w)) is within p * 2**-23 of p * w (w <= 1), plus ~1e-7 for
sin/cos; ``sin_tol`` is that bound with a 4x margin, times the table's scale.
"""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from posenc import AbsolutePE, SinusoidalPE


def vaswani(positions: list[int], dim: int, base: float = 10000.0) -> torch.Tensor:
    """PE(p, 2i) = sin(p / base^(2i/dim)), PE(p, 2i+1) = cos(p / base^(2i/dim)), in python floats."""
    rows = []
    for p in positions:
        row = []
        for c in range(dim):
            angle = p / base ** (2 * (c // 2) / dim)
            row.append(math.sin(angle) if c % 2 == 0 else math.cos(angle))
        rows.append(row)
    return torch.tensor(rows, dtype=torch.float64)


def sin_tol(max_pos: int, scale: float) -> float:
    return (2.0**-21 * max(max_pos, 1) + 1e-6) * scale


# ---------------------------------------------------------------------------------------------
# learned table


def test_learned_table_lookup():
    pe = AbsolutePE(10, 6)
    assert pe.where == "input" and pe.max_positions == 10
    assert isinstance(pe.weight, torch.nn.Parameter) and pe.weight.shape == (10, 6)
    with torch.no_grad():
        pe.weight.copy_(torch.arange(60, dtype=torch.float32).view(10, 6))
    pos = torch.tensor([3, 0, 9])
    out = pe.embed(pos)
    assert out.shape == (3, 6)
    assert torch.equal(out, pe.weight[pos])
    assert out[0].tolist() == [18.0, 19.0, 20.0, 21.0, 22.0, 23.0]
    rows = torch.tensor([[0, 1, 2], [7, 8, 9]])
    batched = pe.embed(rows)
    assert batched.shape == (2, 3, 6)
    assert torch.equal(batched[1], pe.weight[7:10])
    # gradients reach exactly the looked-up rows
    pe.embed(pos).sum().backward()
    assert pe.weight.grad[[0, 3, 9]].eq(1).all() and pe.weight.grad[[1, 2, 4, 5, 6, 7, 8]].eq(0).all()


def test_learned_table_initialisation_scale():
    w = AbsolutePE(512, 64).weight.detach()
    assert abs(float(w.mean())) < 0.002 and 0.018 < float(w.std()) < 0.022


@pytest.mark.parametrize(
    "positions, top", [(torch.tensor([0, 5, 12]), 12), (torch.tensor([[0, 1], [3, 12]]), 12), (torch.tensor([10]), 10)]
)
def test_learned_table_refuses_positions_past_its_size(positions, top):
    pe = AbsolutePE(10, 4)
    with pytest.raises(ValueError, match=rf"up to {top}\b.*< 10\b"):
        pe.embed(positions)
    pe.embed(torch.tensor([9]))  # the last row is fine


def test_learned_table_refuses_bad_positions():
    pe = AbsolutePE(10, 4)
    with pytest.raises(ValueError, match="-1"):
        pe.embed(torch.tensor([0, -1]))
    with pytest.raises(TypeError, match="integer"):
        pe.embed(torch.tensor([0.0, 1.0]))


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(n_positions=0, dim=4), "n_positions"),
        (dict(n_positions=8, dim=0), "dim"),
        (dict(n_positions=8, dim=4, scale=2.0), "scale"),
    ],
)
def test_invalid_construction_is_refused(kwargs, match):
    with pytest.raises(ValueError, match=match):
        AbsolutePE(**kwargs)


# ---------------------------------------------------------------------------------------------
# sinusoidal table


@given(
    n_positions=st.integers(1, 16),
    dim=st.integers(1, 16),
    positions=st.lists(st.integers(0, 5000), min_size=1, max_size=16),
    scale=st.sampled_from([None, 1.0, 0.5]),
)
def test_sinusoidal_matches_vaswani_formula(n_positions, dim, positions, scale):
    pe = AbsolutePE(n_positions, dim, sinusoidal=True, scale=scale)
    expected_scale = 1.0 / math.sqrt(dim) if scale is None else scale
    assert pe.scale == pytest.approx(expected_scale, rel=1e-15)
    out = pe.embed(torch.tensor(positions))  # most positions lie past n_positions: no error
    assert out.shape == (len(positions), dim) and out.dtype == torch.float32
    ref = vaswani(positions, dim) * expected_scale
    torch.testing.assert_close(out.double(), ref, rtol=0, atol=sin_tol(max(positions), expected_scale))


def test_sinusoidal_extrapolates_past_its_nominal_size():
    pe = SinusoidalPE(8, 6)
    pos = torch.tensor([[7, 8, 100], [0, 8000, 9]])
    out = pe.embed(pos)
    assert out.shape == (2, 3, 6)
    ref = vaswani(pos.flatten().tolist(), 6).view(2, 3, 6) / math.sqrt(6)
    torch.testing.assert_close(out.double(), ref, rtol=0, atol=sin_tol(8000, 1 / math.sqrt(6)))


def test_sinusoidal_class_is_the_sinusoidal_flag():
    a, b = SinusoidalPE(16, 10), AbsolutePE(16, 10, sinusoidal=True)
    assert a.where == b.where == "input" and a.max_positions is None
    assert list(a.parameters()) == [] and a.state_dict() == {}
    pos = torch.arange(40)
    assert torch.equal(a.embed(pos), b.embed(pos))
    # scale multiplies the same table
    scaled = SinusoidalPE(16, 10, scale=3.0).embed(pos)
    torch.testing.assert_close(scaled, a.embed(pos) * math.sqrt(10) * 3.0, rtol=1e-6, atol=0)


def test_sinusoidal_position_zero_is_sin0_cos0():
    out = SinusoidalPE(4, 8, scale=1.0).embed(torch.tensor([0]))
    assert out.tolist() == [[0.0, 1.0] * 4]

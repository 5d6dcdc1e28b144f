"""FIRE (posenc.encodings.fire): the paper's formula in float64, invariance below the threshold L,
progressive interpolation beyond it, KV cache, per-row positions and float32 math.
"""

from __future__ import annotations

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from posenc.encodings import ENCODINGS
from posenc.encodings.base import ModelDims
from posenc.encodings.fire import FIRE

F64 = torch.float64


def reference_fire(enc: FIRE, q_pos: torch.Tensor, k_pos: torch.Tensor) -> torch.Tensor:
    """Li et al. 2023: b(i, j) = f(psi(i - j) / psi(max(L, i))), psi(x) = log(|c x| + 1), with
    L = |L_multiplier * L_init| and eps added to the normaliser; f = Linear-ReLU-Linear. float64."""
    p = {name: t.detach().to(F64) for name, t in enc.named_parameters()}
    c, L = p["c"], (p["threshold_multiplier"] * enc.init_threshold.to(F64)).abs()
    i, j = q_pos.to(F64)[:, None], k_pos.to(F64)[None, :]
    x = torch.log((c * (i - j)).abs() + 1) / (torch.log((c * torch.maximum(i, L)).abs() + 1) + enc.eps)
    h = torch.relu(x[..., None] * p["mlp_in.weight"][:, 0] + p["mlp_in.bias"])  # (Tq, Tk, width)
    return (h @ p["mlp_out.weight"].T + p["mlp_out.bias"]).permute(2, 0, 1)  # (nh, Tq, Tk)


def fire(nh=3, threshold=16.0, seed=0):
    torch.manual_seed(seed)
    enc = FIRE(nh, init_threshold=threshold)
    with torch.no_grad():  # a learned-looking c and threshold, not the initial values
        enc.c.fill_(0.37)
        enc.threshold_multiplier.fill_(1.25)
    return enc


def test_matches_paper_formula_on_both_sides_of_the_threshold():
    enc = fire()  # L = 20
    q_pos, k_pos = torch.arange(5, 60), torch.arange(0, 60)
    got = enc.score_bias(q_pos, k_pos)
    assert got.dtype == torch.float32 and got.shape == (3, 55, 60)
    torch.testing.assert_close(got.to(F64), reference_fire(enc, q_pos, k_pos), rtol=1e-5, atol=1e-6)


def test_paper_defaults():
    enc = FIRE.build(ModelDims(n_embd=64, n_head=4, block_size=128))
    assert enc.mlp_in.out_features == 32 and enc.mlp_out.out_features == 4
    assert enc.c.item() == pytest.approx(0.1) and enc.threshold.item() == 512.0


@given(T=st.integers(1, 20), data=st.data())
def test_translation_invariant_while_queries_stay_below_the_threshold(T, data):
    enc = fire()  # L = 20
    L = int(enc.threshold)
    offset = data.draw(st.integers(0, L - T))  # every query position < L
    pos = torch.arange(T)
    torch.testing.assert_close(enc.score_bias(pos + offset, pos + offset), enc.score_bias(pos, pos), rtol=0, atol=0)


@given(i=st.integers(20, 5000), shift=st.integers(1, 5000))
def test_progressive_interpolation_beyond_the_threshold(i, shift):
    enc = fire()  # L = 20
    x = enc.normalized_distance(torch.tensor([i, i + shift]), torch.arange(i + shift + 1))  # (2, Tk)
    # the farthest key maps to 1 and the query itself to 0, wherever the query is
    torch.testing.assert_close(x[:, 0].double(), torch.ones(2, dtype=F64), rtol=0, atol=1e-5)
    assert x[0, i] == 0 and x[1, i + shift] == 0 and (x[0, : i + 1] <= 1 + 1e-6).all()
    # a fixed distance d shrinks as the query moves on: psi(d) / psi(i) decreases in i
    d = torch.arange(1, i + 1)
    assert (x[1, i + shift - d] < x[0, i - d]).all()
    # so the bias is no longer translation invariant there
    b = enc.score_bias(torch.tensor([i, i + shift]), torch.tensor([i - 1, i + shift - 1]))
    assert not torch.equal(b[:, 0, 0], b[:, 1, 1])


def test_normalised_distance_is_constant_in_the_query_below_the_threshold():
    enc = fire()
    L = int(enc.threshold)
    x = enc.normalized_distance(torch.arange(L), torch.arange(L))
    for d in range(L):
        diag = torch.diagonal(x, -d)
        assert (diag == diag[0]).all()


@given(Tk=st.integers(1, 80), data=st.data())
def test_kv_cache_rows_are_rows_of_the_full_bias(Tk, data):
    Tq = data.draw(st.integers(1, Tk))
    offset = data.draw(st.integers(0, 50))
    enc = fire()
    k_pos = torch.arange(Tk) + offset
    full = enc.score_bias(k_pos, k_pos)
    torch.testing.assert_close(enc.score_bias(k_pos[Tk - Tq :], k_pos), full[:, Tk - Tq :], rtol=0, atol=0)


def test_per_row_positions():
    enc = fire()
    pos = torch.stack([torch.arange(30), torch.arange(30) + 40])
    bias = enc.score_bias(pos, pos)
    assert bias.shape == (2, 3, 30, 30)
    for b in range(2):
        torch.testing.assert_close(bias[b], enc.score_bias(pos[b], pos[b]), rtol=1e-6, atol=1e-6)


def test_float32_math_under_a_low_precision_model():
    enc = fire().to(torch.bfloat16)
    pos = torch.arange(40)
    bias = enc.score_bias(pos, pos)
    assert bias.dtype == torch.float32
    torch.testing.assert_close(bias.to(F64), reference_fire(enc, pos, pos), rtol=1e-5, atol=1e-6)


def test_gradients_reach_every_parameter():
    enc = fire()
    pos = torch.arange(40)
    enc.score_bias(pos, pos).square().sum().backward()
    for name, p in enc.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


def test_registry_and_validation():
    code, cls = ENCODINGS["fire"]
    assert (code, cls) == ("F", FIRE) and cls.where == "scores"
    for kwargs, match in [
        (dict(n_head=0), "n_head"),
        (dict(n_head=2, mlp_width=0), "mlp_width"),
        (dict(n_head=2, init_threshold=0.0), "init_threshold"),
        (dict(n_head=2, init_c=-1.0), "init_c"),
    ]:
        with pytest.raises(ValueError, match=match):
            FIRE(**kwargs)


def test_in_a_gpt_the_mlp_keeps_nn_linears_initialisation_and_the_references_weight_decay():
    """The paper's code builds its MLP from nn.Linear and keeps its initialisation (weights and
    biases U(-1/sqrt(fan_in), 1/sqrt(fan_in))); the GPT's own initialisation leaves FIRE alone. In
    posenc 0.2 it drew N(0, 0.02) weights and zero biases: on inputs in [0, 1] every hidden unit with a
    negative weight was then dead for the whole run."""
    from posenc import GPT, GPTConfig

    torch.manual_seed(0)
    model = GPT(GPTConfig.from_preset("cpu-small", pe="fire"))
    encs = [b.attn.pe for b in model.blocks]
    before = [{n: p.clone() for n, p in e.named_parameters()} for e in encs]
    model.init_weights(seed=5)  # re-initialising the GPT does not touch them
    for enc, saved in zip(encs, before, strict=True):
        for name, p in enc.named_parameters():
            assert torch.equal(p, saved[name]), name
        w_in, b_in = enc.mlp_in.weight, enc.mlp_in.bias  # fan_in 1: U(-1, 1)
        assert w_in.abs().max() <= 1 and w_in.std() > 0.3 and b_in.abs().max() <= 1 and b_in.std() > 0.3
        assert enc.mlp_out.weight.abs().max() <= 32**-0.5 and enc.mlp_out.bias.abs().sum() > 0
        # a unit is dead at init when relu(w x + b) = 0 for every x in [0, 1]: b <= 0 and w + b <= 0
        dead = ((b_in <= 0) & (w_in[:, 0] + b_in <= 0)).float().mean()
        assert dead < 0.6  # about 3/8 under U(-1, 1), as in the reference; all negative-weight units with zero biases
    groups = model.configure_optimizers(weight_decay=0.1, learning_rate=1e-3).param_groups
    decayed = {id(p) for p in groups[0]["params"]}
    names = {n for n, p in encs[0].named_parameters() if id(p) in decayed}
    assert names == {"mlp_in.weight", "mlp_out.weight", "c", "threshold_multiplier"}  # all but the biases


def piecewise(enc: FIRE, x: torch.Tensor) -> torch.Tensor:
    """``score_bias``'s evaluation of the MLP on inputs x (...,) -> (..., nh)."""
    kinks, slope, intercept = enc.segments()
    seg = torch.searchsorted(kinks, x.detach().contiguous())
    return (slope[:, seg] * x + intercept[:, seg]).movedim(0, -1)


@given(st.integers(0, 2**31 - 1), st.sampled_from([0.0, 0.3, 1.0]))
def test_the_piecewise_linear_mlp_equals_the_mlp(seed, zeros):
    """Everywhere, at the kinks themselves and with units whose input weight is 0 (on or off)."""
    enc = fire(seed=seed % 1000)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in enc.parameters():
            p.copy_(torch.randn(p.shape, generator=g))
        dead = torch.rand(enc.mlp_width, generator=g) < zeros
        enc.mlp_in.weight[dead, 0] = 0.0
    kinks = (-enc.mlp_in.bias / enc.mlp_in.weight[:, 0]).detach()
    x = torch.cat((torch.randn(200, generator=g) * 3, kinks[torch.isfinite(kinks)]))
    # float32 rounding: slope * x + intercept sums the same terms in another order; kinks of a small
    # input weight lie far out, where the terms are large
    got, want = piecewise(enc, x), enc.mlp(x)
    bound = 1e-5 * (1.0 + x.abs()[:, None] + want.abs())
    assert ((got - want).abs() <= bound).all(), (got - want).abs().max()


def test_the_piecewise_evaluation_has_the_mlps_gradients():
    enc = fire()
    pos = torch.arange(48)
    weights = torch.randn(3, 48, 48, generator=torch.Generator().manual_seed(1))
    (enc.score_bias(pos, pos) * weights).sum().backward()
    fast = {name: p.grad.clone() for name, p in enc.named_parameters()}
    enc.zero_grad()
    x = enc.normalized_distance(pos, pos)
    (enc.mlp(x).movedim(-1, 0) * weights).sum().backward()
    for name, p in enc.named_parameters():
        torch.testing.assert_close(fast[name], p.grad, rtol=1e-4, atol=1e-5, msg=name)

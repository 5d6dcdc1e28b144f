"""Stick-breaking attention (posenc.encodings.stickbreaking) against a float64 transcription of the
reference (shawntan/stickbreaking-attention: ``sb_ref.stickbreaking`` and ``tests/test_attn.py``'s
``ref_fwd``, which adds the stick left over times the query's own value), values and gradients,
with and without ``attend_current``; the dropped remainder; windows and the first token; and, as
for every variant, cached decoding and packing in tests/test_model.py and tests/test_packing.py."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from posenc import GPT, CausalSelfAttention, GPTConfig, LayerSpec
from posenc.attention.kernel import attend
from posenc.encodings.base import Weighting
from posenc.encodings.stickbreaking import StickBreaking

F64 = torch.float64


def reference(q, k, v, *, attend_current=False, remainder="self"):
    """sb_ref.stickbreaking + ref_fwd, float64: q, k, v (B, nh, T, d) -> (B, nh, T, d)."""
    q, k, v = (t.to(F64) for t in (q, k, v))
    T = q.shape[-2]
    logits = q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1])
    mask = torch.ones(T, T, dtype=torch.bool).triu(1 if attend_current else 0)  # True = not visible
    cum_weight = torch.ones(T, T, dtype=F64).tril(-1)
    log_z = F.logsigmoid(logits).masked_fill(mask, -1e5)
    log_beta = F.logsigmoid(-logits).masked_fill(mask, 0)
    re_cum_log_beta = torch.einsum("bhij,jk->bhik", log_beta, cum_weight)
    att = (log_z + re_cum_log_beta).exp()
    out, rem = att @ v, 1 - att.sum(dim=-1)
    return out + rem[..., None] * v if remainder == "self" else out


@pytest.mark.parametrize("attend_current", [False, True])
@pytest.mark.parametrize("remainder", ["self", "drop"])
def test_the_kernel_matches_the_reference_values_and_gradients(attend_current, remainder):
    torch.manual_seed(0)
    shape = (2, 3, 300, 16)  # several query blocks of the kernel
    q = (0.5 * (torch.randn(shape, dtype=F64) + 1)).requires_grad_()  # the reference test's shifted inputs
    k = (0.5 * (torch.randn(shape, dtype=F64) - 1)).requires_grad_()
    v = torch.randn(shape, dtype=F64, requires_grad=True)
    weighting = Weighting("stickbreaking", attend_current, remainder)
    y = attend(q, k, v, weighting=weighting)
    want = reference(q, k, v, attend_current=attend_current, remainder=remainder)
    torch.testing.assert_close(y, want, rtol=1e-10, atol=1e-10)
    for g, r in zip(torch.autograd.grad(y.sum(), (q, k, v)), torch.autograd.grad(want.sum(), (q, k, v)), strict=True):
        torch.testing.assert_close(g, r, rtol=1e-9, atol=1e-9)


def test_the_first_token_outputs_its_own_value_and_weights_never_exceed_the_stick():
    torch.manual_seed(1)
    q, k, v = (torch.randn(1, 2, 40, 8, dtype=F64) for _ in range(3))
    y = attend(q, k, v, weighting=Weighting("stickbreaking"))
    torch.testing.assert_close(y[:, :, 0], v[:, :, 0], rtol=0, atol=0)
    dropped = attend(q, k, v, weighting=Weighting("stickbreaking", remainder="drop"))
    torch.testing.assert_close(dropped[:, :, 0], torch.zeros_like(v[:, :, 0]), rtol=0, atol=0)
    ones = attend(q, k, torch.ones_like(v), weighting=Weighting("stickbreaking", remainder="drop"))
    assert (ones <= 1 + 1e-12).all() and (ones >= 0).all()  # sum_j A_ij is a share of one stick


def test_a_window_bounds_the_stick_and_a_float32_model_stays_close():
    torch.manual_seed(2)
    q, k, v = (torch.randn(1, 2, 64, 8, dtype=F64) for _ in range(3))
    windowed = attend(q, k, v, weighting=Weighting("stickbreaking"), window=4)
    full = attend(q, k, v, weighting=Weighting("stickbreaking"))
    assert (windowed - full).abs().max() > 1e-3
    torch.testing.assert_close(windowed[:, :, :4], full[:, :, :4], rtol=1e-12, atol=1e-12)  # inside the window
    low = attend(q.float(), k.float(), v.float(), weighting=Weighting("stickbreaking"))
    torch.testing.assert_close(low.to(F64), full, rtol=1e-5, atol=1e-5)


def test_in_a_model_and_refusing_what_it_cannot_do():
    torch.manual_seed(0)
    model = GPT(
        GPTConfig.from_preset("tiny", pe="stickbreaking", pe_options={"stickbreaking": {"attend_current": True}})
    )
    assert model.config.layer_codes == ("Z",) * 4 and model.blocks[0].attn.pe.weighting.attend_current
    idx = torch.randint(0, 256, (2, 33))
    _, loss = model(idx[:, :-1], idx[:, 1:])
    loss.backward()
    with pytest.raises(ValueError, match="no sinks"):
        CausalSelfAttention(16, 2, pe=StickBreaking(), sinks=True)(torch.randn(1, 4, 16))
    with pytest.raises(ValueError, match="blockwise"):
        CausalSelfAttention(16, 2, pe=StickBreaking(), backend="sdpa")(torch.randn(1, 4, 16))
    with pytest.raises(ValueError, match="remainder"):
        StickBreaking(remainder="sink")


def test_sinks_are_refused_when_the_layer_is_configured():
    with pytest.raises(ValueError, match="sinks=True.* do not combine with pe='stickbreaking'"):
        GPTConfig.from_preset("tiny", pe="stickbreaking", attention_options={"sinks": True})
    with pytest.raises(ValueError, match="no softmax to put them in"):
        LayerSpec(attention=CausalSelfAttention.Config(sinks=True), pe="stickbreaking")

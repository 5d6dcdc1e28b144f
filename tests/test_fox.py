"""FoX (posenc.encodings.fox): forgetting attention against a float64 transcription of
flash-linear-attention's ``naive_forgetting_attn`` (fla/ops/forgetting_attn/naive.py: scores
q.k * scale + G_i - G_j with G the cumulative sum of the log forget gates, causal softmax), values
and the gradients that reach the gates; ALiBi as its constant-gate special case; FoX with RoPE;
and the model-level properties (cached decoding, packing) that every variant gets in
tests/test_model.py and tests/test_packing.py.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given
from hypothesis import strategies as st

from posenc import GPT, CausalSelfAttention, GPTConfig
from posenc.encodings import ENCODINGS
from posenc.encodings.base import ModelDims
from posenc.encodings.fox import ForgetGate, ForgetGateRoPE

F64 = torch.float64


def naive_forgetting_attn(q, k, v, g, scale):
    """fla's reference, transcribed: q (B, T, HQ, D), k, v (B, T, H, D), g (B, T, HQ) log forget
    gates -> (B, T, HQ, D), in float64."""
    B, T, HQ, D = q.shape
    G = HQ // k.shape[2]
    k, v = (t.repeat_interleave(G, dim=2) for t in (k, v))
    gc = g.to(F64).cumsum(1)  # (B, T, HQ)
    scores = torch.einsum("bqhd,bkhd->bhqk", q.to(F64), k.to(F64)) * scale
    scores = scores + gc.transpose(1, 2)[..., :, None] - gc.transpose(1, 2)[..., None, :]
    scores = scores.masked_fill(~torch.ones(T, T, dtype=torch.bool).tril(), float("-inf"))
    return torch.einsum("bhqk,bkhd->bqhd", scores.softmax(-1), v.to(F64))


@pytest.mark.parametrize("dtype, tol", [(F64, 1e-10), (torch.float32, 1e-4)])
@pytest.mark.parametrize("n_kv_head", [4, 2])
def test_attention_matches_the_naive_reference_values_and_gradients(n_kv_head, dtype, tol):
    """In float64 to 1e-10; in float32 (the gates' cumulative sums run over 200 tokens in float32)
    to 1e-4."""
    torch.manual_seed(0)
    C, nh, T = 32, 4, 200  # several query and key blocks of the kernel
    attn = CausalSelfAttention(C, nh, pe=ForgetGate(C, nh), n_kv_head=n_kv_head, bias=False).to(dtype)
    with torch.no_grad():
        attn.pe.gate.weight.normal_(std=0.5)  # gates away from their start, so the decay matters
        attn.pe.gate.bias.uniform_(0.0, 3.0)
    x = torch.randn(2, T, C, dtype=dtype, requires_grad=True)
    y = attn(x)
    hs = C // nh
    q, k, v = attn.c_attn(x).split((C, n_kv_head * hs, n_kv_head * hs), dim=-1)
    q, k, v = (t.unflatten(-1, (-1, hs)) for t in (q, k, v))  # (B, T, heads, hs)
    g = F.logsigmoid(attn.pe.gate(x))  # (B, T, nh)
    want = attn.c_proj(naive_forgetting_attn(q, k, v, g, hs**-0.5).flatten(2).to(dtype))
    torch.testing.assert_close(y, want, rtol=tol, atol=tol)
    params = [x, attn.pe.gate.weight, attn.pe.gate.bias, attn.c_attn.weight]
    for got, ref in zip(torch.autograd.grad(y.sum(), params), torch.autograd.grad(want.sum(), params), strict=True):
        torch.testing.assert_close(got, ref, rtol=tol, atol=tol)


@given(bias=st.floats(-3.0, 6.0), T=st.integers(1, 40), offset=st.integers(0, 500))
def test_a_constant_gate_is_alibi_with_slope_minus_log_f(bias, T, offset):
    enc = ForgetGate(8, 2)
    with torch.no_grad():
        enc.gate.weight.zero_()
        enc.gate.bias.fill_(bias)
    x = torch.randn(1, T, 8)
    features = enc.token_features(x)
    pos = torch.arange(T) + offset
    got = enc.score_bias(pos, pos, features, features)[0]  # (nh, T, T)
    slope = -F.logsigmoid(torch.tensor(bias))
    want = -slope * (pos[:, None] - pos[None, :]).float()
    torch.testing.assert_close(got, want.expand(2, -1, -1), rtol=1e-4, atol=1e-4)


def test_features_continue_across_cached_chunks():
    enc = ForgetGate(8, 2)
    x = torch.randn(1, 9, 8)
    whole = enc.token_features(x)
    first = enc.token_features(x[:, :4])
    torch.testing.assert_close(torch.cat([first, enc.token_features(x[:, 4:], first)], dim=2), whole)


def test_the_gate_starts_as_the_papers_code_and_follows_its_weight_decay():
    torch.manual_seed(0)
    model = GPT(GPTConfig.from_preset("cpu-small", pe="fox"))
    gate = model.blocks[0].attn.pe.gate
    assert gate.bias.abs().sum() == 0 and 0.015 < gate.weight.std() < 0.025  # N(0, 0.02), zero bias
    decayed = {id(p) for p in model.configure_optimizers(0.1, 1e-3).param_groups[0]["params"]}
    assert id(gate.weight) in decayed and id(gate.bias) not in decayed


def test_fox_with_rope_rotates_and_gates():
    code, cls = ENCODINGS["fox_rope"]
    enc = cls.build(ModelDims(n_embd=32, n_head=4, block_size=16), base=500.0)
    assert (code, enc.where, enc.head_dim, enc.base) == ("H", "scores", 8, 500.0)
    torch.manual_seed(1)
    rope_attn = CausalSelfAttention(32, 4, pe=enc, bias=False).double().eval()
    plain = CausalSelfAttention(32, 4, pe=ForgetGate(32, 4), bias=False).double().eval()
    plain.load_state_dict(rope_attn.state_dict())
    x = torch.randn(1, 12, 32, dtype=F64)
    with torch.no_grad():
        assert (rope_attn(x) - plain(x)).abs().max() > 1e-6  # the rotation is applied too
        cache = rope_attn.new_cache()
        steps = torch.cat([rope_attn(x[:, i : i + 1], cache=cache) for i in range(12)], dim=1)
        torch.testing.assert_close(steps, rope_attn(x), rtol=0, atol=1e-10)
    with pytest.raises(ValueError, match="rotary_dim"):
        ForgetGateRoPE.Config(rotary_dim=64).check(ModelDims(n_embd=32, n_head=4, block_size=16))


def test_in_a_gpt_with_mla_the_gates_read_the_layer_input():
    torch.manual_seed(0)
    config = GPTConfig.from_preset("tiny", pe="fox", attention="mla", kv_lora_rank=16)
    model = GPT(config).double().eval()
    idx = torch.randint(0, 256, (2, 10))
    with torch.no_grad():
        cache = model.new_cache()
        steps = torch.cat([model(idx[:, i : i + 1], cache=cache)[0] for i in range(10)], dim=1)
        torch.testing.assert_close(steps, model(idx)[0], rtol=0, atol=1e-9)
    assert math.isfinite(model(idx)[0].sum().item())


def test_the_rope_fields_set_fox_ropes_rotation():
    sizes = dict(n_layer=2, n_head=2, n_embd=32, block_size=64, vocab_size=50)
    scaling = {"rope_type": "linear", "factor": 2.0}
    config = GPTConfig(
        **sizes, pe="fox_rope", rope_base=5e5, rope_layout="interleaved", rotary_dim=8, rope_scaling=scaling
    )
    pe = config.layers[0].pe
    assert (pe.base, pe.layout, pe.rotary_dim, pe.scaling["factor"]) == (5e5, "interleaved", 8, 2.0)
    with pytest.raises(ValueError, match=r"pe_options\['fox_rope'\] sets \['base'\]: use the fields rope_base"):
        GPTConfig(**sizes, pe="fox_rope", pe_options={"fox_rope": {"base": 3.0}})

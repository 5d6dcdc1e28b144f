"""CoPE (posenc.encodings.cope) against a float64 transcription of the paper's code
(facebookresearch/RAM, ``projects/cope/src/cope/context_position.py``, ``ContextPosSelfAttn.forward``
with its defaults: gates from the attention's keys, scores divided by sqrt(d) after the position
logits are added), values and gradients of q, k, v and the position vectors; positions counted
within a window or a document; and, as for every variant, cached decoding and packing in
tests/test_model.py and tests/test_packing.py."""

from __future__ import annotations

import math

import pytest
import torch

from posenc import GPT, CausalSelfAttention, GPTConfig
from posenc.encodings.base import ModelDims
from posenc.encodings.cope import ContextualPosition

F64 = torch.float64


def reference_forward(query, key, val, pos_emb, npos):
    """ContextPosSelfAttn.forward, float64: query, key, val (B, L, H) with a causal attn_mask."""
    B, L, H = key.size()
    attn_mask = torch.ones(L, L, dtype=F64).tril()[None]  # 1 = visible
    gate_logits = torch.bmm(query, key.transpose(-1, -2))
    gates = torch.sigmoid(gate_logits / math.sqrt(H)) * attn_mask
    positions = gates.flip(-1).cumsum(dim=-1).flip(-1).clamp(max=npos - 1)
    pos_logits_fixed = torch.matmul(query, pos_emb)  # B x L x npos
    positions_ceil, positions_floor = positions.ceil().long(), positions.floor().long()
    pos_logits_ceil = pos_logits_fixed.gather(-1, positions_ceil)
    pos_logits_floor = pos_logits_fixed.gather(-1, positions_floor)
    pos_ceil_weight = positions - positions_floor
    pos_logits = pos_logits_ceil * pos_ceil_weight + pos_logits_floor * (1 - pos_ceil_weight)
    attn_logits = (gate_logits + pos_logits) / math.sqrt(H) + attn_mask.log()
    return torch.bmm(torch.softmax(attn_logits, dim=-1), val)


@pytest.mark.parametrize("npos", [None, 9])  # 9: counts past it are clamped, as the reference does
def test_attention_matches_the_papers_code_values_and_gradients(npos):
    torch.manual_seed(0)
    C, nh, T = 32, 4, 200
    hs = C // nh
    enc = ContextualPosition.build(ModelDims(n_embd=C, n_head=nh, block_size=T), npos=npos)
    attn = CausalSelfAttention(C, nh, pe=enc, bias=False).double()
    with torch.no_grad():
        enc.pos_emb.normal_(std=1.0)  # learned-looking position vectors (they start at zero)
    x = torch.randn(2, T, C, dtype=F64, requires_grad=True)
    y = attn(x)
    q, k, v = (t.unflatten(-1, (nh, hs)).transpose(1, 2).reshape(2 * nh, T, hs) for t in attn.c_attn(x).split(C, -1))
    out = reference_forward(q, k, v, enc.pos_emb[None], enc.npos).view(2, nh, T, hs).transpose(1, 2).reshape(2, T, C)
    want = attn.c_proj(out)
    torch.testing.assert_close(y, want, rtol=1e-10, atol=1e-10)
    params = [x, enc.pos_emb, attn.c_attn.weight]
    for got, ref in zip(torch.autograd.grad(y.sum(), params), torch.autograd.grad(want.sum(), params), strict=True):
        torch.testing.assert_close(got, ref, rtol=1e-9, atol=1e-9)


def test_it_starts_as_nope_and_its_table_is_the_references():
    torch.manual_seed(0)
    model = GPT(GPTConfig.from_preset("tiny", pe="cope"))
    enc = model.blocks[0].attn.pe
    assert enc.npos == 33 and enc.pos_emb.shape == (16, 33) and enc.pos_emb.abs().sum() == 0
    torch.manual_seed(0)
    nope = GPT(GPTConfig.from_preset("tiny", pe="nope"))
    nope.load_state_dict({k: v for k, v in model.state_dict().items() if "pos_emb" not in k})
    idx = torch.randint(0, 256, (1, 20))
    with torch.no_grad():
        torch.testing.assert_close(model(idx)[0], nope(idx)[0], rtol=1e-6, atol=1e-6)
    decayed = {id(p) for p in model.configure_optimizers(0.1, 1e-3).param_groups[0]["params"]}
    assert id(enc.pos_emb) in decayed


def test_counts_stop_at_a_window():
    enc = ContextualPosition(4, 50)
    with torch.no_grad():
        enc.pos_emb.normal_()
    q = torch.randn(1, 1, 1, 4, dtype=F64)
    scores = torch.full((1, 1, 1, 10), 20.0, dtype=F64)  # every gate open: counts 10, 9, ..., 1
    visible = torch.ones(1, 10, dtype=torch.bool)
    full = enc.content_bias(q, scores, visible, 1.0)
    visible[:, :6] = False  # a window of the last 4 keys: counts 4, 3, 2, 1
    windowed = enc.content_bias(q, scores, visible, 1.0)
    torch.testing.assert_close(windowed[..., 6:], full[..., 6:], rtol=1e-6, atol=1e-6)
    logits = q[0, 0, 0] @ enc.pos_emb.to(F64)
    torch.testing.assert_close(full[0, 0, 0, :], logits[torch.arange(10, 0, -1)], rtol=1e-6, atol=1e-6)

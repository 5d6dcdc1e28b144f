"""The encoding protocol and the one attention kernel.

- A content-dependent score bias, through the ``token_features`` hook (FoX's forget gates, whose
  own golden test against its reference is tests/test_fox.py): the layer against the formula
  written out over the whole sequence, values and the gradients that reach the gates, cached
  decoding against the full forward (the cache keeps the features), and packed documents.
- The kernel's per-layer logit softcap (Gemma 2) and per-head sinks (gpt-oss), against dense float64
  references, through the kernel and through a model.
- The FlexAttention path, reachable as an attention config's ``backend``.
- Attention and the model ask an encoding only what the protocol declares: no ``getattr`` probe.
"""

from __future__ import annotations

import math
import re
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor

from posenc import GPT, CausalSelfAttention, GPTConfig
from posenc.attention.kernel import attend
from posenc.encodings.base import PositionalEncoding
from posenc.encodings.fox import ForgetGate

F64 = torch.float64
SRC = Path(__file__).resolve().parent.parent / "src" / "posenc"


def reference(attn: CausalSelfAttention, x: Tensor) -> Tensor:
    """softmax(QK^T / sqrt(d) + F_i - F_j + causal mask) V in float64, from the layer's own weights."""
    B, T, C = x.shape
    nh, hs = attn.n_head, attn.head_dim
    q, k, v = (t.view(B, T, nh, hs).transpose(1, 2) for t in attn.c_attn(x).to(F64).split(C, dim=2))
    cum = torch.cumsum(F.logsigmoid(attn.pe.gate(x).to(F64)), dim=1).transpose(1, 2)  # (B, nh, T)
    scores = q @ k.transpose(-1, -2) / math.sqrt(hs) + cum[..., :, None] - cum[..., None, :]
    scores = scores.masked_fill(~torch.ones(T, T, dtype=torch.bool).tril(), float("-inf"))
    y = (scores.softmax(-1) @ v).transpose(1, 2).reshape(B, T, C)
    return attn.c_proj(y.to(x.dtype))


def gated_layer(seed: int = 0) -> CausalSelfAttention:
    torch.manual_seed(seed)
    attn = CausalSelfAttention(16, 2, pe=ForgetGate(16, 2), bias=False)
    with torch.no_grad():
        attn.pe.gate.bias.fill_(2.0)  # gates near 0.9: a bias that matters without drowning the scores
    return attn


# float32: the gates' gradient sums a row of the scores' gradient, which sums to zero, over
# hundreds of keys: its rounding depends on the summation order (about 1e-4 of it, either path).
@pytest.mark.parametrize(("dtype", "tol"), [(F64, 1e-10), (torch.float32, 1e-4)])
def test_a_content_dependent_bias_matches_its_formula_and_trains_its_gates(dtype, tol):
    attn = gated_layer().to(dtype)
    x = torch.randn(2, 300, 16, requires_grad=True, dtype=dtype)  # 300 tokens: several query and key blocks
    y, want = attn(x), reference(attn, x)
    torch.testing.assert_close(y, want, rtol=tol / 10, atol=tol / 10)
    grads = torch.autograd.grad(y.sum(), [x, attn.pe.gate.weight, attn.pe.gate.bias])
    refs = torch.autograd.grad(want.sum(), [x, attn.pe.gate.weight, attn.pe.gate.bias])
    for g, r in zip(grads, refs, strict=True):
        torch.testing.assert_close(g, r, rtol=tol, atol=tol)
    assert attn.pe.gate.weight.grad is None and grads[1].abs().sum() > 0  # the gates learn


def test_cached_decoding_keeps_the_features():
    attn = gated_layer(1).double()
    x = torch.randn(1, 11, 16, dtype=F64)
    cache = attn.new_cache()
    with torch.no_grad():
        steps = torch.cat([attn(x[:, :4], cache=cache), *(attn(x[:, i : i + 1], cache=cache) for i in range(4, 11))], 1)
        torch.testing.assert_close(steps, attn(x), rtol=0, atol=1e-10)
    assert cache.features.shape == (1, 2, 11, 1)


def test_a_packed_row_equals_its_documents_alone():
    attn = gated_layer(2).double()
    a, b = torch.randn(1, 5, 16, dtype=F64), torch.randn(1, 7, 16, dtype=F64)
    ids = torch.tensor([[0] * 5 + [1] * 7])
    with torch.no_grad():
        packed = attn(torch.cat([a, b], 1), segments=(ids, ids))
        torch.testing.assert_close(packed, torch.cat([attn(a), attn(b)], 1), rtol=0, atol=1e-10)


# -- softcap and sinks ---------------------------------------------------------------------------


def dense(q, k, v, *, softcap=None, sinks=None, window=None):
    """float64 causal attention with a logit softcap and per-head sinks in the denominator."""
    T = q.shape[-2]
    s = q.to(F64) @ k.to(F64).transpose(-1, -2) / math.sqrt(q.shape[-1])
    if softcap is not None:
        s = softcap * torch.tanh(s / softcap)
    i = torch.arange(T)
    allowed = (i[None, :] <= i[:, None]) & ((i[:, None] - i[None, :] < window) if window else True)
    s = s.masked_fill(~allowed, float("-inf"))
    if sinks is not None:  # gpt-oss: a column of sink logits, softmaxed with the scores, then dropped
        column = sinks.to(F64).view(1, -1, 1, 1).expand(*s.shape[:-1], 1)
        return torch.cat([s, column], -1).softmax(-1)[..., :-1] @ v.to(F64)
    return s.softmax(-1) @ v.to(F64)


@pytest.mark.parametrize("window", [None, 5])
@pytest.mark.parametrize("softcap, with_sinks", [(2.0, False), (None, True), (3.0, True)])
def test_softcap_and_sinks_match_their_dense_formulas(softcap, with_sinks, window):
    torch.manual_seed(0)
    q, k, v = (torch.randn(2, 3, 150, 8, requires_grad=True) for _ in range(3))
    sinks = torch.randn(3, requires_grad=True) if with_sinks else None
    y = attend(q, k, v, softcap=softcap, sinks=sinks, window=window)
    want = dense(q, k, v, softcap=softcap, sinks=sinks, window=window)
    torch.testing.assert_close(y.to(F64), want, rtol=1e-5, atol=1e-5)
    inputs = [q, k, v] + ([sinks] if with_sinks else [])
    for g, r in zip(torch.autograd.grad(y.sum(), inputs), torch.autograd.grad(want.sum(), inputs), strict=True):
        torch.testing.assert_close(g.to(F64), r.to(F64), rtol=1e-4, atol=1e-5)


def test_a_model_with_softcap_and_sinks_trains_and_decodes_with_its_cache():
    torch.manual_seed(0)
    config = GPTConfig.from_preset("tiny", pe="rope", attention_options={"softcap": 5.0, "sinks": True})
    model = GPT(config)
    assert all(b.attn.sinks is not None and b.attn.sinks.shape == (2,) for b in model.blocks)
    idx = torch.randint(0, 256, (2, 17))
    _, loss = model(idx[:, :-1], idx[:, 1:])
    loss.backward()
    assert model.blocks[0].attn.sinks.grad.abs().sum() > 0
    model = model.double().eval()
    with torch.no_grad():
        cache = model.new_cache()
        steps = torch.cat([model(idx[:, i : i + 1], cache=cache)[0] for i in range(17)], 1)
        torch.testing.assert_close(steps, model(idx)[0], rtol=0, atol=1e-10)


def test_the_flex_backend_is_an_option_of_the_attention_config():
    """FlexAttention (unfused on CPU: forward only here) gives the blockwise kernel's logits."""
    torch.manual_seed(0)
    auto = GPT(GPTConfig.from_preset("tiny", pe="alibi", sliding_window=6)).eval()
    flex_config = auto.config.map_layers(
        lambda i, layer: layer.replace(attention=layer.attention.replace(backend="flex"))
    )
    flex = GPT(flex_config).eval()
    flex.load_state_dict(auto.state_dict())
    idx = torch.randint(0, 256, (2, 32))
    with torch.no_grad():
        torch.testing.assert_close(flex(idx)[0], auto(idx)[0], rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="backend"):
        GPTConfig.from_preset("tiny", pe="rope", attention_options={"backend": "fused"})


# -- no probes -----------------------------------------------------------------------------------


def test_attention_and_the_model_ask_encodings_only_what_the_protocol_declares():
    """Every question to an encoding is a declared member of PositionalEncoding (with a neutral default)."""
    declared = {name for name in dir(PositionalEncoding) if not name.startswith("__")}
    sources = [*(SRC / "attention").glob("*.py"), SRC / "model.py", SRC / "block.py"]
    for path in sources:
        text = path.read_text()
        assert not re.search(r"getattr\((self\.)?pe\b", text), f"{path.name} probes an encoding with getattr"
        asked = set(re.findall(r"\b(?:self\.)?pe\.([a-z_]+)", text))
        assert asked <= declared, f"{path.name} asks encodings for {sorted(asked - declared)}, not in the protocol"


def test_an_encoding_that_cannot_pack_documents_refuses_them_by_name():
    class Unpackable(ForgetGate):  # e.g. a bias that mixes information across the whole row
        supports_segments = False

    attn = CausalSelfAttention(16, 2, pe=Unpackable(16, 2))
    ids = torch.zeros(1, 4, dtype=torch.long)
    with pytest.raises(ValueError, match="Unpackable does not support packed documents"):
        attn(torch.randn(1, 4, 16), segments=(ids, ids))
    attn(torch.randn(1, 4, 16))  # without documents it runs

"""Attention sinks (an option of the attention config, ``sinks=True``): one learned logit per head
in the softmax's denominator, as gpt-oss. Against Hugging Face's own gpt-oss attention function
(``transformers.models.gpt_oss.modeling_gpt_oss.eager_attention_forward``, the sink column
softmaxed with the scores and dropped), with grouped-query heads, with a sliding window and in a
KV-cache step; the ``rope_sinks`` and ``rnope_swa_sinks`` variants build them on every layer."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from posenc import GPT, CausalSelfAttention, GPTConfig
from posenc.encodings.rope import RotaryEmbedding

F64 = torch.float64


def hf_sink_attention(q, k, v, sinks, window=None):
    """HF gpt-oss's eager attention on q (B, nh, Tq, hs), k, v (B, nkv, Tk, hs); the queries are the
    last Tq keys. Its additive mask: causal, and a sliding window as gpt-oss's sliding layers."""
    from transformers.models.gpt_oss.modeling_gpt_oss import eager_attention_forward

    Tq, Tk = q.shape[2], k.shape[2]
    i = torch.arange(Tk - Tq, Tk)[:, None]
    j = torch.arange(Tk)[None, :]
    allowed = (j <= i) & ((i - j < window) if window else True)
    mask = torch.zeros(Tq, Tk, dtype=q.dtype).masked_fill(~allowed, float("-inf"))[None, None]
    module = SimpleNamespace(sinks=sinks, num_key_value_groups=q.shape[1] // k.shape[1], training=False)
    out, _ = eager_attention_forward(module, q, k, v, mask, scaling=q.shape[-1] ** -0.5)
    return out  # (B, Tq, nh, hs)


@pytest.mark.parametrize("window", [None, 5])
@pytest.mark.parametrize("n_kv_head", [4, 2])
def test_a_layer_with_sinks_matches_gpt_oss(n_kv_head, window):
    torch.manual_seed(0)
    C, nh, T = 32, 4, 150
    attn = CausalSelfAttention(C, nh, pe=RotaryEmbedding(8), n_kv_head=n_kv_head, window=window, sinks=True)
    attn = attn.double().eval()
    with torch.no_grad():
        attn.sinks.normal_(std=2.0)  # sinks that take a visible share of the attention
    x = torch.randn(2, T, C, dtype=F64)
    hs, kv = C // nh, n_kv_head * (C // nh)
    q, k, v = attn.c_attn(x).split((C, kv, kv), dim=-1)
    q, k, v = (t.unflatten(-1, (-1, hs)).transpose(1, 2) for t in (q, k, v))
    q, k = attn.pe.rotate(q, k)
    want = attn.c_proj(hf_sink_attention(q, k, v, attn.sinks, window).flatten(2))
    with torch.no_grad():
        torch.testing.assert_close(attn(x), want, rtol=0, atol=1e-12)
        cache = attn.new_cache()  # a KV-cache step: 140 tokens, then 10 one at a time
        steps = torch.cat(
            [attn(x[:, :140], cache=cache), *(attn(x[:, t : t + 1], cache=cache) for t in range(140, T))], 1
        )
        torch.testing.assert_close(steps, want, rtol=0, atol=1e-12)


def test_sinks_learn_and_the_variants_put_them_on_every_layer():
    for name, codes in (("rope_sinks", ("R",) * 4), ("rnope_swa_sinks", ("r", "r", "r", "N"))):
        torch.manual_seed(0)
        model = GPT(GPTConfig.from_preset("tiny", pe=name))
        assert model.config.layer_codes == codes
        assert all(b.attn.config.sinks and b.attn.sinks.shape == (2,) for b in model.blocks)
        assert 0.005 < torch.cat([b.attn.sinks for b in model.blocks]).std() < 0.05  # N(0, 0.02), as gpt-oss
        idx = torch.randint(0, 256, (2, 33))
        _, loss = model(idx[:, :-1], idx[:, 1:])
        loss.backward()
        assert all(b.attn.sinks.grad.abs().sum() > 0 for b in model.blocks)

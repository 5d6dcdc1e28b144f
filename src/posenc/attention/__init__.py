"""Attention variants and their shared pieces (SDPA dispatch, KV cache, QK-norm).

Registry: ``ATTENTIONS`` maps ``GPTConfig.attention`` to a class. Every class takes
``(n_embd, n_head, *, pe, qk_norm, window, dropout, bias, block_size)`` plus the ``GPTConfig``
fields it names in its ``config_fields``; ``posenc.build.build_attention`` passes exactly those.
Adding a variant: one file here, one line below, one test file.
"""

from torch import nn

from posenc.attention.core import CausalSelfAttention, KVCache, LayerKVCache, QKNorm, QKNormAttention, causal_attention
from posenc.attention.mla import MultiHeadLatentAttention

ATTENTIONS: dict[str, type[nn.Module]] = {
    "mha": CausalSelfAttention,
    "mla": MultiHeadLatentAttention,
}

__all__ = [
    "ATTENTIONS",
    "CausalSelfAttention",
    "KVCache",
    "LayerKVCache",
    "MultiHeadLatentAttention",
    "QKNorm",
    "QKNormAttention",
    "causal_attention",
]

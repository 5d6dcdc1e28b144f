"""Qwen3 (``qwen3``): a Llama with RMS QK-norm on each head of q and k before RoPE (one gain of
``head_dim`` for q, one for k, shared by the heads), a ``head_dim`` set apart from the width
(Qwen3-0.6B: 128 with 1024 / 16 heads), no biases, and sliding windows on the layers its
``layer_types`` mark when ``use_sliding_window`` is on."""

from __future__ import annotations

from torch import nn

from posenc.config import GPTConfig
from posenc.hf.common import Converted, llama_weights, qk_normed_weights
from posenc.hf.llama import common_llama_fields


def import_qwen3(model: nn.Module) -> Converted:
    c = model.config
    fields = common_llama_fields(c, "qwen3", own_head_dim=True)
    attention_bias = bool(getattr(c, "attention_bias", False))
    n = c.num_hidden_layers
    windowed = [bool(c.use_sliding_window) and kind == "sliding_attention" for kind in c.layer_types[:n]]
    fields |= dict(
        bias=False,
        qkv_bias=attention_bias,
        proj_bias=attention_bias,
        mlp_bias=False,
        qk_norm=True,
        qk_norm_type="rms",
        attention_options={"head_dim": c.head_dim, "qk_norm_eps": float(c.rms_norm_eps)},  # shared with q/k_norm
        layer_pe=("rope",),
        layer_window=tuple(c.sliding_window if w else None for w in windowed),
    )
    return GPTConfig(**fields), llama_weights(model.state_dict(), n, attention=qk_normed_weights)

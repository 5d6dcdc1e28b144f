"""Qwen3 (``qwen3``): a Llama with RMS QK-norm on each head of q and k before RoPE (one gain of
``head_dim`` for q, one for k, shared by the heads), a ``head_dim`` set apart from the width
(Qwen3-0.6B: 128 with 1024 / 16 heads), no biases, and sliding windows on the layers its
``layer_types`` mark when ``use_sliding_window`` is on."""

from __future__ import annotations

from typing import Any

from torch import nn

from posenc.config import GPTConfig
from posenc.hf.common import Converted, llama_weights, qk_normed_weights
from posenc.hf.llama import llama_fields, llama_parts
from posenc.hf.writers import transformers_module


def import_qwen3(model: nn.Module) -> Converted:
    c = model.config
    parts = llama_parts(c, "qwen3", own_head_dim=True)
    attention_bias = bool(getattr(c, "attention_bias", False))
    attention = parts.attention.replace(
        qkv_bias=attention_bias,
        proj_bias=attention_bias,
        qk_norm="rms",
        qk_norm_eps=float(c.rms_norm_eps),  # shared with q/k_norm
        head_dim=c.head_dim,
    )
    n = c.num_hidden_layers
    windowed = [bool(c.use_sliding_window) and kind == "sliding_attention" for kind in c.layer_types[:n]]
    layers = [parts.layer(attention=attention, window=c.sliding_window if w else None) for w in windowed]
    return parts.config(layers), llama_weights(model.state_dict(), n, attention=qk_normed_weights)


def qwen3_config(config: GPTConfig) -> Any:
    """The Qwen3Config that expresses ``config`` (a Llama with per-head RMS QK-norm)."""
    return transformers_module().Qwen3Config(**llama_fields(config, "qwen3"), use_sliding_window=False)

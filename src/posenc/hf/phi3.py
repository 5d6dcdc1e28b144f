"""Phi-3 (``phi3``): a Llama with fused projections -- ``qkv_proj`` rows [q; k; v] and
``gate_up_proj`` rows [gate; up], split here into Llama's names --, LongRoPE (``rope_parameters``
with short and long factors, and the top-level ``original_max_position_embeddings``) or any other
schedule, and an optional sliding window on every layer. LongRoPE switches to its long factors when
a sequence grows past the original context; the GPT then recomputes the cached tokens (the
stale-cache bug Hugging Face fixed in its PR 33129), so cached decoding equals a fresh forward."""

from __future__ import annotations

from torch import nn

from posenc.hf.common import Converted, llama_weights, mha_weights
from posenc.hf.llama import llama_parts


def import_phi3(model: nn.Module) -> Converted:
    c = model.config
    parts = llama_parts(c, "phi3")
    layer = parts.layer(window=getattr(c, "sliding_window", None))
    head_dim = c.hidden_size // c.num_attention_heads
    q, kv = c.num_attention_heads * head_dim, (c.num_key_value_heads or c.num_attention_heads) * head_dim
    sd = dict(model.state_dict())
    for i in range(c.num_hidden_layers):
        at, mlp = f"model.layers.{i}.self_attn", f"model.layers.{i}.mlp"
        qkv = sd.pop(f"{at}.qkv_proj.weight")
        sd[f"{at}.q_proj.weight"], sd[f"{at}.k_proj.weight"], sd[f"{at}.v_proj.weight"] = qkv.split((q, kv, kv))
        gate, up = sd.pop(f"{mlp}.gate_up_proj.weight").chunk(2)
        sd[f"{mlp}.gate_proj.weight"], sd[f"{mlp}.up_proj.weight"] = gate, up
    return parts.config([layer]), llama_weights(sd, c.num_hidden_layers, attention=mha_weights)


__all__ = ["import_phi3"]

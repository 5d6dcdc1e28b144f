"""OLMo 2 and OLMo 3 (``olmo2``, ``olmo3``): a Llama block whose norms come after each sublayer
instead of before it (``x + norm(attn(x))``, ``x + norm(mlp(x))``: ``Block.Config(pre_norm=False,
post_norm=True)``), and an RMS QK-norm over the whole q and k projections before the head split
(``qk_norm="rms_full"``). OLMo 3 adds sliding windows on the layers its ``layer_types`` mark (3
sliding : 1 full) and RoPE parameters per layer type. The QK-norm shares the block norms'
``rms_norm_eps``."""

from __future__ import annotations

from torch import nn

from posenc.hf.common import Converted, per_layer_type, post_norm_weights, rope_config
from posenc.hf.llama import llama_parts


def import_olmo(model: nn.Module) -> Converted:
    c = model.config
    attention_bias = bool(getattr(c, "attention_bias", False))
    n = c.num_hidden_layers
    types = list(getattr(c, "layer_types", None) or ["full_attention"] * n)[:n]
    nested = per_layer_type(c)  # each layer type its own RoPE parameters
    parts = llama_parts(c, c.model_type, rope=not nested)
    attention = parts.attention.replace(
        qkv_bias=attention_bias, proj_bias=attention_bias, qk_norm="rms_full", qk_norm_eps=float(c.rms_norm_eps)
    )
    layers = [
        parts.layer(
            attention=attention,
            pe=rope_config(c, layer_type=kind) if nested else parts.rope,
            window=c.sliding_window if kind == "sliding_attention" else None,
            pre_norm=False,
            post_norm=True,
        )
        for kind in types
    ]
    return parts.config(layers), post_norm_weights(model.state_dict(), n)

"""SmolLM3 (``smollm3``): a Llama whose ``no_rope_layers`` turn RoPE off on some layers (NoPE every
4th layer by default), with an optional sliding window on those NoPE layers (``use_sliding_window``
with ``layer_types``). Each layer becomes a posenc ``rope`` or ``nope`` layer, with its window."""

from __future__ import annotations

from typing import Any

from torch import nn

from posenc.config import GPTConfig
from posenc.encodings.nope import NoPE
from posenc.hf.common import Converted, llama_weights, mha_weights
from posenc.hf.llama import llama_fields, llama_parts
from posenc.hf.writers import transformers_module, uniform_layer


def import_smollm3(model: nn.Module) -> Converted:
    c = model.config
    parts = llama_parts(c, "smollm3")
    attention_bias = bool(getattr(c, "attention_bias", False))
    attention = parts.attention.replace(qkv_bias=attention_bias, proj_bias=attention_bias)
    mlp = parts.mlp.replace(bias=bool(getattr(c, "mlp_bias", False)))
    n = c.num_hidden_layers
    uses_rope = list(c.no_rope_layers)[:n]  # 1: the layer rotates q and k, 0: NoPE
    windowed = [
        bool(c.use_sliding_window) and c.sliding_window is not None and kind == "sliding_attention"
        for kind in c.layer_types[:n]
    ]
    layers = [
        parts.layer(
            attention=attention,
            mlp=mlp,
            pe=parts.rope if use else NoPE.Config(),
            window=c.sliding_window if w else None,
        )
        for use, w in zip(uses_rope, windowed)
    ]
    return parts.config(layers), llama_weights(model.state_dict(), n, attention=mha_weights)


def smollm3_config(config: GPTConfig) -> Any:
    """The SmolLM3Config that expresses ``config`` (a Llama with RoPE or NoPE per layer)."""
    layer = uniform_layer(config, "smollm3")
    rope = [1 if spec.encoding == "rope" else 0 for spec in config.layers]
    return transformers_module().SmolLM3Config(
        **llama_fields(config, "smollm3"),
        mlp_bias=layer.block.mlp.bias,
        no_rope_layers=rope,
        use_sliding_window=False,
    )

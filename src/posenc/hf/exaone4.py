"""EXAONE 4 (``exaone4``): sliding-window RoPE layers beside global NoPE layers (``layer_types``;
every layer RoPE without a window when ``sliding_window`` is None), per-head RMS QK-norm before
RoPE (Qwen3's), and OLMo 2's placement of the norms after each sublayer, in a Llama block. The
QK-norm shares the block norms' ``rms_norm_eps``."""

from __future__ import annotations

from torch import nn

from posenc.encodings.nope import NoPE
from posenc.hf.common import Converted, post_norm_weights
from posenc.hf.llama import llama_parts


def import_exaone4(model: nn.Module) -> Converted:
    c = model.config
    n = c.num_hidden_layers
    sliding = [c.sliding_window is not None and kind == "sliding_attention" for kind in c.layer_types[:n]]
    rope = [c.sliding_window is None or s for s in sliding]
    parts = llama_parts(c, "exaone4")
    attention = parts.attention.replace(
        qkv_bias=False, proj_bias=False, qk_norm="rms", qk_norm_eps=float(c.rms_norm_eps)
    )
    layers = [
        parts.layer(
            attention=attention,
            pe=parts.rope if r else NoPE.Config(),
            window=c.sliding_window if s else None,
            pre_norm=False,
            post_norm=True,
        )
        for r, s in zip(rope, sliding)
    ]
    return parts.config(layers), post_norm_weights(model.state_dict(), n)

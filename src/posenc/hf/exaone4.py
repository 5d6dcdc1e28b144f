"""EXAONE 4 (``exaone4``): sliding-window RoPE layers beside global NoPE layers (``layer_types``;
every layer RoPE without a window when ``sliding_window`` is None), per-head RMS QK-norm before
RoPE (Qwen3's), and OLMo 2's placement of the norms after each sublayer, in a Llama block. The
QK-norm shares the block norms' ``rms_norm_eps``."""

from __future__ import annotations

from torch import nn

from posenc.config import GPTConfig
from posenc.hf.common import Converted, post_norm_weights
from posenc.hf.llama import common_llama_fields


def import_exaone4(model: nn.Module) -> Converted:
    c = model.config
    n = c.num_hidden_layers
    sliding = [c.sliding_window is not None and kind == "sliding_attention" for kind in c.layer_types[:n]]
    rope = [c.sliding_window is None or s for s in sliding]
    fields = common_llama_fields(c, "exaone4") | dict(
        bias=False,
        qkv_bias=False,
        proj_bias=False,
        mlp_bias=False,
        qk_norm=True,
        qk_norm_type="rms",
        attention_options={"qk_norm_eps": float(c.rms_norm_eps)},
        layer_pe=tuple("rope" if r else "nope" for r in rope),
        layer_window=tuple(c.sliding_window if s else None for s in sliding),
    )
    config = GPTConfig(**fields).map_layers(
        lambda i, spec: spec.replace(block=spec.block.replace(pre_norm=False, post_norm=True))
    )
    return config, post_norm_weights(model.state_dict(), n)

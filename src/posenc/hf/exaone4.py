"""EXAONE 4 (``exaone4``): sliding-window RoPE layers beside global NoPE layers (``layer_types``;
every layer RoPE without a window when ``sliding_window`` is None), per-head RMS QK-norm before
RoPE (Qwen3's), and OLMo 2's placement of the norms after each sublayer, in a Llama block. posenc's
QK-norm eps is 1e-6; another ``rms_norm_eps`` is refused."""

from __future__ import annotations

from torch import nn

from posenc.config import GPTConfig
from posenc.hf.common import Converted, refuse
from posenc.hf.llama import common_llama_fields
from posenc.hf.olmo import _olmo_weights
from posenc.hf.qwen3 import QK_NORM_EPS


def import_exaone4(model: nn.Module) -> Converted:
    c = model.config
    if c.rms_norm_eps != QK_NORM_EPS:
        refuse("exaone4", {"rms_norm_eps": c.rms_norm_eps})
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
        layer_pe=tuple("rope" if r else "nope" for r in rope),
        layer_window=tuple(c.sliding_window if s else None for s in sliding),
    )
    config = GPTConfig(**fields).map_layers(
        lambda i, spec: spec.replace(block=spec.block.replace(pre_norm=False, post_norm=True))
    )
    return config, _olmo_weights(model.state_dict(), n)

"""Llama 4 text models (``llama4_text``, dense: ``moe_layers=[]``): iRoPE -- RoPE in the interleaved
(complex) layout on three layers of every four and NoPE on the fourth (``no_rope_layers``) --,
chunked attention on the RoPE layers (``attention_chunk_size``), a weightless RMS QK-norm after RoPE
on the RoPE layers only (RoPE's ``norm_after_eps``), and on the NoPE layers a query temperature
that grows with the position (NoPE's ``temperature_floor`` / ``temperature_scale``: Hugging Face's
``floor_scale`` / ``attn_scale``). Layers with mixture-of-experts MLPs are refused."""

from __future__ import annotations

from torch import Tensor, nn

from posenc.encodings.nope import NoPE
from posenc.hf.common import Converted, llama_weights, mha_weights, refuse, rope_spec
from posenc.hf.llama import llama_parts


def import_llama4_text(model: nn.Module) -> Converted:
    c = model.config
    if c.moe_layers:
        raise ValueError(
            f"from_hf: this llama4_text config has mixture-of-experts layers {list(c.moe_layers)}; "
            "posenc builds dense MLPs only (a dense Llama 4 has moe_layers=[])"
        )
    n = c.num_hidden_layers
    rope = [bool(r) for r in c.no_rope_layers[:n]]  # 1: the layer uses RoPE (Hugging Face's naming)
    chunked = [kind == "chunked_attention" for kind in c.layer_types[:n]]
    if any(chunked) and c.attention_chunk_size is None:
        refuse("llama4_text", {"layer_types": c.layer_types, "attention_chunk_size": None})
    attention_bias = bool(getattr(c, "attention_bias", False))
    parts = llama_parts(c, "llama4_text", own_head_dim=True)
    attention = parts.attention.replace(qkv_bias=attention_bias, proj_bias=attention_bias, head_dim=c.head_dim)
    mlp = parts.mlp.replace(hidden=c.intermediate_size_mlp)
    rope_pe = rope_spec(
        c,
        c.max_position_embeddings,
        layout="interleaved",
        norm_after_eps=float(c.rms_norm_eps) if c.use_qk_norm else None,
    )
    nope = NoPE.Config(temperature_floor=int(c.floor_scale), temperature_scale=float(c.attn_scale))
    layers = [
        parts.layer(
            attention=attention,
            mlp=mlp,
            pe=rope_pe if r else nope if c.attn_temperature_tuning else NoPE.Config(),
            chunk=c.attention_chunk_size if ch else None,
        )
        for r, ch in zip(rope, chunked)
    ]
    return parts.config(layers), llama_weights(_renamed(model.state_dict(), n), n, attention=mha_weights)


def _renamed(sd: dict[str, Tensor], n_layer: int) -> dict[str, Tensor]:
    """``feed_forward`` under Llama's name ``mlp``."""
    return {k.replace(".feed_forward.", ".mlp."): v for k, v in sd.items()}

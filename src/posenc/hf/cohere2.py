"""Cohere 2 (``cohere2``, Command R7B / Command A): sliding-window RoPE layers beside global NoPE
layers (``layer_types``; the RNoPE-SWA row of posenc's own extension study), RoPE in the
interleaved layout, parallel blocks reading one LayerNorm without bias (``ln_2`` a copy of
``ln_1``), SwiGLU MLPs, GQA, and logits multiplied by ``logit_scale``."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from posenc.attention import CausalSelfAttention
from posenc.block import MLP, NormConfig
from posenc.config import GPTConfig
from posenc.encodings.nope import NoPE
from posenc.hf.common import Converted, layer_spec, refuse, rope_spec
from posenc.hf.writers import Unfit, multi_head, no_token_ids, rope_parameters, transformers_module, uniform_layer
from posenc.layer import HeadConfig


def import_cohere2(model: nn.Module) -> Converted:
    c = model.config
    if c.hidden_act != "silu":
        refuse("cohere2", {"hidden_act": c.hidden_act})
    n = c.num_hidden_layers
    sliding = [kind == "sliding_attention" for kind in c.layer_types[:n]]
    attention_bias = bool(getattr(c, "attention_bias", False))
    norm = NormConfig(kind="layernorm", eps=c.layer_norm_eps, bias=False)
    mlp = MLP.Config(kind="swiglu", hidden=c.intermediate_size, bias=False)
    attention = CausalSelfAttention.Config(
        n_kv_head=c.num_key_value_heads or c.num_attention_heads, qkv_bias=attention_bias, proj_bias=attention_bias
    )
    rope = rope_spec(c, c.max_position_embeddings, layout="interleaved")
    layers = [
        layer_spec(
            norm,
            mlp,
            attention=attention,
            pe=rope if s else NoPE.Config(),
            window=c.sliding_window if s else None,
            parallel=True,
        )
        for s in sliding
    ]
    config = GPTConfig(
        vocab_size=c.vocab_size,
        n_embd=c.hidden_size,
        n_layer=n,
        n_head=c.num_attention_heads,
        block_size=c.max_position_embeddings,
        head=HeadConfig(norm=norm, tie_embeddings=bool(c.tie_word_embeddings), logit_scale=float(c.logit_scale)),
        layers=tuple(layers),
    )
    sd = model.state_dict()
    ours = {
        "wte.weight": sd["model.embed_tokens.weight"],
        "ln_f.weight": sd["model.norm.weight"],
        "lm_head.weight": sd.get("lm_head.weight", sd["model.embed_tokens.weight"]),
    }
    for i in range(n):
        src, dst = f"model.layers.{i}", f"blocks.{i}"
        ours[f"{dst}.ln_1.weight"] = ours[f"{dst}.ln_2.weight"] = sd[f"{src}.input_layernorm.weight"]
        for p in ("weight", "bias"):
            if f"{src}.self_attn.q_proj.{p}" in sd:
                ours[f"{dst}.attn.c_attn.{p}"] = torch.cat([sd[f"{src}.self_attn.{x}_proj.{p}"] for x in "qkv"])
            if f"{src}.self_attn.o_proj.{p}" in sd:
                ours[f"{dst}.attn.c_proj.{p}"] = sd[f"{src}.self_attn.o_proj.{p}"]
        for theirs, mine in (("gate_proj", "w_gate"), ("up_proj", "w_up"), ("down_proj", "c_proj")):
            ours[f"{dst}.mlp.{mine}.weight"] = sd[f"{src}.mlp.{theirs}.weight"]
    return config, ours


def cohere2_config(config: GPTConfig) -> Any:
    """The Cohere2Config that expresses ``config`` (windowed RoPE layers beside global NoPE ones)."""
    layer = uniform_layer(config, "cohere2")
    attention = multi_head(layer, "cohere2")
    windows = {spec.window for spec in config.layers if spec.encoding == "rope"}
    if len(windows) != 1 or None in windows:
        raise Unfit(
            f"its RoPE layers have windows {sorted(windows, key=str)}; cohere2 has one window on every RoPE layer"
        )
    return transformers_module().Cohere2Config(
        vocab_size=config.vocab_size,
        hidden_size=config.n_embd,
        intermediate_size=layer.block.mlp.width(config.n_embd),
        num_hidden_layers=config.n_layer,
        num_attention_heads=config.n_head,
        num_key_value_heads=attention.n_kv_head or config.n_head,
        max_position_embeddings=config.block_size,
        layer_norm_eps=layer.block.norm.eps,
        attention_bias=attention.qkv_bias,
        tie_word_embeddings=config.head.tie_embeddings,
        logit_scale=config.head.logit_scale,
        sliding_window=windows.pop(),
        layer_types=["sliding_attention" if spec.encoding == "rope" else "full_attention" for spec in config.layers],
        rope_parameters=rope_parameters(config, "cohere2", layout="interleaved"),
        **no_token_ids(),
    )

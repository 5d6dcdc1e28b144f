"""MPT (``mpt``): ALiBi (``alibi_bias_max`` 8; another value is refused, since Hugging Face's model
ignores it and MosaicML's reads it), LayerNorms without bias, no
biases on any projection (``no_bias``), exact-GELU MLPs of 4x width, one fused qkv projection in
[q, k, v] order, tied output embeddings. Options that change the logits and that posenc does not
build -- ``clip_qkv``, ``qk_ln``, another ``softmax_scale``, multi-query attention, prefix-LM
masks, ``logit_scale`` -- are refused by name."""

from __future__ import annotations

import math
from typing import Any

from torch import nn

from posenc.attention import CausalSelfAttention
from posenc.block import MLP, NormConfig
from posenc.config import GPTConfig
from posenc.encodings.alibi import ALiBi
from posenc.hf.common import Converted, layer_spec, refuse
from posenc.hf.writers import no_token_ids, transformers_module, uniform_layer
from posenc.layer import HeadConfig


def import_mpt(model: nn.Module) -> Converted:
    c = model.config
    a = c.attn_config
    default_scale = 1 / math.sqrt(c.d_model / c.n_heads)
    checks = {
        "attn_config.clip_qkv": (a.clip_qkv, None),
        "attn_config.qk_ln": (a.qk_ln, False),
        "attn_config.prefix_lm": (a.prefix_lm, False),
        "attn_config.attn_type": (a.attn_type, "multihead_attention"),
        "attn_config.alibi": (a.alibi, True),
        "no_bias": (c.no_bias, True),
        "logit_scale": (c.logit_scale, None),
        "expansion_ratio": (c.expansion_ratio, 4),
    }
    differ = {name: value for name, (value, ok) in checks.items() if value != ok}
    if a.softmax_scale is not None and not math.isclose(a.softmax_scale, default_scale):
        differ["attn_config.softmax_scale"] = a.softmax_scale
    if a.alibi_bias_max != 8:
        # Hugging Face's MptModel builds its slopes with 8 whatever the config says (MosaicML's own
        # code reads it): the two disagree, and posenc will not pick one silently
        differ["attn_config.alibi_bias_max"] = a.alibi_bias_max
    refuse("mpt", differ)
    norm = NormConfig(kind="layernorm", eps=c.layer_norm_epsilon, bias=False)
    attention = CausalSelfAttention.Config(qkv_bias=False, proj_bias=False)
    config = GPTConfig(
        vocab_size=c.vocab_size,
        n_embd=c.d_model,
        n_layer=c.n_layers,
        n_head=c.n_heads,
        block_size=c.max_seq_len,
        head=HeadConfig(norm=norm, tie_embeddings=bool(c.tie_word_embeddings)),
        layers=(layer_spec(norm, MLP.Config(kind="gelu_exact", bias=False), attention=attention, pe=ALiBi.Config()),),
    )
    sd = {k.removeprefix("transformer."): v for k, v in model.state_dict().items()}
    ours = {
        "wte.weight": sd["wte.weight"],
        "ln_f.weight": sd["norm_f.weight"],
        "lm_head.weight": sd.get("lm_head.weight", sd["wte.weight"]),
    }
    renames = {
        "norm_1": "ln_1",
        "norm_2": "ln_2",
        "attn.Wqkv": "attn.c_attn",
        "attn.out_proj": "attn.c_proj",
        "ffn.up_proj": "mlp.c_fc",
        "ffn.down_proj": "mlp.c_proj",
    }
    for i in range(c.n_layers):
        for theirs, mine in renames.items():
            ours[f"blocks.{i}.{mine}.weight"] = sd[f"blocks.{i}.{theirs}.weight"]
    return config, ours


def mpt_config(config: GPTConfig) -> Any:
    """The MptConfig that expresses ``config`` (ALiBi, no biases, exact GELU)."""
    layer = uniform_layer(config, "mpt")
    return transformers_module().MptConfig(
        vocab_size=config.vocab_size,
        d_model=config.n_embd,
        n_layers=config.n_layer,
        n_heads=config.n_head,
        max_seq_len=config.block_size,
        layer_norm_epsilon=layer.block.norm.eps,
        tie_word_embeddings=config.head.tie_embeddings,
        **no_token_ids(),
    )

"""BLOOM (``bloom``): ALiBi, a LayerNorm on the word embeddings (``EmbeddingConfig(norm=...)``),
pre-norm blocks of LayerNorm and tanh-GELU MLPs with biases everywhere, one fused qkv projection
grouped by head (regrouped as GPT-NeoX's), tied output embeddings. Hugging Face adds
``slope * key_position`` to each score; within a causal softmax row that is ALiBi's
``-slope * (i - j)`` up to a constant per row, which the softmax removes."""

from __future__ import annotations

from typing import Any

from torch import nn

from posenc.block import MLP, NormConfig
from posenc.config import GPTConfig
from posenc.encodings.alibi import ALiBi
from posenc.hf.common import Converted, layer_spec, per_head_qkv, refuse
from posenc.hf.writers import no_token_ids, transformers_module, uniform_layer
from posenc.layer import EmbeddingConfig, HeadConfig


def import_bloom(model: nn.Module) -> Converted:
    c = model.config
    differ = {
        k: getattr(c, k)
        for k, ok in (("apply_residual_connection_post_layernorm", False), ("slow_but_exact", False))
        if getattr(c, k, ok) != ok
    }
    if getattr(c, "pretraining_tp", 1) != 1 and c.slow_but_exact:
        differ["pretraining_tp"] = c.pretraining_tp
    refuse("bloom", differ)
    norm = NormConfig(kind="layernorm", eps=c.layer_norm_epsilon)
    config = GPTConfig(
        vocab_size=c.vocab_size,
        n_embd=c.hidden_size,
        n_layer=c.n_layer,
        n_head=c.n_head,
        block_size=getattr(c, "seq_length", None) or 2048,  # ALiBi has no table: a nominal context
        embedding=EmbeddingConfig(norm=norm),
        head=HeadConfig(norm=norm, tie_embeddings=bool(c.tie_word_embeddings)),
        layers=(layer_spec(norm, MLP.Config(kind="gelu"), pe=ALiBi.Config()),),
    )
    sd = {k.removeprefix("transformer."): v for k, v in model.state_dict().items()}
    ours = {
        "wte.weight": sd["word_embeddings.weight"],
        "ln_emb.weight": sd["word_embeddings_layernorm.weight"],
        "ln_emb.bias": sd["word_embeddings_layernorm.bias"],
        "ln_f.weight": sd["ln_f.weight"],
        "ln_f.bias": sd["ln_f.bias"],
        "lm_head.weight": sd.get("lm_head.weight", sd["word_embeddings.weight"]),
    }
    renames = {
        "input_layernorm": "ln_1",
        "post_attention_layernorm": "ln_2",
        "self_attention.dense": "attn.c_proj",
        "mlp.dense_h_to_4h": "mlp.c_fc",
        "mlp.dense_4h_to_h": "mlp.c_proj",
    }
    for i in range(c.n_layer):
        src, dst = f"h.{i}", f"blocks.{i}"
        for p in ("weight", "bias"):
            ours[f"{dst}.attn.c_attn.{p}"] = per_head_qkv(sd[f"{src}.self_attention.query_key_value.{p}"], c.n_head)
            for theirs, mine in renames.items():
                ours[f"{dst}.{mine}.{p}"] = sd[f"{src}.{theirs}.{p}"]
    return config, ours


def bloom_config(config: GPTConfig) -> Any:
    """The BloomConfig that expresses ``config`` (ALiBi, an embedding LayerNorm, the GPT-2 block)."""
    layer = uniform_layer(config, "bloom")
    return transformers_module().BloomConfig(
        vocab_size=config.vocab_size,
        hidden_size=config.n_embd,
        n_layer=config.n_layer,
        n_head=config.n_head,
        layer_norm_epsilon=layer.block.norm.eps,
        tie_word_embeddings=config.head.tie_embeddings,
        seq_length=config.block_size,
        **no_token_ids(),
    )

"""GPT-NeoX / Pythia (``gpt_neox``): LayerNorm, GELU (exact by default; tanh for GPT-NeoX-20B), biases on every projection
unless ``attention_bias`` is off, partial rotary in the half layout (``partial_rotary_factor``,
Pythia: 0.25), a parallel residual (``x + attn(ln_1 x) + mlp(ln_2 x)``) unless
``use_parallel_residual`` is off, and one fused qkv projection whose output is grouped by head
(``[q_h, k_h, v_h]`` for each head h), which is regrouped here into posenc's ``[q, k, v]``."""

from __future__ import annotations

from typing import Any

from torch import Tensor, nn

from posenc.attention import CausalSelfAttention
from posenc.block import MLP, NormConfig
from posenc.config import GPTConfig
from posenc.hf.common import Converted, layer_spec, per_head_qkv, refuse, rope_spec
from posenc.hf.writers import Unfit, multi_head, no_token_ids, rope_parameters, transformers_module, uniform_layer
from posenc.layer import HeadConfig

#: Hugging Face's activation names and posenc's MLP kinds (``gelu_fast``, GPT-NeoX-20B's: the tanh GELU)
ACTIVATIONS: dict[str, str] = {
    "gelu": "gelu_exact",
    "gelu_new": "gelu",
    "gelu_pytorch_tanh": "gelu",
    "gelu_fast": "gelu",
}


def import_gpt_neox(model: nn.Module) -> Converted:
    c = model.config
    if c.hidden_act not in ACTIVATIONS:
        refuse("gpt_neox", {"hidden_act": c.hidden_act})
    attention_bias = bool(getattr(c, "attention_bias", True))
    norm = NormConfig(kind="layernorm", eps=c.layer_norm_eps)
    layer = layer_spec(
        norm,
        MLP.Config(kind=ACTIVATIONS[c.hidden_act], hidden=c.intermediate_size),
        attention=CausalSelfAttention.Config(qkv_bias=attention_bias, proj_bias=attention_bias),
        pe=rope_spec(c, c.max_position_embeddings),
        parallel=bool(c.use_parallel_residual),
    )
    config = GPTConfig(
        vocab_size=c.vocab_size,
        n_embd=c.hidden_size,
        n_layer=c.num_hidden_layers,
        n_head=c.num_attention_heads,
        block_size=c.max_position_embeddings,
        head=HeadConfig(norm=norm, tie_embeddings=bool(c.tie_word_embeddings)),
        layers=(layer,),
    )
    return config, neox_weights(model.state_dict(), c.num_hidden_layers, c.num_attention_heads)


def neox_weights(sd: dict[str, Tensor], n_layer: int, n_head: int) -> dict[str, Tensor]:
    """posenc names for a GPT-NeoX state dict."""
    sd = {k.removeprefix("gpt_neox."): v for k, v in sd.items()}
    ours = {
        "wte.weight": sd["embed_in.weight"],
        "ln_f.weight": sd["final_layer_norm.weight"],
        "ln_f.bias": sd["final_layer_norm.bias"],
        "lm_head.weight": sd.get("lm_head.weight", sd.get("embed_out.weight", sd["embed_in.weight"])),
    }
    renames = {
        "input_layernorm": "ln_1",
        "post_attention_layernorm": "ln_2",
        "attention.dense": "attn.c_proj",
        "mlp.dense_h_to_4h": "mlp.c_fc",
        "mlp.dense_4h_to_h": "mlp.c_proj",
    }
    for i in range(n_layer):
        src, dst = f"layers.{i}", f"blocks.{i}"
        for theirs, mine in renames.items():
            for p in ("weight", "bias"):
                if f"{src}.{theirs}.{p}" in sd:
                    ours[f"{dst}.{mine}.{p}"] = sd[f"{src}.{theirs}.{p}"]
        for p in ("weight", "bias"):
            if f"{src}.attention.query_key_value.{p}" in sd:
                ours[f"{dst}.attn.c_attn.{p}"] = per_head_qkv(sd[f"{src}.attention.query_key_value.{p}"], n_head)
    return ours


def gpt_neox_config(config: GPTConfig) -> Any:
    """The GPTNeoXConfig that expresses ``config`` (RoPE in the half layout, LayerNorm, a GELU MLP)."""
    layer = uniform_layer(config, "gpt_neox")
    acts = {"gelu": "gelu_pytorch_tanh", "gelu_exact": "gelu"}
    if layer.block.mlp.kind not in acts:
        raise Unfit(f"its MLP is {layer.block.mlp.kind!r}; gpt_neox has a GELU MLP")
    return transformers_module().GPTNeoXConfig(
        vocab_size=config.vocab_size,
        hidden_size=config.n_embd,
        num_hidden_layers=config.n_layer,
        num_attention_heads=config.n_head,
        intermediate_size=layer.block.mlp.width(config.n_embd),
        hidden_act=acts[layer.block.mlp.kind],
        max_position_embeddings=config.block_size,
        layer_norm_eps=layer.block.norm.eps,
        use_parallel_residual=layer.block.parallel,
        attention_bias=multi_head(layer, "gpt_neox").qkv_bias,
        tie_word_embeddings=config.head.tie_embeddings,
        rope_parameters=rope_parameters(config, "gpt_neox"),
        **no_token_ids(),
    )

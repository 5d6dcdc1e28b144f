"""GPT-J (``gptj``) and Phi (``phi``): parallel blocks with one LayerNorm read by both attention and
the MLP (``x + attn(ln(x)) + mlp(ln(x))``: posenc's parallel block with ``ln_2`` a copy of
``ln_1``), partial rotary -- GPT-J's interleaved pairs over ``rotary_dim`` channels at base 10000,
Phi's half layout over ``partial_rotary_factor`` of them --, tanh GELU MLPs with biases, and a bias
on the output head. GPT-J has no biases on q/k/v/out; Phi has them, GQA, and an optional QK
LayerNorm (``qk_layernorm``), which posenc does not build and refuses."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from posenc.attention import CausalSelfAttention
from posenc.block import MLP, NormConfig
from posenc.config import GPTConfig, LayerSpec
from posenc.encodings.rope import RotaryEmbedding
from posenc.hf.common import Converted, Sizes, layer_spec, refuse, rope_spec
from posenc.layer import HeadConfig

TANH_GELU = ("gelu_new", "gelu_pytorch_tanh", "gelu_fast")


def import_gptj(model: nn.Module) -> Converted:
    c = model.config
    if c.activation_function not in TANH_GELU:
        refuse("gptj", {"activation_function": c.activation_function})
    head_dim = c.n_embd // c.n_head
    rope = RotaryEmbedding.Config(
        base=10000.0, layout="interleaved", rotary_dim=c.rotary_dim if c.rotary_dim is not None else head_dim
    )
    attention = CausalSelfAttention.Config(qkv_bias=False, proj_bias=False)
    layer = parallel_layer(c.layer_norm_epsilon, c.n_inner or 4 * c.n_embd, attention, rope)
    sizes = Sizes(
        vocab_size=c.vocab_size, n_embd=c.n_embd, n_layer=c.n_layer, n_head=c.n_head, block_size=c.n_positions
    )
    config = parallel_config(sizes, c.layer_norm_epsilon, bool(c.tie_word_embeddings), layer)
    sd = {k.removeprefix("transformer."): v for k, v in model.state_dict().items()}
    renames = {"attn.out_proj": "attn.c_proj", "mlp.fc_in": "mlp.c_fc", "mlp.fc_out": "mlp.c_proj"}
    weights = _parallel_weights(sd, c.n_layer, "h", "ln_1", ("attn.q_proj", "attn.k_proj", "attn.v_proj"), renames)
    weights |= {"wte.weight": sd["wte.weight"], "ln_f.weight": sd["ln_f.weight"], "ln_f.bias": sd["ln_f.bias"]}
    return config, weights | _head(sd)


def import_phi(model: nn.Module) -> Converted:
    c = model.config
    if c.hidden_act not in TANH_GELU:
        refuse("phi", {"hidden_act": c.hidden_act})
    if c.qk_layernorm:
        refuse("phi", {"qk_layernorm": True, "why": "posenc's QK-norms are RMS and L2, not LayerNorm"})
    n_kv_head = c.num_key_value_heads or c.num_attention_heads
    attention = CausalSelfAttention.Config(n_kv_head=n_kv_head)
    rope = rope_spec(c, c.max_position_embeddings)
    layer = parallel_layer(c.layer_norm_eps, c.intermediate_size, attention, rope)
    sizes = Sizes(
        vocab_size=c.vocab_size,
        n_embd=c.hidden_size,
        n_layer=c.num_hidden_layers,
        n_head=c.num_attention_heads,
        block_size=c.max_position_embeddings,
    )
    config = parallel_config(sizes, c.layer_norm_eps, bool(c.tie_word_embeddings), layer)
    sd = {k.removeprefix("model."): v for k, v in model.state_dict().items()}
    qkv = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj")
    renames = {"self_attn.dense": "attn.c_proj", "mlp.fc1": "mlp.c_fc", "mlp.fc2": "mlp.c_proj"}
    weights = _parallel_weights(sd, c.num_hidden_layers, "layers", "input_layernorm", qkv, renames)
    norm = {"ln_f.weight": sd["final_layernorm.weight"], "ln_f.bias": sd["final_layernorm.bias"]}
    weights |= {"wte.weight": sd["embed_tokens.weight"]} | norm
    return config, weights | _head(sd)


def parallel_layer(
    eps: float, hidden: int, attention: CausalSelfAttention.Config, rope: RotaryEmbedding.Config
) -> LayerSpec:
    """A parallel block with one LayerNorm and a tanh-GELU MLP, biases on both."""
    return layer_spec(
        NormConfig(kind="layernorm", eps=eps), MLP.Config(hidden=hidden), attention=attention, pe=rope, parallel=True
    )


def parallel_config(sizes: Sizes, eps: float, tie: bool, layer: LayerSpec) -> GPTConfig:
    """Every layer ``layer``, the final LayerNorm, and a bias on the output head."""
    head = HeadConfig(norm=NormConfig(kind="layernorm", eps=eps), tie_embeddings=tie, bias=True)
    return sizes.config((layer,), head)


def _head(sd: dict[str, Tensor]) -> dict[str, Tensor]:
    return {"lm_head.weight": sd["lm_head.weight"], "lm_head.bias": sd["lm_head.bias"]}


def _parallel_weights(
    sd: dict[str, Tensor], n_layer: int, layers: str, norm: str, qkv: tuple[str, str, str], renames: dict[str, str]
) -> dict[str, Tensor]:
    """One layer's weights: the one norm as ln_1 and ln_2, q/k/v fused, the rest renamed."""
    ours: dict[str, Tensor] = {}
    for i in range(n_layer):
        src, dst = f"{layers}.{i}", f"blocks.{i}"
        for p in ("weight", "bias"):
            ours[f"{dst}.ln_1.{p}"] = ours[f"{dst}.ln_2.{p}"] = sd[f"{src}.{norm}.{p}"]
            if f"{src}.{qkv[0]}.{p}" in sd:
                ours[f"{dst}.attn.c_attn.{p}"] = torch.cat([sd[f"{src}.{name}.{p}"] for name in qkv])
            for theirs, mine in renames.items():
                if f"{src}.{theirs}.{p}" in sd:
                    ours[f"{dst}.{mine}.{p}"] = sd[f"{src}.{theirs}.{p}"]
    return ours

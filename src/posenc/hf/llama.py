"""The Llama family (``llama``, ``qwen2``, ``mistral``): RMSNorm, SwiGLU, grouped-query attention,
RoPE with the config's ``rope_parameters`` / ``rope_scaling`` (through
:meth:`~posenc.encodings.rope.RotaryEmbedding.from_hf_config`), Qwen2's q/k/v biases, Mistral's
sliding window."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn

from posenc.config import GPTConfig
from posenc.encodings.rope import RotaryEmbedding
from posenc.hf.common import Converted, refuse


def _rope_fields(c: Any) -> dict[str, Any]:
    """GPTConfig's RoPE fields from a transformers config, through RotaryEmbedding.from_hf_config."""
    rope = RotaryEmbedding.from_hf_config(c)
    fields: dict[str, Any] = {"rope_base": rope.base, "rope_layout": "half"}
    scaling = {k: v for k, v in rope.scaling.items() if v is not None}
    if scaling.pop("partial_rotary_factor", None) is not None:
        # as rotary_dim, which outlives a later change of schedule (config.with_encoding("rope", scaling=...))
        fields["rotary_dim"] = rope.rotary_dim
    if scaling.get("rope_type") != "default":
        fields["rope_scaling"] = scaling
    if rope.position_axes > 1:  # M-RoPE
        mrope = {"mrope_section": rope.config.mrope_section, "mrope_interleaved": rope.config.mrope_interleaved}
        fields["pe_options"] = {"rope": mrope}
    return fields


def common_llama_fields(c: Any, model_type: str, own_head_dim: bool = False, rope: bool = True) -> dict[str, Any]:
    """GPTConfig's fields of a Llama-style config; ``own_head_dim``: the family sets ``head_dim``
    apart from hidden_size / num_attention_heads (Qwen3), which the importer then passes on;
    ``rope=False``: without the RoPE fields (a family with RoPE parameters per layer type sets
    each layer's own). ``pretraining_tp`` (SmolLM3-3B: 2) is ignored, as Hugging Face does outside
    BLOOM: it was the tensor-parallel degree of pretraining, which splits matmuls without changing them."""
    differ: dict[str, Any] = {}
    if getattr(c, "hidden_act", "silu") != "silu":
        differ["hidden_act"] = c.hidden_act
    head_dim = getattr(c, "head_dim", None)
    # DeepSeek's head_dim is its rotary width (qk_rope_head_dim); MLA sets its own head sizes
    own = own_head_dim or model_type == "deepseek_v3"
    if not own and head_dim is not None and head_dim != c.hidden_size // c.num_attention_heads:
        differ["head_dim"] = head_dim
    refuse(model_type, differ)
    return dict(
        vocab_size=c.vocab_size,
        n_embd=c.hidden_size,
        n_layer=c.num_hidden_layers,
        n_head=c.num_attention_heads,
        n_kv_head=getattr(c, "num_key_value_heads", None) or c.num_attention_heads,
        block_size=c.max_position_embeddings,
        norm="rmsnorm",
        norm_eps=c.rms_norm_eps,
        mlp="swiglu",
        intermediate_size=c.intermediate_size,
        tie_embeddings=bool(getattr(c, "tie_word_embeddings", False)),
        dropout=0.0,
        **(_rope_fields(c) if rope else {}),
    )


def import_llama(model: nn.Module) -> Converted:
    c = model.config
    model_type = c.model_type
    fields = common_llama_fields(c, model_type)
    attention_bias = bool(getattr(c, "attention_bias", False))
    fields |= dict(
        bias=False, qkv_bias=attention_bias, proj_bias=attention_bias, mlp_bias=bool(getattr(c, "mlp_bias", False))
    )
    if model_type == "qwen2":  # q/k/v biases, none elsewhere
        fields |= dict(qkv_bias=True, proj_bias=False, mlp_bias=False)
        if getattr(c, "use_sliding_window", False):
            refuse(model_type, {"use_sliding_window": True})
    window = getattr(c, "sliding_window", None) if model_type == "mistral" else None
    fields |= dict(layer_pe=("rope",), layer_window=(window,)) if window is not None else dict(pe="rope")
    sd = model.state_dict()
    return GPTConfig(**fields), llama_weights(sd, c.num_hidden_layers, attention=_mha_weights)


def _mha_weights(sd: dict[str, Tensor], src: str, dst: str) -> dict[str, Tensor]:
    out = {
        f"{dst}.c_attn.weight": torch.cat([sd[f"{src}.{p}_proj.weight"] for p in "qkv"]),
        f"{dst}.c_proj.weight": sd[f"{src}.o_proj.weight"],
    }
    if f"{src}.q_proj.bias" in sd:
        out[f"{dst}.c_attn.bias"] = torch.cat([sd[f"{src}.{p}_proj.bias"] for p in "qkv"])
    if f"{src}.o_proj.bias" in sd:
        out[f"{dst}.c_proj.bias"] = sd[f"{src}.o_proj.bias"]
    return out


def llama_weights(
    sd: dict[str, Tensor], n_layer: int, attention: Callable[[dict[str, Tensor], str, str], dict[str, Tensor]]
) -> dict[str, Tensor]:
    """posenc names for a Llama-style state dict (``model.layers.{i}...``); ``attention`` maps one layer's attention."""
    ours = {
        "wte.weight": sd["model.embed_tokens.weight"],
        "ln_f.weight": sd["model.norm.weight"],
        "lm_head.weight": sd.get("lm_head.weight", sd["model.embed_tokens.weight"]),
    }
    for i in range(n_layer):
        src, dst = f"model.layers.{i}", f"blocks.{i}"
        ours[f"{dst}.ln_1.weight"] = sd[f"{src}.input_layernorm.weight"]
        ours[f"{dst}.ln_2.weight"] = sd[f"{src}.post_attention_layernorm.weight"]
        ours |= attention(sd, f"{src}.self_attn", f"{dst}.attn")
        for theirs, mine in (("gate_proj", "w_gate"), ("up_proj", "w_up"), ("down_proj", "c_proj")):
            ours[f"{dst}.mlp.{mine}.weight"] = sd[f"{src}.mlp.{theirs}.weight"]
            if f"{src}.mlp.{theirs}.bias" in sd:
                ours[f"{dst}.mlp.{mine}.bias"] = sd[f"{src}.mlp.{theirs}.bias"]
    return ours

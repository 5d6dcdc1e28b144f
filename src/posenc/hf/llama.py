"""The Llama family (``llama``, ``qwen2``, ``mistral``): RMSNorm, SwiGLU, grouped-query attention,
RoPE with the config's ``rope_parameters`` / ``rope_scaling`` (read by
:func:`~posenc.hf.common.rope_config`), Qwen2's q/k/v biases, Mistral's
sliding window."""

from __future__ import annotations

from typing import Any

from torch import nn

from posenc.config import GPTConfig
from posenc.hf.common import Converted, llama_weights, mha_weights, refuse, rope_fields


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
        **(rope_fields(c) if rope else {}),
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
    return GPTConfig(**fields), llama_weights(sd, c.num_hidden_layers, attention=mha_weights)

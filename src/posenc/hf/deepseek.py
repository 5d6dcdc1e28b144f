"""DeepSeek-V3 with dense layers (``deepseek_v3``): multi-head latent attention with its decoupled
RoPE key; mixture-of-experts layers are refused. One attention layer alone: :func:`mla_from_hf_config`
builds it from a ``DeepseekV3Config`` (or V2, or a config.json dict) and
:func:`load_hf_attention_weights` loads a ``DeepseekV3Attention``'s weights into it, with the
renaming the whole-model import uses."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor, nn

from posenc.attention.mla import MultiHeadLatentAttention
from posenc.encodings.rope import RotaryEmbedding
from posenc.hf.common import Converted, llama_weights, refuse
from posenc.hf.llama import llama_parts

MLA_FIELDS = ("kv_lora_rank", "q_lora_rank", "qk_rope_head_dim", "qk_nope_head_dim", "v_head_dim")

#: Hugging Face ``DeepseekV3Attention`` parameter prefix -> posenc's MLA's, where they differ
HF_RENAMES = {"o_proj.": "c_proj."}


def import_deepseek_v3(model: nn.Module) -> Converted:
    c = model.config
    dense = getattr(c, "first_k_dense_replace", 0)
    if (getattr(c, "n_routed_experts", None) or 0) > 0 and dense < c.num_hidden_layers:
        refuse(
            "deepseek_v3",
            {
                "first_k_dense_replace": dense,
                "num_hidden_layers": c.num_hidden_layers,
                "n_routed_experts": c.n_routed_experts,
                "why": "layers past first_k_dense_replace are mixture-of-experts, which posenc does not build",
            },
        )
    attention_bias = bool(getattr(c, "attention_bias", False))
    parts = llama_parts(c, "deepseek_v3", bias=attention_bias)
    attention = MultiHeadLatentAttention.Config(
        **{name: getattr(c, name) for name in MLA_FIELDS},
        rope_interleave=bool(getattr(c, "rope_interleave", False)),
        bias=attention_bias,
    )
    config = parts.config([parts.layer(attention=attention, mlp=parts.mlp.replace(bias=False))])
    return config, llama_weights(model.state_dict(), c.num_hidden_layers, attention=mla_weights)


def hf_to_mla_name(name: str) -> str:
    """A ``DeepseekV3Attention`` parameter name (``o_proj.weight``, ...) as posenc's MLA names it."""
    for old, new in HF_RENAMES.items():
        if name.startswith(old):
            return new + name[len(old) :]
    return name


def mla_weights(sd: dict[str, Tensor], src: str, dst: str) -> dict[str, Tensor]:
    """One layer's attention weights under ``src`` as posenc's MLA's under ``dst``."""
    return {f"{dst}.{hf_to_mla_name(k[len(src) + 1 :])}": v for k, v in sd.items() if k.startswith(src + ".")}


def mla_from_hf_config(config: Any, **options: Any) -> MultiHeadLatentAttention:
    """An MLA layer shaped like a transformers ``DeepseekV3Config`` (or V2, or a config.json dict),
    with its RoPE built by :meth:`RotaryEmbedding.from_hf_config`; ``options`` override arguments."""
    get = config.get if isinstance(config, Mapping) else (lambda key, default=None: getattr(config, key, default))
    kwargs: dict[str, Any] = dict(
        bias=bool(get("attention_bias", False)),
        dropout=float(get("attention_dropout", 0.0) or 0.0),
        kv_lora_rank=get("kv_lora_rank"),
        q_lora_rank=get("q_lora_rank"),
        qk_rope_head_dim=get("qk_rope_head_dim"),
        qk_nope_head_dim=get("qk_nope_head_dim"),
        v_head_dim=get("v_head_dim"),
        rope_interleave=bool(get("rope_interleave", False)),
    )
    if "pe" not in options:
        rope_config = dict(config) if isinstance(config, Mapping) else config.to_dict()
        rope_config["head_dim"] = get("qk_rope_head_dim")  # DeepSeek's rotary acts on the decoupled part
        cache_len = min(get("max_position_embeddings") or 2048, 8192)  # longer positions are computed on the fly
        kwargs["pe"] = RotaryEmbedding.from_hf_config(rope_config, cache_len=cache_len)
    return MultiHeadLatentAttention(get("hidden_size"), get("num_attention_heads"), **(kwargs | options))


def load_hf_attention_weights(
    module: MultiHeadLatentAttention, hf_attn_state_dict: Mapping[str, Tensor], *, prefix: str = ""
) -> MultiHeadLatentAttention:
    """Copy a Hugging Face ``DeepseekV3Attention`` (or V2) state dict into ``module``, in place.

    Keys are the attention's own (``kv_b_proj.weight``, ...); with ``prefix`` (e.g.
    ``"model.layers.0.self_attn."``) only keys under it are read, so a whole model's state dict
    works. Every parameter of ``module`` must be present with its shape; otherwise ``ValueError``.
    The weights need no permutation for either ``rope_interleave``: it only changes how the rotary
    channels are read.
    """
    mapped = {hf_to_mla_name(k[len(prefix) :]): v for k, v in hf_attn_state_dict.items() if k.startswith(prefix)}
    own = dict(module.named_parameters())
    missing = sorted(set(own) - set(mapped))
    unexpected = sorted(set(mapped) - set(own))
    if missing or unexpected:
        raise ValueError(
            f"Hugging Face MLA weights do not match the module: missing {missing}, unexpected {unexpected} "
            f"(q_lora_rank={module.q_lora_rank}, bias={module.c_proj.bias is not None})"
        )
    for name, tensor in mapped.items():
        if tuple(tensor.shape) != tuple(own[name].shape):
            raise ValueError(
                f"{prefix}{name}: shape {tuple(tensor.shape)} does not fit the module's {tuple(own[name].shape)}"
            )
    with torch.no_grad():
        for name, tensor in mapped.items():
            own[name].copy_(tensor)
    return module

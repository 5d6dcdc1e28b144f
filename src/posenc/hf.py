"""Hugging Face causal LMs as posenc GPTs: :func:`convert` reads a model's config, builds the matching
``GPTConfig`` and renames its weights; ``GPT.from_hf(model)`` builds and loads that, reproducing
the logits.

Importers are keyed by the config's own ``model_type`` (data, not class names): ``gpt2``; ``llama``,
``qwen2``, ``mistral`` (one Llama-family importer: RMSNorm, SwiGLU, grouped-query attention, RoPE
with the config's ``rope_parameters`` / ``rope_scaling`` through
:meth:`~posenc.encodings.rope.RotaryEmbedding.from_hf_config`, Qwen2's q/k/v biases, Mistral's
sliding window); ``deepseek_v3`` (dense layers with multi-head latent attention). A config field
this architecture cannot reproduce is refused with a ``ValueError`` naming it -- never approximated.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import Tensor, nn

from posenc.config import GPTConfig
from posenc.encodings.rope import RotaryEmbedding

Converted = tuple[GPTConfig, dict[str, Tensor]]


def convert(model_or_state_dict: nn.Module | Mapping[str, Tensor], *, n_head: int | None = None) -> Converted:
    """(GPTConfig, posenc state dict) of a Hugging Face causal LM (or a bare GPT-2 state dict with
    ``n_head``); ``GPT.from_hf`` loads it into a model."""
    if not isinstance(model_or_state_dict, nn.Module):
        if n_head is None:
            raise ValueError("from_hf(state_dict) needs n_head=..., which weights alone do not determine")
        return _gpt2_from_state_dict(dict(model_or_state_dict), n_head)
    hf_config = model_or_state_dict.config
    model_type = getattr(hf_config, "model_type", None)
    if model_type not in IMPORTERS:
        raise ValueError(f"from_hf: config.model_type={model_type!r} is not supported; supported: {sorted(IMPORTERS)}")
    return IMPORTERS[model_type](model_or_state_dict)


def _refuse(model_type: str, differ: dict[str, Any]) -> None:
    if differ:
        raise ValueError(f"from_hf: this {model_type} config has fields posenc cannot reproduce: {differ}")


# -- GPT-2 -----------------------------------------------------------------------------------------


def _gpt2(model: nn.Module) -> Converted:
    c = model.config
    act = getattr(c, "activation_function", "gelu_new")
    if act not in ("gelu_new", "gelu_pytorch_tanh"):
        raise ValueError(f"from_hf supports GPT-2's tanh GELU, got activation_function={act!r}")
    # options that change the logits but that this architecture does not implement
    defaults = {"scale_attn_weights": True, "scale_attn_by_inverse_layer_idx": False, "layer_norm_epsilon": 1e-5}
    differ = {k: getattr(c, k) for k, v in defaults.items() if getattr(c, k, v) != v}
    if getattr(c, "n_inner", None) not in (None, 4 * c.n_embd):
        differ["n_inner"] = c.n_inner
    if differ:
        raise ValueError(f"from_hf supports GPT-2's default architecture; this config differs: {differ}")
    return _gpt2_from_state_dict(model.state_dict(), c.n_head)


def _gpt2_from_state_dict(sd: dict[str, Tensor], n_head: int) -> Converted:
    sd = {k.removeprefix("transformer."): v for k, v in sd.items()}
    missing = [k for k in ("wte.weight", "wpe.weight", "ln_f.weight") if k not in sd]
    if missing:
        raise ValueError(f"not a GPT-2 state dict: missing {missing}")
    vocab_size, n_embd = sd["wte.weight"].shape
    n_layer = 1 + max(int(k.split(".")[1]) for k in sd if k.startswith("h."))
    config = GPTConfig(
        block_size=sd["wpe.weight"].shape[0],
        vocab_size=vocab_size,
        n_layer=n_layer,
        n_head=n_head,
        n_embd=n_embd,
        bias=True,
        pe="absolute",
        dropout=0.0,
    )
    conv1d = ("attn.c_attn.weight", "attn.c_proj.weight", "mlp.c_fc.weight", "mlp.c_proj.weight")
    per_layer = (
        "ln_1.weight",
        "ln_1.bias",
        "ln_2.weight",
        "ln_2.bias",
        "attn.c_attn.bias",
        "attn.c_proj.bias",
        "mlp.c_fc.bias",
        "mlp.c_proj.bias",
        *conv1d,
    )
    ours = {k: sd[k] for k in ("wte.weight", "wpe.weight", "ln_f.weight", "ln_f.bias")}
    for i in range(n_layer):
        for name in per_layer:
            w = sd[f"h.{i}.{name}"]
            ours[f"blocks.{i}.{name}"] = w.t() if name in conv1d else w  # HF Conv1D stores (in, out)
    ours["lm_head.weight"] = ours["wte.weight"]
    return config, ours


# -- Llama family: Llama, Qwen2, Mistral --------------------------------------------------------------


def _rope_fields(c: Any) -> dict[str, Any]:
    """GPTConfig's RoPE fields from a transformers config, through RotaryEmbedding.from_hf_config."""
    rope = RotaryEmbedding.from_hf_config(c)
    fields: dict[str, Any] = {"rope_base": rope.base, "rope_layout": "half"}
    scaling = {k: v for k, v in rope.scaling.items() if v is not None}
    if scaling.get("rope_type") != "default" or "partial_rotary_factor" in scaling:
        fields["rope_scaling"] = scaling
    return fields


def _common_llama_fields(c: Any, model_type: str) -> dict[str, Any]:
    differ: dict[str, Any] = {}
    if getattr(c, "hidden_act", "silu") != "silu":
        differ["hidden_act"] = c.hidden_act
    head_dim = getattr(c, "head_dim", None)
    # DeepSeek's head_dim is its rotary width (qk_rope_head_dim); MLA sets its own head sizes
    if model_type != "deepseek_v3" and head_dim is not None and head_dim != c.hidden_size // c.num_attention_heads:
        differ["head_dim"] = head_dim
    if getattr(c, "pretraining_tp", 1) != 1:
        differ["pretraining_tp"] = c.pretraining_tp
    _refuse(model_type, differ)
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
        **_rope_fields(c),
    )


def _llama(model: nn.Module) -> Converted:
    c = model.config
    model_type = c.model_type
    fields = _common_llama_fields(c, model_type)
    attention_bias = bool(getattr(c, "attention_bias", False))
    fields |= dict(
        bias=False, qkv_bias=attention_bias, proj_bias=attention_bias, mlp_bias=bool(getattr(c, "mlp_bias", False))
    )
    if model_type == "qwen2":  # q/k/v biases, none elsewhere
        fields |= dict(qkv_bias=True, proj_bias=False, mlp_bias=False)
        if getattr(c, "use_sliding_window", False):
            _refuse(model_type, {"use_sliding_window": True})
    window = getattr(c, "sliding_window", None) if model_type == "mistral" else None
    fields |= dict(layer_pe=("rope",), layer_window=(window,)) if window is not None else dict(pe="rope")
    sd = model.state_dict()
    return GPTConfig(**fields), _llama_weights(sd, c.num_hidden_layers, attention=_mha_weights)


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


def _llama_weights(
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


# -- DeepSeek-V3: dense layers with multi-head latent attention ----------------------------------------

MLA_FIELDS = ("kv_lora_rank", "q_lora_rank", "qk_rope_head_dim", "qk_nope_head_dim", "v_head_dim")


def _deepseek_v3(model: nn.Module) -> Converted:
    c = model.config
    dense = getattr(c, "first_k_dense_replace", 0)
    if (getattr(c, "n_routed_experts", None) or 0) > 0 and dense < c.num_hidden_layers:
        _refuse(
            "deepseek_v3",
            {
                "first_k_dense_replace": dense,
                "num_hidden_layers": c.num_hidden_layers,
                "n_routed_experts": c.n_routed_experts,
                "why": "layers past first_k_dense_replace are MoE",
            },
        )
    fields = _common_llama_fields(c, "deepseek_v3") | {name: getattr(c, name) for name in MLA_FIELDS}
    attention_bias = bool(getattr(c, "attention_bias", False))
    fields |= dict(
        attention="mla",
        rope_interleave=bool(getattr(c, "rope_interleave", False)),
        bias=attention_bias,
        mlp_bias=False,
        pe="rope",
    )
    fields.pop("n_kv_head")  # MLA has one latent, not key/value heads
    return GPTConfig(**fields), _llama_weights(model.state_dict(), c.num_hidden_layers, attention=_mla_weights)


def _mla_weights(sd: dict[str, Tensor], src: str, dst: str) -> dict[str, Tensor]:
    """MLA keeps Hugging Face's submodule names, except the output projection (c_proj)."""
    out = {}
    for key, value in sd.items():
        if key.startswith(src + "."):
            name = key[len(src) + 1 :]
            out[f"{dst}.{'c_proj' + name[len('o_proj') :] if name.startswith('o_proj') else name}"] = value
    return out


IMPORTERS: dict[str, Callable[[nn.Module], Converted]] = {
    "gpt2": _gpt2,
    "llama": _llama,
    "qwen2": _llama,
    "mistral": _llama,
    "deepseek_v3": _deepseek_v3,
}

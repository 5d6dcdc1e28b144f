"""Gemma 2 and Gemma 3 (``gemma2``, ``gemma3_text``): RMSNorms that scale by ``1 + w`` (imported as
posenc gains ``w + 1``), token embeddings multiplied by sqrt(hidden_size) (``EmbeddingConfig.scale``),
norms before and after each sublayer (``Block.Config(post_norm=True)``), GeGLU MLPs (tanh GELU gate),
a softmax scale of ``query_pre_attn_scalar ** -0.5`` and a ``head_dim`` of their own, sliding windows
on the layers ``layer_types`` marks, RoPE per layer type (Gemma 3: local base 1e4, global 1e6 with its
own scaling), and output embeddings tied to the input ones unless ``tie_word_embeddings`` is off
(then the separate ``lm_head``). Gemma 2 soft-caps the attention logits and the final
logits; Gemma 3 has per-head RMS QK-norm (``1 + w`` too) instead. Bidirectional attention (Gemma 3's
``use_bidirectional_attention``) is refused. The QK-norm shares the block norms' ``rms_norm_eps``.
``gemma3`` (Gemma 3 with vision, ``Gemma3ForConditionalGeneration``) imports its text model."""

from __future__ import annotations

from typing import Any

from torch import Tensor, nn

from posenc.hf.common import Converted, llama_weights, mha_weights, per_layer_type, refuse, rope_config, text_name
from posenc.hf.llama import llama_parts
from posenc.layer import EmbeddingConfig

TANH_GELU = ("gelu_pytorch_tanh", "gelu_new")


def import_gemma(model: nn.Module) -> Converted:
    c = model.config
    return _gemma_text(c, model.state_dict(), tie=bool(c.tie_word_embeddings))


def import_gemma3(model: nn.Module) -> Converted:
    """The text model of ``Gemma3ForConditionalGeneration`` (``gemma3``: Gemma 3 4B/12B/27B), as the
    Qwen-VL text models are imported: the vision tower and its projector are left out, and the GPT
    reproduces the logits of the language model given its token ids. The outer config says whether
    the head is tied (where Hugging Face looks); its language model applies no final softcapping,
    so a text config that sets one is refused."""
    c = model.config
    text = c.text_config
    if getattr(text, "final_logit_softcapping", None) is not None:
        refuse("gemma3", {"text_config.final_logit_softcapping": text.final_logit_softcapping})
    sd = {text_name(k): v for k, v in model.state_dict().items() if k.startswith(("model.language_model.", "lm_head."))}
    return _gemma_text(text, sd, tie=bool(c.tie_word_embeddings))


def _gemma_text(c: Any, sd: dict[str, Tensor], tie: bool) -> Converted:
    """A Gemma 2 or 3 text config and its Llama-named state dict; ``tie``: the head is the embedding."""
    model_type = c.model_type
    gemma3 = model_type == "gemma3_text"
    act = getattr(c, "hidden_activation", None) or c.hidden_act
    differ: dict[str, Any] = {}
    if act not in TANH_GELU:
        differ["hidden_activation"] = act
    if getattr(c, "use_bidirectional_attention", False):
        differ["use_bidirectional_attention"] = True
    refuse(model_type, differ)
    n = c.num_hidden_layers
    types = list(c.layer_types)[:n]
    nested = per_layer_type(c)
    parts = llama_parts(c, model_type, own_head_dim=True, rope=not nested, act_checked=True)
    attention_bias = bool(getattr(c, "attention_bias", False))
    softcap = getattr(c, "attn_logit_softcapping", None)
    attention = parts.attention.replace(
        qkv_bias=attention_bias,
        proj_bias=attention_bias,
        head_dim=c.head_dim,
        softmax_scale=c.query_pre_attn_scalar**-0.5,
        softcap=None if softcap is None else float(softcap),
    )
    if gemma3:  # Gemma 3's q_norm/k_norm share the block norms' eps
        attention = attention.replace(qk_norm="rms", qk_norm_eps=float(c.rms_norm_eps))
    layers = [
        parts.layer(
            attention=attention,
            mlp=parts.mlp.replace(kind="geglu"),
            pe=rope_config(c, layer_type=kind) if nested else parts.rope,
            window=c.sliding_window if kind == "sliding_attention" else None,
            post_norm=True,
        )
        for kind in types
    ]
    final_softcap = getattr(c, "final_logit_softcapping", None)
    head = parts.head.replace(tie_embeddings=tie, softcap=None if final_softcap is None else float(final_softcap))
    config = parts.sizes.config(layers, head, EmbeddingConfig(scale=c.hidden_size**0.5))
    return config, _gemma_weights(sd, n, gemma3)


def _gemma_weights(sd: dict[str, Tensor], n_layer: int, qk_norm: bool) -> dict[str, Tensor]:
    """Llama's renaming plus the post-sublayer norms; every norm gain ``w`` becomes ``1 + w``."""
    sd = dict(sd)
    post = {}
    for i in range(n_layer):
        src = f"model.layers.{i}"
        post[f"blocks.{i}.post_attn_norm.weight"] = sd[f"{src}.post_attention_layernorm.weight"]
        post[f"blocks.{i}.post_mlp_norm.weight"] = sd[f"{src}.post_feedforward_layernorm.weight"]
        sd[f"{src}.post_attention_layernorm.weight"] = sd[f"{src}.pre_feedforward_layernorm.weight"]  # -> ln_2

    def attention(sd: dict[str, Tensor], src: str, dst: str) -> dict[str, Tensor]:
        out = mha_weights(sd, src, dst)
        if qk_norm:
            out[f"{dst}.qk_norm.q_norm.weight"] = sd[f"{src}.q_norm.weight"]
            out[f"{dst}.qk_norm.k_norm.weight"] = sd[f"{src}.k_norm.weight"]
        return out

    ours = llama_weights(sd, n_layer, attention=attention) | post
    gains = (".ln_1.weight", ".ln_2.weight", "_norm.weight", "ln_f.weight")
    return {k: (v.float() + 1.0).to(v.dtype) if k.endswith(gains) else v for k, v in ours.items()}


__all__ = ["import_gemma", "import_gemma3"]

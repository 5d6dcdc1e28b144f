"""The text models of Qwen2-VL, Qwen2.5-VL and Qwen3-VL (``qwen2_vl``, ``qwen2_5_vl``,
``qwen3_vl``: ``...ForConditionalGeneration``, not ``AutoModelForCausalLM`` models): a Qwen2 (q/k/v
biases) or Qwen3 (per-head QK-norm, no biases) decoder whose RoPE is M-RoPE -- ``mrope_section``
chunked, or interleaved for Qwen3-VL -- so the GPT takes (3, B, T) position ids. The vision tower
is not imported: the GPT reproduces the logits of the language model given its token ids and its
3-axis positions (images and videos enter Hugging Face's model as embeddings that replace
placeholder tokens, which posenc does not build)."""

from __future__ import annotations

from dataclasses import replace

from torch import nn

from posenc.hf.common import Converted, llama_weights, mha_weights, qk_normed_weights, refuse, text_name
from posenc.hf.llama import llama_parts


def import_qwen_vl(model: nn.Module) -> Converted:
    model_type = model.config.model_type
    c = model.config.text_config
    parts = llama_parts(c, model_type, own_head_dim=model_type == "qwen3_vl")
    if model_type == "qwen3_vl":
        bias = bool(getattr(c, "attention_bias", False))
        attention = parts.attention.replace(
            qkv_bias=bias, proj_bias=bias, qk_norm="rms", qk_norm_eps=float(c.rms_norm_eps), head_dim=c.head_dim
        )
        weights = qk_normed_weights
    else:  # Qwen2: q/k/v biases only
        if getattr(c, "use_sliding_window", False):
            refuse(model_type, {"text_config.use_sliding_window": True})
        attention, weights = parts.attention.replace(qkv_bias=True, proj_bias=False), mha_weights
    # the outer config says whether the head is tied: Hugging Face ties by it (a v4 text_config's flag is moved there)
    head = parts.head.replace(tie_embeddings=bool(model.config.tie_word_embeddings))
    config = replace(parts, head=head).config([parts.layer(attention=attention)])
    sd = {text_name(k): v for k, v in model.state_dict().items() if not k.startswith(("model.visual.", "visual."))}
    return config, llama_weights(sd, c.num_hidden_layers, attention=weights)


__all__ = ["import_qwen_vl"]

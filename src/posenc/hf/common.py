"""What the Hugging Face importers share: the result type, the refusal of what posenc cannot
reproduce, the RoPE of a transformers config (read as a config, no module built), and the renaming
of Llama-style state dicts that most families reuse."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from posenc.attention import CausalSelfAttention
from posenc.attention.base import AttentionConfig
from posenc.attention.mask import Mask
from posenc.block import MLP, Block, NormConfig
from posenc.config import GPTConfig, LayerSpec
from posenc.encodings.base import EncodingConfig
from posenc.encodings.nope import NoPE
from posenc.encodings.rope import RotaryEmbedding
from posenc.encodings.rope_scaling import hf_rope_arguments, validate_scaling
from posenc.layer import EmbeddingConfig, HeadConfig

#: (the GPTConfig that reproduces the model, its weights under posenc's parameter names)
Converted = tuple[GPTConfig, dict[str, Tensor]]

#: One layer's attention weights: (Hugging Face state dict, its attention prefix, posenc's) -> posenc's weights
AttentionWeights = Callable[[dict[str, Tensor], str, str], dict[str, Tensor]]


@dataclass(frozen=True)
class Sizes:
    """A model's sizes: the fields of GPTConfig that are not its parts."""

    vocab_size: int
    n_embd: int
    n_layer: int
    n_head: int
    block_size: int

    def config(
        self, layers: Sequence[LayerSpec], head: HeadConfig, embedding: EmbeddingConfig | None = None
    ) -> GPTConfig:
        """The GPTConfig of these sizes and parts (the layers tiled over depth)."""
        return GPTConfig(
            vocab_size=self.vocab_size,
            n_embd=self.n_embd,
            n_layer=self.n_layer,
            n_head=self.n_head,
            block_size=self.block_size,
            embedding=embedding,
            head=head,
            layers=tuple(layers),
        )


def refuse(model_type: str, differ: dict[str, Any]) -> None:
    """Refuse config fields that change the logits and that posenc does not reproduce, by name."""
    if differ:
        raise ValueError(f"from_hf: this {model_type} config has fields posenc cannot reproduce: {differ}")


def per_head_qkv(w: Tensor, n_head: int) -> Tensor:
    """A fused qkv weight or bias whose rows are grouped by head (``[q_h, k_h, v_h]`` for each head h:
    GPT-NeoX, BLOOM) regrouped into posenc's ``[q, k, v]``."""
    rows = w.reshape(n_head, 3, -1, *w.shape[1:]).transpose(0, 1)  # (q/k/v, head, head_dim, ...)
    return rows.reshape(w.shape)


def layer_spec(
    norm: NormConfig,
    mlp: MLP.Config,
    *,
    attention: AttentionConfig | None = None,
    pe: EncodingConfig | None = None,
    window: int | None = None,
    chunk: int | None = None,
    **block: Any,
) -> LayerSpec:
    """One layer from its parts: its norm and MLP, its attention (default: multi-head with biases),
    its encoding (default: NoPE), its window or chunk, and ``block``'s other fields (``parallel``,
    ``pre_norm``, ``post_norm``)."""
    return LayerSpec(
        attention=CausalSelfAttention.Config() if attention is None else attention,
        pe=NoPE.Config() if pe is None else pe,
        mask=Mask(window=window, chunk=chunk),
        block=Block.Config(norm=norm, mlp=mlp, **block),
    )


def rope_config(c: Any, layer_type: str | None = None) -> RotaryEmbedding.Config:
    """The RoPE config of a transformers config (``layer_type``: one of per-layer-type parameters),
    the one :meth:`RotaryEmbedding.from_hf_config` builds its module from, checked against the
    config's head size."""
    head_dim, base, scaling, options = hf_rope_arguments(c, layer_type)
    config = RotaryEmbedding.Config(base=base, scaling=scaling, **options)
    config.rotated_channels(head_dim)
    return config


def rope_spec(c: Any, block_size: int, **options: Any) -> RotaryEmbedding.Config:
    """The one RoPE of a transformers config as a model's layers carry it: partial rotary as
    ``rotary_dim`` (which outlives a later change of schedule, ``config.with_encoding("rope",
    scaling=...)``), no schedule for plain RoPE, a schedule's ``max_position_embeddings`` defaulting
    to ``block_size``; ``options`` set other fields (``layout``, ``norm_after_eps``)."""
    head_dim = hf_rope_arguments(c)[0]
    rope = rope_config(c)
    scaling = {k: v for k, v in validate_scaling(rope.scaling).items() if v is not None}
    rotary_dim = rope.rotated_channels(head_dim) if scaling.pop("partial_rotary_factor", None) is not None else None
    fields: dict[str, Any] = dict(
        base=rope.base,
        rotary_dim=rotary_dim,
        scaling=None if scaling.get("rope_type") == "default" else {"max_position_embeddings": block_size} | scaling,
        mrope_section=rope.mrope_section,
        mrope_interleaved=rope.mrope_interleaved,
    )
    return RotaryEmbedding.Config(**(fields | options))


def per_layer_type(c: Any) -> bool:
    """Whether a transformers config has RoPE parameters per layer type (Gemma 3, OLMo 3)."""
    params = getattr(c, "rope_parameters", None) or {}
    return bool(params) and all(isinstance(v, Mapping) or v is None for v in params.values())


def text_name(key: str) -> str:
    """``model.language_model.layers.0...`` -> ``model.layers.0...`` (the Llama names)."""
    return key.replace("model.language_model.", "model.", 1)


def mha_weights(sd: dict[str, Tensor], src: str, dst: str) -> dict[str, Tensor]:
    """One layer's q/k/v/o projections (``q_proj``, ...) as posenc's fused ``c_attn`` and ``c_proj``."""
    out = {
        f"{dst}.c_attn.weight": torch.cat([sd[f"{src}.{p}_proj.weight"] for p in "qkv"]),
        f"{dst}.c_proj.weight": sd[f"{src}.o_proj.weight"],
    }
    if f"{src}.q_proj.bias" in sd:
        out[f"{dst}.c_attn.bias"] = torch.cat([sd[f"{src}.{p}_proj.bias"] for p in "qkv"])
    if f"{src}.o_proj.bias" in sd:
        out[f"{dst}.c_proj.bias"] = sd[f"{src}.o_proj.bias"]
    return out


def qk_normed_weights(sd: dict[str, Tensor], src: str, dst: str) -> dict[str, Tensor]:
    """:func:`mha_weights` and the ``q_norm`` / ``k_norm`` gains (Qwen3, OLMo 2, EXAONE 4)."""
    return mha_weights(sd, src, dst) | {
        f"{dst}.qk_norm.q_norm.weight": sd[f"{src}.q_norm.weight"],
        f"{dst}.qk_norm.k_norm.weight": sd[f"{src}.k_norm.weight"],
    }


def llama_weights(sd: dict[str, Tensor], n_layer: int, attention: AttentionWeights) -> dict[str, Tensor]:
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


def post_norm_weights(sd: dict[str, Tensor], n_layer: int) -> dict[str, Tensor]:
    """Llama's renaming with QK-norm, with the two post-sublayer norms (``post_attention_layernorm``,
    ``post_feedforward_layernorm``: OLMo 2, EXAONE 4) as posenc's post_attn_norm and post_mlp_norm."""
    sd = dict(sd)
    for i in range(n_layer):  # under the names llama_weights reads, then renamed below
        src = f"model.layers.{i}"
        sd[f"{src}.input_layernorm.weight"] = sd.pop(f"{src}.post_attention_layernorm.weight")
        sd[f"{src}.post_attention_layernorm.weight"] = sd.pop(f"{src}.post_feedforward_layernorm.weight")
    ours = llama_weights(sd, n_layer, attention=qk_normed_weights)
    moved = {".ln_1.weight": ".post_attn_norm.weight", ".ln_2.weight": ".post_mlp_norm.weight"}
    return {next((k.replace(a, b) for a, b in moved.items() if k.endswith(a)), k): v for k, v in ours.items()}

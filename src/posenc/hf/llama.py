"""The Llama family (``llama``, ``qwen2``, ``mistral``): RMSNorm, SwiGLU, grouped-query attention,
RoPE with the config's ``rope_parameters`` / ``rope_scaling`` (read by
:func:`~posenc.hf.common.rope_config`), Qwen2's q/k/v biases, Mistral's
sliding window."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from torch import nn

from posenc.attention import CausalSelfAttention
from posenc.block import MLP, NormConfig
from posenc.config import GPTConfig, LayerSpec
from posenc.encodings.rope import RotaryEmbedding
from posenc.hf.common import Converted, Sizes, layer_spec, llama_weights, mha_weights, refuse, rope_spec
from posenc.hf.writers import multi_head, no_token_ids, rope_parameters, transformers_module, uniform_layer
from posenc.layer import HeadConfig


@dataclass(frozen=True)
class LlamaParts:
    """The parts of a Llama-style config that its layers share: RMSNorm, SwiGLU MLP, grouped-query
    attention, the model-wide RoPE (None: RoPE per layer type, set by the importer) and the head."""

    sizes: Sizes
    norm: NormConfig
    mlp: MLP.Config
    attention: CausalSelfAttention.Config
    rope: RotaryEmbedding.Config | None
    head: HeadConfig

    def layer(self, **parts: Any) -> LayerSpec:
        """One layer of these parts; ``parts`` replace some (``attention``, ``pe``, ``mlp``, ``window``,
        ``chunk``, ``post_norm``, ...)."""
        return layer_spec(**(dict(norm=self.norm, mlp=self.mlp, attention=self.attention, pe=self.rope) | parts))

    def config(self, layers: Sequence[LayerSpec]) -> GPTConfig:
        return self.sizes.config(layers, self.head)


def llama_parts(
    c: Any,
    model_type: str,
    *,
    own_head_dim: bool = False,
    rope: bool = True,
    bias: bool = False,
    act_checked: bool = False,
) -> LlamaParts:
    """The shared parts of a Llama-style config; ``own_head_dim``: the family sets ``head_dim``
    apart from hidden_size / num_attention_heads (Qwen3), which the importer then passes on;
    ``rope=False``: no model-wide RoPE (a family with RoPE parameters per layer type sets each
    layer's own); ``bias``: biases everywhere, the importer then sets the attention's and MLP's own;
    ``act_checked``: the importer checks the activation and sets its MLP (Gemma's GeGLU).
    ``pretraining_tp`` (SmolLM3-3B: 2) is ignored, as Hugging Face does outside BLOOM: it was the
    tensor-parallel degree of pretraining, which splits matmuls without changing them."""
    differ: dict[str, Any] = {}
    if not act_checked and getattr(c, "hidden_act", "silu") != "silu":
        differ["hidden_act"] = c.hidden_act
    head_dim = getattr(c, "head_dim", None)
    # DeepSeek's head_dim is its rotary width (qk_rope_head_dim); MLA sets its own head sizes
    own = own_head_dim or model_type == "deepseek_v3"
    if not own and head_dim is not None and head_dim != c.hidden_size // c.num_attention_heads:
        differ["head_dim"] = head_dim
    refuse(model_type, differ)
    norm = NormConfig(kind="rmsnorm", eps=c.rms_norm_eps, bias=bias)
    n_kv_head = getattr(c, "num_key_value_heads", None) or c.num_attention_heads
    return LlamaParts(
        sizes=Sizes(
            vocab_size=c.vocab_size,
            n_embd=c.hidden_size,
            n_layer=c.num_hidden_layers,
            n_head=c.num_attention_heads,
            block_size=c.max_position_embeddings,
        ),
        norm=norm,
        mlp=MLP.Config(kind="swiglu", hidden=c.intermediate_size, bias=bias),
        attention=CausalSelfAttention.Config(n_kv_head=n_kv_head, qkv_bias=bias, proj_bias=bias),
        rope=rope_spec(c, c.max_position_embeddings) if rope else None,
        head=HeadConfig(norm=norm, tie_embeddings=bool(getattr(c, "tie_word_embeddings", False))),
    )


def import_llama(model: nn.Module) -> Converted:
    c = model.config
    model_type = c.model_type
    parts = llama_parts(c, model_type)
    attention_bias = bool(getattr(c, "attention_bias", False))
    attention = parts.attention.replace(qkv_bias=attention_bias, proj_bias=attention_bias)
    mlp = parts.mlp.replace(bias=bool(getattr(c, "mlp_bias", False)))
    if model_type == "qwen2":  # q/k/v biases, none elsewhere
        attention, mlp = attention.replace(qkv_bias=True, proj_bias=False), mlp.replace(bias=False)
        if getattr(c, "use_sliding_window", False):
            refuse(model_type, {"use_sliding_window": True})
    window = getattr(c, "sliding_window", None) if model_type == "mistral" else None
    config = parts.config([parts.layer(attention=attention, mlp=mlp, window=window)])
    return config, llama_weights(model.state_dict(), c.num_hidden_layers, attention=mha_weights)


def llama_fields(config: GPTConfig, family: str) -> dict[str, Any]:
    """The fields of a Llama-style Hugging Face config (``family``'s) that express ``config``."""
    layer = uniform_layer(config, family)
    attention = multi_head(layer, family)
    return dict(
        vocab_size=config.vocab_size,
        hidden_size=config.n_embd,
        intermediate_size=layer.block.mlp.width(config.n_embd),
        num_hidden_layers=config.n_layer,
        num_attention_heads=config.n_head,
        num_key_value_heads=attention.n_kv_head or config.n_head,
        head_dim=attention.head_dim or config.head_dim,
        max_position_embeddings=config.block_size,
        rms_norm_eps=layer.block.norm.eps,
        attention_bias=attention.qkv_bias,
        tie_word_embeddings=config.head.tie_embeddings,
        rope_parameters=rope_parameters(config, family),
        **no_token_ids(),
    )


def llama_config(config: GPTConfig) -> Any:
    """The LlamaConfig that expresses ``config``."""
    layer = uniform_layer(config, "llama")
    return transformers_module().LlamaConfig(**llama_fields(config, "llama"), mlp_bias=layer.block.mlp.bias)

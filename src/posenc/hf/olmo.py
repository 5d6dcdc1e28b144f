"""OLMo 2 and OLMo 3 (``olmo2``, ``olmo3``): a Llama block whose norms come after each sublayer
instead of before it (``x + norm(attn(x))``, ``x + norm(mlp(x))``: ``Block.Config(pre_norm=False,
post_norm=True)``), and an RMS QK-norm over the whole q and k projections before the head split
(``qk_norm="rms_full"``). OLMo 3 adds sliding windows on the layers its ``layer_types`` mark (3
sliding : 1 full) and RoPE parameters per layer type. The QK-norm shares the block norms'
``rms_norm_eps``."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from torch import Tensor, nn

from posenc.config import GPTConfig, LayerSpec
from posenc.encodings.rope import RotaryEmbedding
from posenc.hf.common import Converted
from posenc.hf.llama import _mha_weights, common_llama_fields, llama_weights


def import_olmo(model: nn.Module) -> Converted:
    c = model.config
    model_type = c.model_type
    attention_bias = bool(getattr(c, "attention_bias", False))
    n = c.num_hidden_layers
    types = list(getattr(c, "layer_types", None) or ["full_attention"] * n)[:n]
    nested = _per_layer_type(c)
    fields = common_llama_fields(c, model_type, rope=not nested)
    windows = tuple(c.sliding_window if kind == "sliding_attention" else None for kind in types)
    fields |= dict(
        bias=False,
        qkv_bias=attention_bias,
        proj_bias=attention_bias,
        mlp_bias=False,
        qk_norm=True,
        qk_norm_type="rms_full",
        attention_options={"qk_norm_eps": float(c.rms_norm_eps)},
        layer_pe=("rope",),
        layer_window=windows,
    )

    def layer(i: int, spec: LayerSpec) -> LayerSpec:
        spec = spec.replace(block=spec.block.replace(pre_norm=False, post_norm=True))
        if nested:  # each layer type its own RoPE parameters
            return spec.replace(pe=RotaryEmbedding.from_hf_config(c, layer_type=types[i]).config)
        return spec

    config = GPTConfig(**fields).map_layers(layer)
    return config, _olmo_weights(model.state_dict(), n)


def _per_layer_type(c: Any) -> bool:
    params = getattr(c, "rope_parameters", None) or {}
    return bool(params) and all(isinstance(v, Mapping) or v is None for v in params.values())


def _olmo_weights(sd: dict[str, Tensor], n_layer: int) -> dict[str, Tensor]:
    """Llama's renaming, with OLMo's two post-sublayer norms as posenc's post_attn_norm and post_mlp_norm."""
    sd = dict(sd)
    for i in range(n_layer):  # under the names llama_weights reads, then renamed below
        src = f"model.layers.{i}"
        sd[f"{src}.input_layernorm.weight"] = sd.pop(f"{src}.post_attention_layernorm.weight")
        sd[f"{src}.post_attention_layernorm.weight"] = sd.pop(f"{src}.post_feedforward_layernorm.weight")
    ours = llama_weights(sd, n_layer, attention=_olmo_attention)
    moved = {".ln_1.weight": ".post_attn_norm.weight", ".ln_2.weight": ".post_mlp_norm.weight"}
    return {next((k.replace(a, b) for a, b in moved.items() if k.endswith(a)), k): v for k, v in ours.items()}


def _olmo_attention(sd: dict[str, Tensor], src: str, dst: str) -> dict[str, Tensor]:
    return _mha_weights(sd, src, dst) | {
        f"{dst}.qk_norm.q_norm.weight": sd[f"{src}.q_norm.weight"],
        f"{dst}.qk_norm.k_norm.weight": sd[f"{src}.k_norm.weight"],
    }

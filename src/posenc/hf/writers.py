"""What the config writers of the exporting families share: :class:`Unfit` (the refusal of a model
a family does not express), transformers imported on first use, the one layer spec of a family with
one kind of layer, its multi-head attention, and Hugging Face's ``rope_parameters`` of a RoPE layer."""

from __future__ import annotations

from typing import Any

from posenc.attention import CausalSelfAttention
from posenc.config import GPTConfig, LayerSpec


class Unfit(ValueError):
    """This family does not express the model; the message says why."""


def transformers_module() -> Any:
    """transformers, imported here (export needs it; posenc without the ``hf`` extra does not)."""
    try:
        import transformers
    except ImportError as e:
        raise ImportError("to_hf needs transformers: pip install 'posenc[hf]'") from e
    return transformers


def uniform_layer(config: GPTConfig, family: str) -> LayerSpec:
    """The one layer spec every layer shares (attention and block; encodings are checked by the import)."""
    first = config.layers[0]
    for i, layer in enumerate(config.layers):
        if layer.attention != first.attention or layer.block != first.block:
            raise Unfit(f"layer {i}'s attention or block differs from layer 0's; {family} has one kind of layer")
    return first


def multi_head(layer: LayerSpec, family: str) -> CausalSelfAttention.Config:
    """The layer's attention, which must be multi-head (with grouped or single key/value heads): the
    attention of ``family``."""
    if not isinstance(layer.attention, CausalSelfAttention.Config):
        raise Unfit(f"its attention is {type(layer.attention).__qualname__}; {family} has multi-head attention")
    return layer.attention


def rope_parameters(
    config: GPTConfig, family: str, layer: LayerSpec | None = None, layout: str = "half"
) -> dict[str, Any]:
    """Hugging Face's ``rope_parameters`` for the RoPE of ``layer`` (default: the first RoPE layer),
    in a family that pairs channels in ``layout``."""
    ropes = [spec for spec in config.layers if spec.encoding == "rope"]
    layer = layer or (ropes[0] if ropes else None)
    if layer is None or layer.encoding != "rope":
        raise Unfit(f"no layer uses RoPE, and {family} rotates q and k")
    pe = layer.pe
    if pe.layout != layout:
        raise Unfit(f"RoPE pairs channels in the {pe.layout!r} layout; {family} uses {layout!r}")
    params = {"rope_type": "default"} | {
        k: v for k, v in dict(pe.scaling or {}).items() if k != "max_position_embeddings"
    }
    params["rope_theta"] = pe.base
    if pe.rotary_dim is not None:  # written even when 1: GPT-NeoX's config defaults to Pythia's 0.25
        params["partial_rotary_factor"] = pe.rotary_dim / layer.attention.encoding_dims(config.dims).head_dim
    params.setdefault("partial_rotary_factor", 1.0)
    return params


def no_token_ids() -> dict[str, Any]:
    """No bos, eos or pad token: a posenc model has none of its own."""
    return dict(bos_token_id=None, eos_token_id=None, pad_token_id=None)

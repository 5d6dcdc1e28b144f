"""The one place where a ``GPTConfig`` becomes modules: encodings and attention per layer.

Encodings and attention variants take plain constructor arguments and know nothing of
``GPTConfig``; these two functions read the config and call them.
"""

from __future__ import annotations

from torch import nn

from posenc.attention import ATTENTIONS
from posenc.config import GPTConfig, LayerSpec
from posenc.encodings import ENCODINGS, PositionalEncoding
from posenc.encodings.base import ModelDims


def build_encoding(name: str, config: GPTConfig, dims: ModelDims | None = None) -> PositionalEncoding:
    """Encoding ``name`` for one layer (or the input) of the model ``config`` describes; ``dims``
    overrides the model's sizes (an attention variant's own q/k width)."""
    if name not in ENCODINGS:
        raise ValueError(f"unknown positional encoding {name!r}; known: {sorted(ENCODINGS)}")
    return ENCODINGS[name][1].build(config.dims if dims is None else dims, **config.encoding_options(name))


def build_attention(config: GPTConfig, spec: LayerSpec) -> nn.Module:
    """The attention of one layer: ``config.attention``'s class with the layer's encoding and window.

    The class receives the common arguments plus the config fields it lists in ``config_fields``;
    its optional classmethod ``encoding_dims(dims, **fields)`` says what width its encoding acts on.
    """
    cls = ATTENTIONS[config.attention]
    extra = {name: getattr(config, name) for name in getattr(cls, "config_fields", ())}
    encoding_dims = getattr(cls, "encoding_dims", None)
    dims = config.dims if encoding_dims is None else encoding_dims(config.dims, **extra)
    return cls(
        config.n_embd,
        config.n_head,
        pe=build_encoding(spec.pe, config, dims),
        qk_norm=config.qk_norm_type if config.use_qk_norm else None,
        window=spec.window,
        dropout=config.dropout,
        bias=config.bias,
        block_size=config.block_size,
        **extra,
    )


def build_input_encoding(config: GPTConfig) -> PositionalEncoding | None:
    """The table added to the token embeddings, or None."""
    return None if config.input_encoding is None else build_encoding(config.input_encoding, config)

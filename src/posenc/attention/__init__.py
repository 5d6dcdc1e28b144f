"""Attention variants and their shared pieces (the kernel, the mask, the KV cache, QK-norm).

Registry: ``ATTENTIONS`` maps a name to a class. Every class is an
:class:`~posenc.attention.base.Attention` with a nested ``Config`` (its options) and the forward
``(x, positions=None, cache=None, segments=None)``; ``GPTConfig(attention="<name>")`` or a layer
spec's ``attention=<Class>.Config(...)`` selects it. Adding a variant: one file here, one line
below, one test file.
"""

from __future__ import annotations

from posenc.attention.base import Attention, AttentionConfig, KVCache, LayerKVCache
from posenc.attention.core import CausalSelfAttention, QKNorm, QKNormAttention, causal_attention
from posenc.attention.mask import Mask
from posenc.attention.mla import MultiHeadLatentAttention
from posenc.attention.scores import ScoreInputs
from posenc.spec import registered_config

ATTENTIONS: dict[str, type[Attention]] = {
    "mha": CausalSelfAttention,
    "mla": MultiHeadLatentAttention,
}


def attention_class(name: str) -> type[Attention]:
    if name not in ATTENTIONS:
        raise ValueError(f"unknown attention {name!r}; known: {sorted(ATTENTIONS)}")
    return ATTENTIONS[name]


def name_of(config: AttentionConfig) -> str:
    """The registered name of an attention config's class."""
    for name, cls in ATTENTIONS.items():
        if cls.Config is type(config):
            return name
    raise ValueError(f"{type(config).__qualname__} is not the config of a registered attention (ATTENTIONS)")


def attention_config(value: str | AttentionConfig | dict, **options) -> AttentionConfig:
    """An attention config from a name (with ``options``), a config, or its ``to_dict()``."""
    return registered_config(value, AttentionConfig, attention_class, "attention", **options)


__all__ = [
    "ATTENTIONS",
    "Attention",
    "AttentionConfig",
    "CausalSelfAttention",
    "KVCache",
    "LayerKVCache",
    "Mask",
    "MultiHeadLatentAttention",
    "QKNorm",
    "QKNormAttention",
    "ScoreInputs",
    "attention_class",
    "attention_config",
    "causal_attention",
    "name_of",
]

"""posenc: positional-encoding attention layers and a GPT that composes them per layer.

The model is configured by component configs (``GPTConfig`` holds the sizes and one ``LayerSpec``
per layer: attention, encoding, mask, block); training, evaluation and reports live in
submodules: ``posenc.train`` (``train()``), ``posenc.evaluate``, ``posenc.data``, ``posenc.sweep``
and ``posenc.report``; ``posenc`` (the command) and ``python -m posenc`` run them.
"""

from posenc.attention import (
    ATTENTIONS,
    CausalSelfAttention,
    KVCache,
    Mask,
    MultiHeadLatentAttention,
    QKNorm,
    QKNormAttention,
    causal_attention,
)
from posenc.block import MLP, Block, NormConfig
from posenc.config import PRESETS, EmbeddingConfig, GPTConfig, HeadConfig, LayerSpec
from posenc.encodings import ENCODINGS, AbsolutePE, ALiBi, NoPE, PositionalEncoding, RotaryEmbedding, SinusoidalPE
from posenc.encodings.alibi import alibi_slopes
from posenc.encodings.base import ModelDims
from posenc.encodings.rope import apply_rotary
from posenc.model import GPT, RNoPEBlock
from posenc.variants import VARIANTS, Variant

__version__ = "0.3.0"

__all__ = [
    "GPT",
    "GPTConfig",
    "LayerSpec",
    "EmbeddingConfig",
    "HeadConfig",
    "PRESETS",
    "VARIANTS",
    "Variant",
    "ModelDims",
    "ATTENTIONS",
    "ENCODINGS",
    "Mask",
    "Block",
    "MLP",
    "NormConfig",
    "PositionalEncoding",
    "AbsolutePE",
    "SinusoidalPE",
    "NoPE",
    "RotaryEmbedding",
    "ALiBi",
    "alibi_slopes",
    "apply_rotary",
    "CausalSelfAttention",
    "MultiHeadLatentAttention",
    "QKNormAttention",
    "QKNorm",
    "KVCache",
    "causal_attention",
    "RNoPEBlock",
]

"""posenc: positional-encoding attention layers and a GPT that composes them per layer.

Training, evaluation and reports live in submodules: ``posenc.train`` (``train()``),
``posenc.evaluate``, ``posenc.data``, ``posenc.sweep`` and ``posenc.report``; ``posenc`` (the
command) and ``python -m posenc`` run them.
"""

from posenc.attention import ATTENTIONS, CausalSelfAttention, KVCache, QKNorm, QKNormAttention, causal_attention
from posenc.build import build_attention, build_encoding
from posenc.config import PRESETS, VARIANTS, GPTConfig, LayerSpec, Variant
from posenc.encodings import ENCODINGS, AbsolutePE, ALiBi, NoPE, PositionalEncoding, RotaryEmbedding, SinusoidalPE
from posenc.encodings.alibi import alibi_slopes
from posenc.encodings.base import ModelDims
from posenc.encodings.rope import apply_rotary
from posenc.model import GPT, Block, RNoPEBlock

__version__ = "0.1.0"

__all__ = [
    "GPT",
    "GPTConfig",
    "PRESETS",
    "VARIANTS",
    "Variant",
    "LayerSpec",
    "ModelDims",
    "ATTENTIONS",
    "build_encoding",
    "build_attention",
    "ENCODINGS",
    "PositionalEncoding",
    "AbsolutePE",
    "SinusoidalPE",
    "NoPE",
    "RotaryEmbedding",
    "ALiBi",
    "alibi_slopes",
    "apply_rotary",
    "CausalSelfAttention",
    "QKNormAttention",
    "QKNorm",
    "KVCache",
    "causal_attention",
    "Block",
    "RNoPEBlock",
]

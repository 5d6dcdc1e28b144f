"""posenc: positional-encoding attention layers and a GPT that composes them per layer."""

from posenc.attention import CausalSelfAttention, KVCache, QKNorm, QKNormAttention, causal_attention
from posenc.config import PRESETS, VARIANTS, GPTConfig
from posenc.encodings import ENCODINGS, AbsolutePE, ALiBi, NoPE, PositionalEncoding, RotaryEmbedding, SinusoidalPE
from posenc.encodings.alibi import alibi_slopes
from posenc.encodings.rope import apply_rotary
from posenc.model import GPT, Block, RNoPEBlock

__version__ = "0.1.0"

__all__ = [
    "GPT",
    "GPTConfig",
    "PRESETS",
    "VARIANTS",
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

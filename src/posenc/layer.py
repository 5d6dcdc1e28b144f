"""The parts a :class:`~posenc.config.GPTConfig` is made of: one :class:`LayerSpec` per layer, the
:class:`EmbeddingConfig` and the :class:`HeadConfig`.

A layer spec holds the configs of the layer's attention variant, positional encoding, mask and
block; each checks itself, and ``LayerSpec.check(dims)`` checks them against the model's sizes and
against each other (the attention says what width its encoding acts on). In ``to_dict()`` an
encoding or attention config carries its registered ``name`` (``ENCODINGS``, ``ATTENTIONS``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from posenc.attention import CausalSelfAttention, attention_config
from posenc.attention import name_of as attention_name
from posenc.attention.base import AttentionConfig
from posenc.attention.mask import Mask
from posenc.block import Block, NormConfig
from posenc.encodings import ENCODINGS, encoding_config
from posenc.encodings import name_of as encoding_name
from posenc.encodings.base import EncodingConfig, ModelDims, PositionalEncoding
from posenc.encodings.nope import NoPE
from posenc.spec import Spec, check_bool, check_number, set_field, spec


def component(value: Any, cls: type, from_value: Callable[[Any], Any]) -> Any:
    """A nested config field given as the config, or as anything ``from_value`` turns into one."""
    return value if isinstance(value, cls) else from_value(value)


def named(config: EncodingConfig | AttentionConfig) -> dict[str, Any]:
    """``to_dict()`` with the registered name first."""
    name = encoding_name(config) if isinstance(config, EncodingConfig) else attention_name(config)
    return {"name": name} | config.to_dict()


@spec
class LayerSpec(Spec):
    """One layer: its attention variant, its positional encoding, its mask and its block.

    Each field takes its config, or a registered name / ``to_dict()`` of one (``LayerSpec(pe="rope")``).
    """

    attention: AttentionConfig = CausalSelfAttention.Config()
    pe: EncodingConfig = NoPE.Config()
    mask: Mask = Mask()
    block: Block.Config = Block.Config()

    def __post_init__(self) -> None:
        set_field(self, "attention", component(self.attention, AttentionConfig, attention_config))
        set_field(self, "pe", component(self.pe, EncodingConfig, encoding_config))
        set_field(self, "mask", component(self.mask, Mask, Mask.from_dict))
        set_field(self, "block", component(self.block, Block.Config, Block.Config.from_dict))
        if self.pe.where == "input":
            raise ValueError(
                f"LayerSpec.pe={self.encoding!r} acts at the model input; give it as the embedding's input_pe"
            )
        if self.attention.sinks and not self.pe.encoding.takes_sinks:
            raise ValueError(
                f"LayerSpec: attention sinks (the attention config's sinks=True) do not combine with "
                f"pe={self.encoding!r}, which has no softmax to put them in; drop sinks=True for this layer"
            )

    @property
    def encoding(self) -> str:
        """The registered name of the layer's encoding."""
        return encoding_name(self.pe)

    @property
    def window(self) -> int | None:
        return self.mask.window

    def check(self, dims: ModelDims) -> None:
        """Refuse a layer that cannot be built for a model of sizes ``dims``."""
        self.attention.check(dims, self.pe)
        self.pe.check(self.attention.encoding_dims(dims))

    def cache_bytes_per_token(self, dims: ModelDims, dtype: torch.dtype = torch.float16) -> int:
        """Bytes one token adds to this layer's cache: its attention's keys and values (in ``dtype``)
        and its encoding's float32 features (FoX's running gate sum), one set per query head."""
        return self.attention.cache_bytes_per_token(dims, dtype) + dims.n_head * self.pe.encoding.cached_features * 4

    def build(self, dims: ModelDims, dropout: float) -> Block:
        pe = self.pe.build(self.attention.encoding_dims(dims))
        attn = self.attention.build(dims, pe=pe, mask=self.mask, dropout=dropout)
        return self.block.build(dims, attn=attn, dropout=dropout)

    def to_dict(self) -> dict[str, Any]:
        return super().to_dict() | {"attention": named(self.attention), "pe": named(self.pe)}


@spec
class EmbeddingConfig(Spec):
    """The token embedding's companions: the table added at the input (``input_pe``, an encoding
    with ``where="input"``), or None; and a norm of the embeddings (``norm``: BLOOM's
    ``word_embeddings_layernorm``), or None; and a factor on the token embeddings (``scale``: Gemma's
    sqrt(n_embd))."""

    input_pe: EncodingConfig | None = None
    norm: NormConfig | None = None
    scale: float = 1.0

    def __post_init__(self) -> None:
        check_number("EmbeddingConfig", "scale", self.scale, low=0)
        if self.norm is not None:
            set_field(self, "norm", component(self.norm, NormConfig, NormConfig.from_dict))
        if self.input_pe is None:
            return
        set_field(self, "input_pe", component(self.input_pe, EncodingConfig, encoding_config))
        if self.input_pe.where != "input":
            tables = sorted(n for n, (_, cls) in ENCODINGS.items() if cls.where == "input")
            name = encoding_name(self.input_pe)
            raise ValueError(f"EmbeddingConfig.input_pe must be None or one of {tables}, got {name!r}")

    @property
    def encoding(self) -> str | None:
        return None if self.input_pe is None else encoding_name(self.input_pe)

    def build(self, dims: ModelDims) -> PositionalEncoding | None:
        return None if self.input_pe is None else self.input_pe.build(dims)

    def to_dict(self) -> dict[str, Any]:
        norm = None if self.norm is None else self.norm.to_dict()
        return {"input_pe": None if self.input_pe is None else named(self.input_pe), "norm": norm, "scale": self.scale}


@spec
class HeadConfig(Spec):
    """The final norm (``ln_f``) and the LM head, tied to the token embedding unless
    ``tie_embeddings=False``, with a bias on the logits when ``bias`` (GPT-J, Phi) and the logits
    multiplied by ``logit_scale`` (Cohere's) and soft-capped at ``softcap`` (Gemma 2's
    ``cap * tanh(logits / cap)``)."""

    norm: NormConfig = NormConfig()
    tie_embeddings: bool = True
    bias: bool = False
    logit_scale: float = 1.0
    softcap: float | None = None

    def __post_init__(self) -> None:
        set_field(self, "norm", component(self.norm, NormConfig, NormConfig.from_dict))
        check_bool("HeadConfig", "tie_embeddings", self.tie_embeddings)
        check_bool("HeadConfig", "bias", self.bias)
        check_number("HeadConfig", "logit_scale", self.logit_scale, low=0)
        check_number("HeadConfig", "softcap", self.softcap, low=0, optional=True)

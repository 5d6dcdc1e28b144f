"""GPTConfig: a GPT's sizes and the configs of its parts, one :class:`LayerSpec` per layer.

The structure is the source of truth::

    GPTConfig
      block_size, vocab_size, n_layer, n_head, n_embd, dropout     the model's sizes
      embedding   EmbeddingConfig(input_pe)                        the table added at the input, or None
      head        HeadConfig(norm, tie_embeddings)                 the final norm and the LM head
      layers      LayerSpec per layer:
                    attention  an attention variant's Config (MHA/GQA/MQA, MLA), with its options
                    pe         an encoding's Config (RoPE with its base/schedule, ALiBi, NoPE, ...)
                    mask       Mask(window, chunk)
                    block      Block.Config(norm, mlp)

Every part checks itself (posenc.spec); the GPTConfig checks only the sizes and asks each layer
to check itself against them. A layer spec says per layer what Hugging Face's ``layer_types`` plus
per-layer-type ``rope_parameters`` say (Gemma 3: local layers with one RoPE base and a window,
global layers with another base and a scaling).

``GPTConfig(**fields)`` also takes the flat fields of posenc 0.1-0.2 as sugar -- ``pe`` (a name of
:data:`posenc.variants.VARIANTS`), ``layer_pattern``, ``sliding_window``, ``qk_norm``, ``rope_*``,
``n_kv_head``, ``norm``, ``mlp``, ``bias``, ... (see :mod:`posenc.sugar`) -- which resolve into the
structure and are not stored: give either sugar or ``layers``/``embedding``/``head``.
``to_dict()`` / ``from_dict()`` round-trip the structure exactly; ``from_dict`` also reads the flat
dicts of checkpoint formats 1 and 2.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from posenc.attention import CausalSelfAttention
from posenc.block import MLP, Block, NormConfig
from posenc.encodings import ENCODINGS
from posenc.encodings.base import ModelDims
from posenc.layer import EmbeddingConfig, HeadConfig, LayerSpec, component
from posenc.spec import Spec, check_int, check_number
from posenc.sugar import from_flat_dict, over, resolve

__all__ = ["CONFIG_FORMAT", "PRESETS", "EmbeddingConfig", "GPTConfig", "HeadConfig", "LayerSpec"]

#: The parts of a model without biases (nanoGPT's ``bias=False``): no bias on the attention's and the
#: MLP's projections nor on LayerNorm, before every block and the head.
NO_BIAS_NORM = NormConfig(bias=False)
NO_BIAS_LAYER = LayerSpec(
    attention=CausalSelfAttention.Config(qkv_bias=False, proj_bias=False),
    block=Block.Config(norm=NO_BIAS_NORM, mlp=MLP.Config(bias=False)),
)
NO_BIAS = {"head": HeadConfig(norm=NO_BIAS_NORM), "layers": (NO_BIAS_LAYER,)}

#: Model presets, sizes and parts; ``GPTConfig.from_preset(name, **overrides)``.
PRESETS: dict[str, dict[str, Any]] = {
    # The reference study: nanoGPT with 4 layers, 4 heads, 256 channels, GPT-2 vocab padded to 50304.
    "owt-16m": dict(n_layer=4, n_head=4, n_embd=256, block_size=1024, vocab_size=50304, dropout=0.0, **NO_BIAS),
    # GPT-2 small (124M), nanoGPT's default: biases everywhere (the default parts).
    "gpt2": dict(n_layer=12, n_head=12, n_embd=768, block_size=1024, vocab_size=50304, dropout=0.0),
    # CPU training on bytes (vocab 256) in minutes.
    "cpu-small": dict(n_layer=4, n_head=4, n_embd=128, block_size=128, vocab_size=256, dropout=0.0, **NO_BIAS),
    # Unit tests and smoke runs: 4 layers so that "RRRN" shows its NoPE layer.
    "tiny": dict(n_layer=4, n_head=2, n_embd=32, block_size=32, vocab_size=256, dropout=0.0, **NO_BIAS),
}

SIZES: tuple[str, ...] = ("block_size", "vocab_size", "n_layer", "n_head", "n_embd")
STRUCTURE: tuple[str, ...] = ("embedding", "head", "layers")


@dataclass(frozen=True, init=False)
class GPTConfig(Spec):
    """A GPT: its sizes, its embedding and head, and one :class:`LayerSpec` per layer (module docstring).

    ``layers`` shorter than ``n_layer`` are tiled over depth (``layers=(global, local, local)`` with
    ``n_layer=12``); without ``n_layer`` there is one layer per spec.
    """

    block_size: int
    vocab_size: int
    n_layer: int
    n_head: int
    n_embd: int
    dropout: float
    embedding: EmbeddingConfig
    head: HeadConfig
    layers: tuple[LayerSpec, ...]

    def __init__(
        self,
        *,
        block_size: int = 1024,
        vocab_size: int = 50304,
        n_layer: int | None = None,
        n_head: int = 12,
        n_embd: int = 768,
        dropout: float = 0.0,
        embedding: EmbeddingConfig | Mapping | None = None,
        head: HeadConfig | Mapping | None = None,
        layers: tuple[LayerSpec | Mapping, ...] | None = None,
        **sugar: Any,
    ) -> None:
        sizes = dict(block_size=block_size, vocab_size=vocab_size, n_head=n_head, n_embd=n_embd)
        if n_layer is None:
            n_layer = 12 if layers is None else (len(layers) if isinstance(layers, (tuple, list)) else 1)
        sizes["n_layer"] = n_layer
        for name in SIZES:
            check_int("GPTConfig", name, sizes[name])
        check_number("GPTConfig", "dropout", dropout, low=0.0, high=1.0, low_open=False)
        given = {name: value for name, value in zip(STRUCTURE, (embedding, head, layers)) if value is not None}
        if sugar and given:
            raise ValueError(
                f"GPTConfig: the flat fields {sorted(sugar)} and {sorted(given)} both describe the layers; "
                "give either the flat fields or layers/embedding/head"
            )
        if given or not sugar:
            parts = _structured(n_layer, embedding, head, layers)
        else:
            parts = resolve(ModelDims(n_embd=n_embd, n_head=n_head, block_size=block_size, n_layer=n_layer), sugar)
        for name, value in (sizes | {"dropout": dropout} | parts).items():
            object.__setattr__(self, name, value)
        for i, layer in enumerate(self.layers):
            try:
                layer.check(self.dims)
            except ValueError as e:
                raise ValueError(f"GPTConfig layer {i}: {e}") from None

    __hash__ = Spec._hash

    # -- derived -------------------------------------------------------------------------------

    @property
    def head_dim(self) -> int:
        return self.n_embd // self.n_head

    @property
    def dims(self) -> ModelDims:
        return ModelDims(n_embd=self.n_embd, n_head=self.n_head, block_size=self.block_size, n_layer=self.n_layer)

    @property
    def input_encoding(self) -> str | None:
        """The name of the input table, or None."""
        return self.embedding.encoding

    @property
    def layer_codes(self) -> tuple[str, ...]:
        """One code per layer: its encoding's (the input table's on NoPE layers under one); lower case = windowed."""
        inp = None if self.input_encoding is None else ENCODINGS[self.input_encoding][0]
        out = []
        for layer in self.layers:
            name = layer.encoding
            code = inp if name == "nope" and inp is not None else ENCODINGS[name][0]
            out.append(code.lower() if layer.mask.window is not None else code)
        return tuple(out)

    def architecture(self) -> dict[str, Any]:
        """What is built, independent of how it was asked for: the structure without the sizes."""
        return {"layer_codes": "".join(self.layer_codes)} | {k: v for k, v in self.to_dict().items() if k in STRUCTURE}

    def kv_cache_bytes_per_token(self, dtype: torch.dtype = torch.float16) -> int:
        """Bytes one token adds to the KV cache over all layers (each layer says its own)."""
        return sum(layer.cache_bytes_per_token(self.dims, dtype) for layer in self.layers)

    def build_layers(self) -> nn.ModuleList:
        return nn.ModuleList(layer.build(self.dims, self.dropout) for layer in self.layers)

    # -- changing a config ---------------------------------------------------------------------

    def map_layers(self, fn: Callable[[int, LayerSpec], LayerSpec]) -> GPTConfig:
        """A copy whose layer i is ``fn(i, layer)``, checked again."""
        return self.replace(layers=tuple(fn(i, layer) for i, layer in enumerate(self.layers)))

    def with_variant(self, name: str) -> GPTConfig:
        """A copy with the layers and input table of the variant ``name`` (:data:`posenc.VARIANTS`),
        keeping the sizes and the biases (layers that flat fields describe, as a preset's)."""
        return self.replace(**over(self.dims, self.parts(), {"pe": name}))

    def with_encoding(self, name: str, **options: Any) -> GPTConfig:
        """A copy in which every layer encoding called ``name`` has ``options`` replaced, e.g.
        ``config.with_encoding("rope", scaling={"rope_type": "yarn", ...})``."""
        used = sorted({layer.encoding for layer in self.layers})
        if name not in used:
            raise ValueError(f"no layer of this model uses {name!r}; its layers use {used}")
        return self.map_layers(
            lambda i, layer: layer.replace(pe=layer.pe.replace(**options)) if layer.encoding == name else layer
        )

    # -- construction and serialisation ----------------------------------------------------------

    @classmethod
    def from_preset(cls, name: str, **overrides: Any) -> GPTConfig:
        """The preset ``name`` with ``overrides``: sizes, parts (``layers=...``, tiled over the
        preset's depth), or flat sugar (``pe="rope"``), which keeps the preset's biases."""
        if name not in PRESETS:
            raise ValueError(f"unknown model preset {name!r}; known: {sorted(PRESETS)}")
        fields = {f.name for f in dataclasses.fields(cls)}
        sugar = {k: v for k, v in overrides.items() if k not in fields}
        structured = {k: v for k, v in overrides.items() if k in fields}
        config = cls(**(PRESETS[name] | structured))
        if not sugar:
            return config
        given = sorted(set(structured) & set(STRUCTURE))
        if given:
            raise ValueError(
                f"GPTConfig: the flat fields {sorted(sugar)} and {given} both describe the layers; "
                "give either the flat fields or layers/embedding/head"
            )
        return config.replace(**over(config.dims, config.parts(), sugar))

    def parts(self) -> dict[str, Any]:
        """``{"embedding", "head", "layers"}``: the structure without the sizes."""
        return {name: getattr(self, name) for name in STRUCTURE}

    def to_dict(self) -> dict[str, Any]:
        d = super().to_dict()
        return {"format": CONFIG_FORMAT} | d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> GPTConfig:
        """The config of ``to_dict()`` output, or of a flat dict of checkpoint formats 1 and 2."""
        d = dict(d)
        if "layers" not in d:  # posenc 0.1-0.2: every field flat, the layers resolved from them
            return cls(**from_flat_dict(d))
        fmt = d.pop("format", CONFIG_FORMAT)
        if fmt != CONFIG_FORMAT:
            raise ValueError(f"GPTConfig dict format {fmt!r} is not one this posenc reads ({CONFIG_FORMAT})")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"unknown GPTConfig fields {unknown}; known: {sorted(known)}")
        return cls(**d)

    def describe(self) -> str:
        """One line: the layer codes, the input table, and each attention variant with its options
        that differ from their defaults."""
        seen = []
        for layer in self.layers:
            attention = layer.to_dict()["attention"]
            default = type(layer.attention)().to_dict()
            text = " ".join(
                [attention["name"], *(f"{k}={v}" for k, v in attention.items() if k in default and v != default[k])]
            )
            if text not in seen:
                seen.append(text)
        table = "" if self.input_encoding is None else f"input {self.input_encoding}, "
        return f"{''.join(self.layer_codes)} ({table}attention {'; '.join(seen)})"


#: The version of :meth:`GPTConfig.to_dict`'s structure (flat dicts, formats 1-2 of posenc 0.1-0.2, have no key).
CONFIG_FORMAT = 3


def _structured(n_layer: int, embedding: Any, head: Any, layers: Any) -> dict[str, Any]:
    """The structured fields, given or defaulted, with ``layers`` tiled to ``n_layer``."""
    if layers is None:
        layers = (LayerSpec(),)
    if isinstance(layers, (LayerSpec, Mapping)) or not isinstance(layers, (tuple, list)) or not layers:
        raise TypeError(f"GPTConfig.layers must be a non-empty tuple of LayerSpec, got {layers!r}")
    specs = tuple(component(layer, LayerSpec, LayerSpec.from_dict) for layer in layers)
    return {
        "embedding": component(
            EmbeddingConfig() if embedding is None else embedding, EmbeddingConfig, EmbeddingConfig.from_dict
        ),
        "head": component(HeadConfig() if head is None else head, HeadConfig, HeadConfig.from_dict),
        "layers": tuple(specs[i % len(specs)] for i in range(n_layer)),
    }

"""Registry of positional encodings: name -> (layer-pattern code, class).

Adding an encoding: write ``posenc/encodings/<name>.py`` with a :class:`PositionalEncoding`
subclass (its ``where``, its nested ``Config``, ``__init__(config, dims)`` and the hook it overrides), add one line to
``ENCODINGS`` below, and add ``tests/test_<name>.py``. Attention, the model, the configs, the sweep
and the report need no change: ``GPTConfig(pe="<name>")`` builds it on every layer, and
``compare --variants <name>`` trains it and renders its row.
"""

from __future__ import annotations

from posenc.encodings.absolute import AbsolutePE, SinusoidalPE
from posenc.encodings.alibi import ALiBi
from posenc.encodings.base import EncodingConfig, PositionalEncoding
from posenc.encodings.cope import ContextualPosition
from posenc.encodings.fire import FIRE
from posenc.encodings.fox import ForgetGate, ForgetGateRoPE
from posenc.encodings.kerple import KerpleLog
from posenc.encodings.nope import NoPE
from posenc.encodings.rope import RotaryEmbedding
from posenc.encodings.stickbreaking import StickBreaking
from posenc.encodings.t5 import T5RelativeBias
from posenc.spec import registered_config

#: name -> (layer-pattern code, class). Codes are upper-case letters; in a layer pattern the
#: lower-case letter means the same encoding with a sliding attention window.
ENCODINGS: dict[str, tuple[str, type[PositionalEncoding]]] = {
    "absolute": ("P", AbsolutePE),
    "sinusoidal": ("S", SinusoidalPE),
    "nope": ("N", NoPE),
    "rope": ("R", RotaryEmbedding),
    "alibi": ("B", ALiBi),
    "t5": ("T", T5RelativeBias),
    "kerple": ("K", KerpleLog),
    "fire": ("F", FIRE),
    "fox": ("G", ForgetGate),
    "fox_rope": ("H", ForgetGateRoPE),
    "stickbreaking": ("Z", StickBreaking),
    "cope": ("C", ContextualPosition),
}


def codes() -> dict[str, str]:
    """Layer-pattern code -> encoding name (read from ``ENCODINGS`` at call time)."""
    return {code: name for name, (code, _) in ENCODINGS.items()}


def encoding_class(name: str) -> type[PositionalEncoding]:
    if name not in ENCODINGS:
        raise ValueError(f"unknown positional encoding {name!r}; known: {sorted(ENCODINGS)}")
    return ENCODINGS[name][1]


def name_of(config: EncodingConfig) -> str:
    """The registered name of an encoding config's class."""
    for name, (_, cls) in ENCODINGS.items():
        if cls.Config is type(config):
            return name
    raise ValueError(f"{type(config).__qualname__} is not the config of a registered encoding (ENCODINGS)")


def encoding_config(value: str | EncodingConfig | dict, **options) -> EncodingConfig:
    """An encoding config from a name (with ``options``), a config, or its ``to_dict()``."""
    return registered_config(value, EncodingConfig, encoding_class, "encoding", **options)


#: Layer-pattern code -> name, as of import (``codes()`` reads runtime additions too).
CODES: dict[str, str] = codes()

__all__ = [
    "ENCODINGS",
    "CODES",
    "codes",
    "encoding_class",
    "encoding_config",
    "name_of",
    "EncodingConfig",
    "PositionalEncoding",
    "AbsolutePE",
    "SinusoidalPE",
    "NoPE",
    "RotaryEmbedding",
    "ALiBi",
    "T5RelativeBias",
    "KerpleLog",
    "FIRE",
    "ForgetGate",
    "ForgetGateRoPE",
    "StickBreaking",
    "ContextualPosition",
]

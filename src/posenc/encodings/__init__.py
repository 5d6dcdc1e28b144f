"""Registry of positional encodings: name -> class, and the one-letter code used in layer patterns.

Adding an encoding: write ``posenc/encodings/<name>.py`` with a :class:`PositionalEncoding`
subclass (its ``where`` and the hook it overrides), add one line to ``ENCODINGS`` below, and add
``tests/test_<name>.py``. Attention and the model need no change.
"""

from __future__ import annotations

from posenc.encodings.absolute import AbsolutePE, SinusoidalPE
from posenc.encodings.alibi import ALiBi
from posenc.encodings.base import PositionalEncoding
from posenc.encodings.fire import FIRE
from posenc.encodings.kerple import KerpleLog
from posenc.encodings.nope import NoPE
from posenc.encodings.rope import RotaryEmbedding
from posenc.encodings.t5 import T5RelativeBias

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
}

CODES: dict[str, str] = {code: name for name, (code, _) in ENCODINGS.items()}

__all__ = [
    "ENCODINGS",
    "CODES",
    "PositionalEncoding",
    "AbsolutePE",
    "SinusoidalPE",
    "NoPE",
    "RotaryEmbedding",
    "ALiBi",
    "T5RelativeBias",
    "KerpleLog",
    "FIRE",
]

"""NoPE: no positional encoding (Kazemnejad et al. 2023, "The Impact of Positional Encoding on
Length Generalization in Transformers", arXiv:2305.19466; Haviv et al. 2022).

Where it acts: nowhere (``where = "none"``). A causal decoder still infers positions from the
causal mask alone, which is the point of the experiment. This class exists so that "no positional
signal" is an explicit, named choice in a layer pattern (``"N"``) rather than a missing argument.

Golden test: the attention output equals plain causal attention on the same q, k, v.
"""

from __future__ import annotations

from posenc.encodings.base import EncodingConfig, PositionalEncoding
from posenc.spec import spec


class NoPE(PositionalEncoding):
    """Explicitly no positional signal: every hook is the identity / no bias."""

    where = "none"
    position_axes = None

    @spec
    class Config(EncodingConfig):
        """NoPE has no options."""

    def __init__(self) -> None:
        super().__init__()
        self.config = self.Config()

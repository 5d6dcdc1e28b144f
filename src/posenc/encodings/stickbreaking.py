"""Stick-breaking attention (Tan, Shen, Panda, Courville & others, ICLR 2025, "Scaling Stick-Breaking
Attention: An Efficient Implementation and In-depth Study", arXiv:2410.17980): no positional
encoding, and no softmax.

Where it acts: in how scores become attention weights (``weighting``); ``where = "none"``: q and k
are not rotated and no bias is added. With z_ij = q_i . k_j / sqrt(d), query i gives key j

    A_ij = sigmoid(z_ij) * prod_{j < k < i} (1 - sigmoid(z_ik)),

computed in log space: the nearest key takes its share of a unit stick first, each farther key a
share of what is left, so order -- position -- comes from the weighting itself. As the reference
(shawntan/stickbreaking-attention, ``sb_ref.py`` and its tests) does by default, a query does not
attend to itself (``attend_current=False``) and the stick left over, 1 - sum_j A_ij, multiplies the
query's own value (``remainder="self"``): the first token of a sequence, which sees no other key,
outputs its own value. ``remainder="drop"`` leaves the rest of the stick unused; with
``attend_current=True`` a query's own key is the nearest one.

Linear memory: the blockwise kernel scores a query block against its whole row of visible keys
at once, so the product from the diagonal backward is a reverse cumulative sum along the row;
backward recomputes each block. Windows, chunks and packed documents mask keys out of the product
(a document's first token outputs its own value).

Golden test (tests/test_stickbreaking.py): a float64 transcription of the reference's
``stickbreaking`` and its ``ref_fwd``, values and gradients, both ``attend_current`` settings.
"""

from __future__ import annotations

from typing import Literal

from posenc.encodings.base import EncodingConfig, ModelDims, PositionalEncoding, Weighting
from posenc.spec import check_bool, check_choice, spec


class StickBreaking(PositionalEncoding):
    """Stick-breaking weights instead of a softmax, and no positional signal besides them."""

    where = "none"

    #: no softmax, so no denominator for a sink: the stick left over already goes nowhere or to the query
    takes_sinks = False

    @spec
    class Config(EncodingConfig):
        """``attend_current``: a query may attend to itself; ``remainder``: where the rest of the stick
        goes, to the query's own value (``"self"``) or nowhere (``"drop"``)."""

        attend_current: bool = False
        remainder: Literal["self", "drop"] = "self"

        def __post_init__(self) -> None:
            check_bool("StickBreaking.Config", "attend_current", self.attend_current)
            check_choice("StickBreaking.Config", "remainder", self.remainder, ("self", "drop"))

    def __init__(self, config: Config, dims: ModelDims | None = None) -> None:
        super().__init__()
        self.config = config

    @classmethod
    def create(cls, *, attend_current: bool = False, remainder: Literal["self", "drop"] = "self") -> StickBreaking:
        return cls(cls.Config(attend_current=attend_current, remainder=remainder))

    @property
    def weighting(self) -> Weighting:
        return Weighting("stickbreaking", self.config.attend_current, self.config.remainder)

    def extra_repr(self) -> str:
        return f"attend_current={self.config.attend_current}, remainder={self.config.remainder!r}"

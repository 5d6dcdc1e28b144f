"""T5 relative position bias (Raffel et al. 2020, "Exploring the Limits of Transfer Learning with a
Unified Text-to-Text Transformer", arXiv:1910.10683, section 2.1).

Where it acts: on the attention scores (``where = "scores"``): head h adds a learned scalar
``table[bucket(i - j), h]`` to the score of query position i and key position j. Distances are
bucketed causally (T5's ``bidirectional=False``): n = max(i - j, 0); the first
``num_buckets // 2`` distances get a bucket each, larger ones share logarithmically spaced
buckets up to ``max_distance``, and everything beyond lands in the last bucket. The bias depends
on positions only through i - j, so it is translation invariant at any offset.

Convention: one table per layer. The model builder makes one encoding per layer, so each layer
learns its own distance profile (T5 computes the bias in the first layer and shares it across the
stack). Per-layer tables cost ``num_buckets * nh`` parameters a layer, need no state shared
between layers, and let a layer pattern mix T5 layers with other encodings freely.

Precision: buckets are computed from integer distances with a float32 logarithm; the table is
read in float32 whatever dtype the model is cast to, and the bias is float32. Initialisation:
N(0, ``init_std``) -- a small bias, so training starts close to no positional signal.

Short runs: under Adam(W) an entry of the table moves by at most about the learning rate per
step, so its reach is bounded by the sum of the schedule's rates (0.88 for the ``cpu`` sweep's
800 steps). The trained ``cpu`` tables sit at that bound (largest entry 0.64-0.86 in every layer
and seed; at most 1.4 logits between a head's buckets), where ALiBi's fixed slopes span tens of
logits: in such runs T5's distance profile is still rising when training stops.

Golden tests (tests/test_t5.py): buckets against T5's ``_relative_position_bucket`` written out
from the paper's code, and the bias against x-transformers' ``RelativePositionBias`` with copied
weights.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from posenc.encodings.base import ModelDims, PositionalEncoding


def t5_causal_buckets(distance: Tensor, num_buckets: int = 32, max_distance: int = 128) -> Tensor:
    """Bucket of each integer distance i - j (negative distances count as 0): int64, same shape."""
    n = distance.clamp_min(0)
    max_exact = num_buckets // 2
    # clamp before the log so that small distances (discarded below) never produce log(0)
    ratio = n.clamp_min(max_exact).to(torch.float32) / max_exact
    large = max_exact + (torch.log(ratio) / math.log(max_distance / max_exact) * (num_buckets - max_exact)).long()
    large = large.clamp_max(num_buckets - 1)
    return torch.where(n < max_exact, n, large)


class T5RelativeBias(PositionalEncoding):
    """A learned per-head scalar for each bucket of causal distance."""

    where = "scores"

    def __init__(self, n_head: int, *, num_buckets: int = 32, max_distance: int = 128, init_std: float = 0.02) -> None:
        super().__init__()
        if not isinstance(n_head, int) or n_head <= 0:
            raise ValueError(f"n_head must be a positive int, got {n_head!r}")
        if not isinstance(num_buckets, int) or num_buckets < 2:
            raise ValueError(f"num_buckets must be an int >= 2, got {num_buckets!r}")
        if not isinstance(max_distance, int) or max_distance <= num_buckets // 2:
            raise ValueError(
                f"max_distance must be an int > num_buckets // 2 = {num_buckets // 2}, got {max_distance!r}"
            )
        self.n_head, self.num_buckets, self.max_distance = n_head, num_buckets, max_distance
        self.relative_attention_bias = nn.Embedding(num_buckets, n_head)
        nn.init.normal_(self.relative_attention_bias.weight, std=init_std)

    @classmethod
    def build(cls, dims: ModelDims, **options: Any) -> T5RelativeBias:
        return cls(dims.n_head, **options)

    def score_bias(self, q_positions: Tensor, k_positions: Tensor) -> Tensor:
        distance = q_positions[..., :, None] - k_positions[..., None, :]  # (Tq, Tk) or (B, Tq, Tk)
        buckets = t5_causal_buckets(distance, self.num_buckets, self.max_distance)
        bias = F.embedding(buckets, self.relative_attention_bias.weight.float())  # (..., Tq, Tk, nh)
        return bias.movedim(-1, -3)  # (nh, Tq, Tk) or (B, nh, Tq, Tk)

    def extra_repr(self) -> str:
        return f"n_head={self.n_head}, num_buckets={self.num_buckets}, max_distance={self.max_distance}"

"""ALiBi: attention with linear biases (Press, Smith & Lewis 2022, "Train Short, Test Long",
arXiv:2108.12409).

Where it acts: on the attention scores (``where = "scores"``): head h adds
``-slope_h * (i - j)`` to the score of query position i and key position j (j <= i under the
causal mask), so the bias depends on positions only through their distance.

Slopes: for n heads, a power of two, slope_h = 2^(-8h/n), h = 1..n (``bias_max`` replaces the 8). For other head counts, the
slopes of the closest smaller power of two p, followed by every other slope of 2p -- the
reference implementation's rule (``get_slopes`` in ofirpress/attention_with_linear_biases).

The bias is a per-head (nh, Tq, Tk) float32 tensor (no batch dimension unless positions differ
per row); it is built from positions on each call, never cached in ``forward``.

Golden test: slopes against the paper's closed form, and attention against an explicit
softmax(QK^T/sqrt(d) + bias)V (tests/test_alibi.py).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor

from posenc.encodings.base import EncodingConfig, ModelDims, PositionalEncoding, bias_over_heads, sizes
from posenc.spec import check_number, spec


def alibi_slopes(n_head: int, bias_max: float = 8.0) -> list[float]:
    """The standard ALiBi slopes for any number of heads; ``bias_max`` replaces the 8 of
    ``2^(-8h/n)`` (MPT's ``alibi_bias_max``, whose head order is this same rule)."""
    if not isinstance(n_head, int) or n_head <= 0:
        raise ValueError(f"n_head must be a positive int, got {n_head!r}")
    p = 2 ** math.floor(math.log2(n_head))
    slopes = [2.0 ** (-bias_max * h / p) for h in range(1, p + 1)]
    if p < n_head:
        slopes += [2.0 ** (-bias_max * h / (2 * p)) for h in range(1, 2 * p + 1, 2)][: n_head - p]
    return slopes


class ALiBi(PositionalEncoding):
    """Per-head linear distance bias on the attention scores."""

    where = "scores"
    elementwise_bias = True

    @spec
    class Config(EncodingConfig):
        """``bias_max``: the 8 of the slopes ``2^(-8h/n)`` (MPT's ``alibi_bias_max``)."""

        bias_max: float = 8.0

        def __post_init__(self) -> None:
            check_number("ALiBi", "bias_max", self.bias_max, low=0)

    def __init__(self, config: Config, dims: ModelDims) -> None:
        super().__init__()
        self.config, self.n_head = config, dims.n_head
        slopes = torch.tensor(alibi_slopes(dims.n_head, float(config.bias_max)), dtype=torch.float32)
        self.register_buffer("slopes", slopes, persistent=False)

    @classmethod
    def create(cls, n_head: int, bias_max: float = 8.0) -> ALiBi:
        return cls(cls.Config(bias_max=bias_max), sizes(n_head))

    def score_bias(
        self,
        q_positions: Tensor,
        k_positions: Tensor,
        q_features: Tensor | None = None,
        k_features: Tensor | None = None,
    ) -> Tensor:
        return bias_over_heads(self, self.n_head, q_positions, k_positions)  # (nh, Tq, Tk) or (B, nh, Tq, Tk)

    def elementwise_score_bias(self) -> Callable[..., Tensor]:
        slopes = self.slopes

        def bias(head, q_position, k_position, q_feature=None, k_feature=None):
            return -slopes[head] * (q_position - k_position).to(torch.float32)

        return bias

    def _apply(self, fn, recurse=True):  # type: ignore[override]
        # keep the slopes exact in float32 whatever dtype the model is cast to
        super()._apply(fn, recurse)
        slopes = alibi_slopes(self.n_head, float(self.config.bias_max))
        self.slopes = torch.tensor(slopes, dtype=torch.float32, device=self.slopes.device)
        return self

    def extra_repr(self) -> str:
        return f"n_head={self.n_head}"

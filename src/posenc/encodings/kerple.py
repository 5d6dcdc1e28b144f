"""KERPLE, logarithmic variant (Chi, Fan, Ramadge & Rudnicky 2022, "KERPLE: Kernelized Relative
Positional Embedding for Length Extrapolation", arXiv:2205.09921).

Where it acts: on the attention scores (``where = "scores"``): head h adds

    -r1_h * log(1 + r2_h * |i - j|)

to the score of query position i and key position j, a conditionally positive definite kernel
of the distance with two learnable parameters per head, r1, r2 > 0. The bias depends on
positions only through |i - j|, so it is translation invariant at any offset.

Positivity: the paper clamps r1, r2 at 1e-2 by writing into the parameters during ``forward``.
Here they are parametrised instead: r = softplus(raw), positive for every raw value, with no
state changed in ``forward`` and a gradient everywhere. Initialisation follows the paper's code:
r1 ~ U(0, 2), r2 ~ U(0, 1), each at least 1e-2.

Weight decay: none on r1, r2 (vectors, which posenc's default rule leaves alone). The paper's
GPT-NeoX code would decay its ``bias_p``/``bias_a`` when weight decay is on, but its training
config sets ``weight-decay: 0.0``, so they were never decayed.

Precision: the kernel is evaluated in float32 (parameters upcast) whatever dtype the model is
cast to; the bias is float32.

Golden test (tests/test_kerple.py): the bias against the paper's formula evaluated in float64.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from posenc.encodings.base import EncodingConfig, ModelDims, PositionalEncoding, bias_over_heads, sizes
from posenc.spec import check_int, spec

_MIN_INIT = 1e-2  # the paper's clamp


def _inverse_softplus(r: Tensor) -> Tensor:
    return r + torch.log(-torch.expm1(-r))


class KerpleLog(PositionalEncoding):
    """Per-head logarithmic distance kernel -r1 * log(1 + r2 * |i - j|)."""

    where = "scores"
    elementwise_bias = True

    @spec
    class Config(EncodingConfig):
        """KERPLE (log) has no options: its two parameters per head are learned."""

    def __init__(self, config: Config, dims: ModelDims) -> None:
        super().__init__()
        n_head = dims.n_head
        check_int("KerpleLog", "n_head", n_head)
        self.config = config
        self.n_head = n_head
        r1 = (2.0 * torch.rand(n_head)).clamp_min(_MIN_INIT)
        r2 = torch.rand(n_head).clamp_min(_MIN_INIT)
        self.raw_r1 = nn.Parameter(_inverse_softplus(r1))
        self.raw_r2 = nn.Parameter(_inverse_softplus(r2))

    @classmethod
    def create(cls, n_head: int) -> KerpleLog:
        return cls(cls.Config(), sizes(n_head))

    @property
    def r1(self) -> Tensor:
        """Kernel amplitude per head (nh,), float32, > 0."""
        return F.softplus(self.raw_r1.float())

    @property
    def r2(self) -> Tensor:
        """Kernel distance scale per head (nh,), float32, > 0."""
        return F.softplus(self.raw_r2.float())

    def score_bias(
        self,
        q_positions: Tensor,
        k_positions: Tensor,
        q_features: Tensor | None = None,
        k_features: Tensor | None = None,
    ) -> Tensor:
        return bias_over_heads(self, self.n_head, q_positions, k_positions)  # (nh, Tq, Tk) or (B, nh, Tq, Tk)

    def elementwise_score_bias(self) -> Callable[..., Tensor]:
        r1, r2 = self.r1, self.r2  # (nh,): the softplus here, once; the kernel indexes them

        def bias(head, q_position, k_position, q_feature=None, k_feature=None):
            return -r1[head] * torch.log1p(r2[head] * (q_position - k_position).abs().to(torch.float32))

        return bias

    def extra_repr(self) -> str:
        return f"n_head={self.n_head}"

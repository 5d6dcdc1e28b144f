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

Scale: the bias is ``scale * table``. A model built from a config sets ``scale = sqrt(head_dim)``, as
x-transformers (``RelativePositionBias(scale=dim_head ** 0.5)``) and GPT-NeoX do: under Adam(W) an
entry of the table moves by at most about the learning rate per step whatever its scale, so the
scale is what lets a short run reach biases of a few logits (posenc 0.2 had no scale, and its
trained ``cpu`` tables sat at that bound: largest entry 0.64-0.86, at most 1.4 logits between a
head's buckets, where ALiBi's slopes span tens of logits). A module built by hand has ``scale=1``
unless given.

Initialisation: the table starts N(0, ``init_std`` = 0.02), so the initial bias has std
0.02 * sqrt(head_dim) (0.11 logits at hs=32): small, as Hugging Face's T5 starts (std d_model^-0.5
on an unscaled table), so that training starts close to no positional signal. x-transformers
starts its table at N(0, 1) (nn.Embedding's default), which times its scale is a std of about 5.7
logits at hs=32 -- a strong random positional prior at step 0, which is why it is not followed.

Weight decay: the table is decayed (posenc's default rule for matrices), as GPT-NeoX, whose scale
this follows, decays its ``ParallelRelativePositionBias.weight``.

Precision: buckets are computed from integer distances with a float32 logarithm; the table is
read in float32 whatever dtype the model is cast to, and the bias is float32.

Golden tests (tests/test_t5.py): buckets against T5's ``_relative_position_bucket`` written out
from the paper's code, and the bias against x-transformers' ``RelativePositionBias`` with copied
weights, at the scale its own attention passes (``dim_head ** 0.5``).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from posenc.encodings.base import EncodingConfig, ModelDims, PositionalEncoding, bias_by_distance, sizes
from posenc.spec import check_int, check_number, spec


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
    elementwise_bias = True

    @spec
    class Config(EncodingConfig):
        """The bucketing (``num_buckets``, ``max_distance``) and the table's initial std."""

        num_buckets: int = 32
        max_distance: int = 128
        init_std: float = 0.02

        def __post_init__(self) -> None:
            check_int("T5RelativeBias.Config", "num_buckets", self.num_buckets, minimum=2)
            check_int("T5RelativeBias.Config", "max_distance", self.max_distance, minimum=self.num_buckets // 2 + 1)
            check_number("T5RelativeBias.Config", "init_std", self.init_std, low=0, low_open=False)

    def __init__(self, config: Config, dims: ModelDims) -> None:
        """The bias of a model of sizes ``dims``, scaled by sqrt(hs) (module docstring)."""
        super().__init__()
        n_head = dims.n_head
        check_int("T5RelativeBias", "n_head", n_head)
        self.config = config
        self.n_head, self.num_buckets, self.max_distance = n_head, config.num_buckets, config.max_distance
        self.scale = math.sqrt(dims.head_dim)
        self.relative_attention_bias = nn.Embedding(config.num_buckets, n_head)
        nn.init.normal_(self.relative_attention_bias.weight, std=config.init_std)

    @classmethod
    def create(
        cls, n_head: int, *, num_buckets: int = 32, max_distance: int = 128, init_std: float = 0.02, scale: float = 1.0
    ) -> T5RelativeBias:
        """By hand: the table times ``scale`` (T5's own 1.0 by default)."""
        check_number("T5RelativeBias", "scale", scale, low=0)
        config = cls.Config(num_buckets=num_buckets, max_distance=max_distance, init_std=init_std)
        module = cls(config, sizes(n_head, head_dim=1))
        module.scale = float(scale)
        return module

    def score_bias(
        self,
        q_positions: Tensor,
        k_positions: Tensor,
        q_features: Tensor | None = None,
        k_features: Tensor | None = None,
    ) -> Tensor:
        return bias_by_distance(self, self.n_head, q_positions, k_positions, by_pair=self._bias_by_pair)

    def _bias_by_pair(self, q_positions: Tensor, k_positions: Tensor) -> Tensor:
        distance = q_positions[..., :, None] - k_positions[..., None, :]  # (Tq, Tk) or (B, Tq, Tk)
        buckets = t5_causal_buckets(distance, self.num_buckets, self.max_distance)
        bias = F.embedding(buckets, self.relative_attention_bias.weight.float())  # (..., Tq, Tk, nh)
        return bias.movedim(-1, -3) * self.scale  # (nh, Tq, Tk) or (B, nh, Tq, Tk)

    def elementwise_score_bias(self) -> Callable[..., Tensor]:
        # the bucket of every distance up to max_distance (all beyond share the last), computed here
        # by the same formula as score_bias, so that the kernel only looks it up
        buckets = t5_causal_buckets(
            torch.arange(self.max_distance + 1, device=self.relative_attention_bias.weight.device),
            self.num_buckets,
            self.max_distance,
        )
        # float32 before the kernel indexes it: its unfused backward accumulates in the table's dtype
        table, scale, last = self.relative_attention_bias.weight.float(), self.scale, self.max_distance

        def bias(head, q_position, k_position, q_feature=None, k_feature=None):
            bucket = buckets[(q_position - k_position).clamp(0, last)]
            return table[bucket, head] * scale

        return bias

    def extra_repr(self) -> str:
        return f"n_head={self.n_head}, num_buckets={self.num_buckets}, max_distance={self.max_distance}, scale={self.scale:.4g}"

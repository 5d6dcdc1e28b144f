"""FIRE: functional interpolation for relative positions (Li et al. 2023, "Functional
Interpolation for Relative Positions Improves Long Context Transformers", arXiv:2310.04418).

Where it acts: on the attention scores (``where = "scores"``): the score of query position i and
key position j gets, for every head at once,

    f_theta( psi(i - j) / psi(max(L, i)) ),    psi(x) = log(|c * x| + 1),

where f_theta is an MLP 1 -> ``mlp_width`` (32) -> nh with a ReLU, c is a learnable scale and L a
learnable threshold, L = |L_multiplier * init_threshold| (the paper's parametrisation: a fixed
initial value times a learnable multiplier initialised to 1). Defaults are the paper's: c = 0.1,
init_threshold = 512, and eps = 1e-6 added to the denominator.

Invariance: while the query position i stays below L the denominator is the constant psi(L), so
the bias depends on i - j only (translation invariant). Beyond L the input is psi(i - j) / psi(i),
which lies in [0, 1] for 0 <= j <= i: distances are interpolated progressively into the range
seen in training, the farthest key (j = 0) always maps to 1 and the query itself to 0.

Convention: positions enter as absolute values (the normaliser reads the query's own position),
so FIRE, unlike ALiBi or T5, is not invariant to a common offset once i >= L.

Initialisation: the MLP keeps nn.Linear's own (weights and biases U(-1/sqrt(fan_in), 1/sqrt(fan_in))),
as the class in the paper's appendix code does (public copy: mcleish7/arithmetic,
cramming/architectures/embeddings.py, class FIRE); c starts at ``init_c`` and the threshold
multiplier at 1. That repository's model-level init later redraws every nn.Linear (xavier normal
with zero biases); posenc does not: with zero biases on inputs that are never negative, each hidden
unit with a negative weight outputs 0 with zero gradient for the whole run (179 of 384 units in
posenc 0.2's cpu runs), so the GPT's own initialisation leaves FIRE's parameters alone.

Weight decay, as that repository's optimizer groups: every parameter but the MLP's biases (its
``limited_decay_keys`` exempt names containing "bias"), so the MLP's weights, c and the threshold
multiplier are decayed.

Evaluation: the MLP of one scalar input is piecewise linear, with a kink where each hidden unit
switches on (x = -b1_k / w1_k), so ``score_bias`` sorts the ``mlp_width`` kinks once per call,
computes each segment's slope and intercept per head (differentiable in every parameter), and
evaluates each score as ``slope[seg(x)] * x + intercept[seg(x)]`` -- exact up to rounding, and per
score it holds a segment index and two values per head instead of the ``2 * mlp_width`` hidden
activations of the direct MLP (``mlp``), which is what made FIRE's attention tiles the largest at
long contexts.

Precision: evaluated in float32 (parameters upcast) whatever dtype the model is cast to; the bias
is float32.

Golden test (tests/test_fire.py): the bias against the paper's formula evaluated in float64 with
the module's parameters.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from posenc.encodings.base import EncodingConfig, ModelDims, PositionalEncoding, sizes
from posenc.spec import check_int, check_number, spec


def _normalized(i: Tensor, j: Tensor, c: Tensor, threshold: Tensor, eps: float) -> Tensor:
    """psi(i - j) / (psi(max(L, i)) + eps), psi(x) = log(|c x| + 1): elementwise, float32."""
    i = i.to(torch.float32)
    psi = lambda x: torch.log((c * x).abs() + 1.0)  # noqa: E731
    return psi(i - j.to(torch.float32)) / (psi(torch.maximum(i, threshold)) + eps)


class FIRE(PositionalEncoding):
    """Learned function of the progressively normalised log distance, one output per head."""

    where = "scores"
    elementwise_bias = True

    @spec
    class Config(EncodingConfig):
        """FIRE's options, defaults as the paper: the MLP's hidden width, the initial scale c of
        psi, the initial threshold L and the eps added to the normaliser."""

        mlp_width: int = 32
        init_c: float = 0.1
        init_threshold: float = 512.0
        eps: float = 1e-6

        def __post_init__(self) -> None:
            check_int("FIRE.Config", "mlp_width", self.mlp_width)
            check_number("FIRE.Config", "init_c", self.init_c, low=0)
            check_number("FIRE.Config", "init_threshold", self.init_threshold, low=0)
            check_number("FIRE.Config", "eps", self.eps, low=0, low_open=False)

    def __init__(self, config: Config, dims: ModelDims) -> None:
        super().__init__()
        n_head, mlp_width, init_c, init_threshold = dims.n_head, config.mlp_width, config.init_c, config.init_threshold
        check_int("FIRE", "n_head", n_head)
        self.config = config
        self.n_head, self.mlp_width, self.eps = n_head, mlp_width, config.eps
        # nn.Linear's own initialisation, as the paper's code (its MLP is two nn.Linear layers)
        self.mlp_in = nn.Linear(1, mlp_width)
        self.mlp_out = nn.Linear(mlp_width, n_head)
        self.c = nn.Parameter(torch.tensor(float(init_c)))
        self.register_buffer("init_threshold", torch.tensor(float(init_threshold)))
        self.threshold_multiplier = nn.Parameter(torch.tensor(1.0))

    @classmethod
    def create(
        cls, n_head: int, *, mlp_width: int = 32, init_c: float = 0.1, init_threshold: float = 512.0, eps: float = 1e-6
    ) -> FIRE:
        config = cls.Config(mlp_width=mlp_width, init_c=init_c, init_threshold=init_threshold, eps=eps)
        return cls(config, sizes(n_head))

    @property
    def threshold(self) -> Tensor:
        """L, the query position below which the bias is translation invariant (float32 scalar)."""
        return (self.threshold_multiplier.float() * self.init_threshold.float()).abs()

    def normalized_distance(self, q_positions: Tensor, k_positions: Tensor) -> Tensor:
        """The MLP's input psi(i - j) / psi(max(L, i)): (Tq, Tk) or (B, Tq, Tk), float32."""
        q, k = q_positions[..., :, None], k_positions[..., None, :]
        return _normalized(q, k, self.c.float(), self.threshold, self.eps)

    def score_bias(
        self,
        q_positions: Tensor,
        k_positions: Tensor,
        q_features: Tensor | None = None,
        k_features: Tensor | None = None,
    ) -> Tensor:
        x = self.normalized_distance(q_positions, k_positions)  # (..., Tq, Tk)
        kinks, slope, intercept = self.segments()
        seg = torch.searchsorted(kinks, x.detach().contiguous())  # (..., Tq, Tk)
        # (nh, ..., Tq, Tk): per head, the line of each score's segment, looked up by gather (whose
        # gradient is a scatter_add: indexing's accumulating index_put was 23% of a T=4096 step)
        flat = seg.reshape(1, -1).expand(self.n_head, -1)
        per_head = (slope.gather(1, flat) * x.reshape(1, -1) + intercept.gather(1, flat)).view(-1, *seg.shape)
        return per_head if per_head.dim() == 3 else per_head.movedim(0, 1)  # (nh, Tq, Tk) or (B, nh, Tq, Tk)

    def elementwise_score_bias(self) -> Callable[..., Tensor]:
        """The piecewise-linear form of ``score_bias`` per score: the segment is the number of
        kinks below x (``mlp_width`` comparisons, as ``searchsorted``), then one line per head.
        Slopes and intercepts are computed here and indexed once in the kernel; c and L enter as a
        copy per head, indexed by the head once (the rules of ``elementwise_score_bias``)."""
        kinks, slope, intercept = self.segments()
        c = self.c.float().expand(self.n_head).clone()  # (nh,): tensors of their own, not views
        threshold = self.threshold.expand(self.n_head).clone()
        eps, width = self.eps, self.mlp_width

        def bias(head, q_position, k_position, q_feature=None, k_feature=None):
            x = _normalized(q_position, k_position, c[head], threshold[head], eps)
            seg = sum((kinks[unit] < x).to(torch.int64) for unit in range(width))
            return slope[head, seg] * x + intercept[head, seg]

        return bias

    def segments(self) -> tuple[Tensor, Tensor, Tensor]:
        """The MLP as a piecewise-linear function (module docstring): the sorted kinks (width,) and,
        per head and segment, slope and intercept (nh, width + 1); float32, differentiable."""
        w1, b1 = self.mlp_in.weight.float()[:, 0], self.mlp_in.bias.float()  # (width,)
        w2, b2 = self.mlp_out.weight.float(), self.mlp_out.bias.float()  # (nh, width), (nh,)
        with torch.no_grad():
            kinks = torch.where(w1 != 0, -b1 / w1, torch.full_like(b1, float("inf"))).sort().values
            # one point inside each segment: between neighbouring kinks, and beyond the ends
            finite = torch.where(torch.isfinite(kinks), kinks, torch.zeros_like(kinks))  # static shapes: compiles
            lo, hi = finite.min() - 1.0, finite.max() + 1.0
            edges = torch.cat((lo[None], kinks.clamp(lo, hi), hi[None]))
            inside = (edges[:-1] + edges[1:]) / 2  # (width + 1,)
            active = (inside[:, None] * w1 + b1 > 0).float()  # (width + 1, width): units on in each segment
        slope = (w2 * w1) @ active.T  # (nh, width + 1)
        intercept = (w2 * b1) @ active.T + b2[:, None]
        return kinks, slope, intercept

    def mlp(self, x: Tensor) -> Tensor:
        """The MLP evaluated directly on inputs (...,) -> (..., nh): the reference for ``segments``."""
        h = F.relu(F.linear(x[..., None], self.mlp_in.weight.float(), self.mlp_in.bias.float()))
        return F.linear(h, self.mlp_out.weight.float(), self.mlp_out.bias.float())

    def decays(self, name: str, parameter: nn.Parameter) -> bool:
        return not name.endswith("bias")  # the reference's groups (module docstring)

    def extra_repr(self) -> str:
        return f"n_head={self.n_head}, mlp_width={self.mlp_width}"

"""The protocol every positional encoding follows: where it acts, its hooks, and its config.

An encoding acts in exactly one place (``where``):

- ``"input"``: :meth:`~PositionalEncoding.embed` returns vectors added to the token embeddings once,
  before the first layer (learned or sinusoidal absolute tables);
- ``"qk"``: :meth:`~PositionalEncoding.rotate` transforms queries and keys inside every attention
  layer (RoPE);
- ``"scores"``: :meth:`~PositionalEncoding.score_bias` returns an additive bias for the attention
  scores (ALiBi, T5, KERPLE, FIRE, and content-dependent biases);
- ``"none"``: no positional signal at all (NoPE).

Everything attention or the model asks of an encoding is declared here with a neutral default, so
neither contains an encoding-specific branch or a ``getattr`` probe:

=========================  ======================================================================
``embed``                  vectors added at the input (``where="input"``)
``rotate``                 q, k of the new tokens together (static rotations: the cache holds rotated keys)
``rotate_queries/_keys``   q or k alone, at a total length ``seq_len`` (``length_dependent`` encodings)
``length_dependent``       the rotation depends on the total length: the cache must hold UN-rotated
                           keys and rotate all of them again at every step
``rotation_state``         what the rotation at a total length depends on; when it changes, the
                           hidden states of every cached token are stale and the model recomputes
``token_features``         per-token features computed from the layer's input ``x`` (content-dependent
                           biases, e.g. forget gates); attention caches them beside the keys
``score_bias``             additive scores for (query, key) positions and, when the encoding has
                           features, the queries' and keys' features
``elementwise_score_bias`` the same bias as a function of one head at one (query, key) pair,
                           elementwise (``elementwise_bias``): FlexAttention compiles it in its kernel
``content_bias``           additive scores from the tile's queries and their scaled q.k scores
                           (CoPE's gated counts), called by the kernel on each tile when the
                           encoding says ``has_content_bias``
``supports_segments``      packed documents (document masks) are exact with this encoding
``head_dim``, ``layout``,  what a q/k encoding acts on (None = any): the attention checks them
``scaling``                against its own widths; ``scaling`` is a RoPE frequency schedule dict
``decays``                 which of its parameters get weight decay
``weighting``              how scores become attention weights: softmax (every encoding but one),
                           or stick-breaking, which needs no positional encoding at all
=========================  ======================================================================

Each encoding class has a nested ``Config`` (:class:`EncodingConfig`): its options as a frozen
dataclass that checks them, and ``build(dims)`` that makes the module for a model of sizes
``dims``. The registry :data:`posenc.encodings.ENCODINGS` maps a name to the class.

Parameters are initialised by the encoding itself, as its reference does (the GPT's GPT-2
initialisation leaves them alone). Shapes: B batch, T tokens, C channels, nh heads, hs head size.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

import torch
from torch import Tensor, nn

from posenc.built import BuiltFromConfig
from posenc.spec import Spec, spec
from posenc.weight_init import WeightInit

Where = Literal["input", "qk", "scores", "none"]


@dataclass(frozen=True)
class ModelDims:
    """The sizes of the model an encoding is built for: all that :meth:`EncodingConfig.build` may
    read, so that encodings know nothing of ``GPTConfig``."""

    n_embd: int
    n_head: int
    block_size: int
    n_layer: int = 1
    #: size of the vectors an encoding of q/k acts on; None means n_embd // n_head (an attention
    #: variant with its own head size, like MLA's decoupled rotary key, sets it)
    head_dim: int | None = None

    def __post_init__(self) -> None:
        if self.head_dim is None:
            object.__setattr__(self, "head_dim", self.n_embd // self.n_head)


def sizes(n_head: int = 1, head_dim: int | None = None, n_embd: int | None = None, block_size: int = 1) -> ModelDims:
    """The :class:`ModelDims` of an encoding built by hand from the sizes it reads (the rest fill in)."""
    n_embd = (n_head if head_dim is None else n_head * head_dim) if n_embd is None else n_embd
    return ModelDims(n_embd=n_embd, n_head=n_head, block_size=block_size, head_dim=1 if head_dim is None else head_dim)


@dataclass(frozen=True)
class Weighting:
    """How the attention kernel turns a row of scores into weights.

    ``"softmax"``: the usual. ``"stickbreaking"`` (Tan et al., ICLR 2025): key j of query i gets
    sigmoid(z_ij) times the product of (1 - sigmoid(z_ik)) over the keys k between them, so the
    nearest keys claim their share first; ``attend_current`` lets a query take itself as the nearest
    key, and what is left of the stick (1 - the sum of the weights) goes to the query's own value
    (``remainder="self"``) or nowhere (``"drop"``).
    """

    kind: Literal["softmax", "stickbreaking"] = "softmax"
    attend_current: bool = False
    remainder: Literal["self", "drop"] = "self"

    def __post_init__(self) -> None:
        if self.kind not in ("softmax", "stickbreaking"):
            raise ValueError(f"Weighting.kind must be 'softmax' or 'stickbreaking', got {self.kind!r}")
        if self.remainder not in ("self", "drop"):
            raise ValueError(f"Weighting.remainder must be 'self' or 'drop', got {self.remainder!r}")


SOFTMAX = Weighting()


@spec
class EncodingConfig(Spec):
    """Base of every encoding's ``Config``: the encoding's own options (its fields), checked when
    made; ``check(dims)`` checks them against the model's sizes; ``build(dims)`` makes the module."""

    #: the class this config builds (set on ``Cls.Config`` when ``Cls`` is defined)
    encoding: ClassVar[type[PositionalEncoding]]

    @property
    def where(self) -> Where:
        return self.encoding.where

    def options(self) -> dict[str, Any]:
        """The fields by name (the keyword arguments of ``Encoding.build(dims, **options)``)."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}

    def check(self, dims: ModelDims) -> None:
        """Refuse sizes this encoding cannot act on (default: any)."""

    def build(self, dims: ModelDims) -> PositionalEncoding:
        self.check(dims)
        return self.encoding(self, dims)


class PositionalEncoding(nn.Module, metaclass=BuiltFromConfig):
    """Base class: a module that injects position information at one place (``where``).

    An encoding's constructor is ``Encoding(config, dims)``: its ``Config`` and the model's sizes
    (what ``config.build(dims)`` calls, :mod:`posenc.built`); ``Encoding.create(...)`` (and calling
    the class with sizes as numbers) takes flat keyword arguments, ``Encoding.build(dims, **options)``
    the config's fields.
    """

    where: ClassVar[Where] = "none"
    Config: ClassVar[type[EncodingConfig]] = EncodingConfig
    #: packed documents are exact: nothing of one document reaches another through the encoding
    supports_segments: ClassVar[bool] = True
    #: the kernel calls ``content_bias`` on every tile (it needs the tile's queries and scores)
    has_content_bias: ClassVar[bool] = False
    #: attention sinks (a logit in the softmax's denominator) can join its weighting
    takes_sinks: ClassVar[bool] = True
    #: float32 features per head that each token adds to the KV cache (``token_features``' last dim)
    cached_features: ClassVar[int] = 0
    #: ``elementwise_score_bias`` is defined, so FlexAttention can compile the bias into its kernel
    elementwise_bias: ClassVar[bool] = False
    #: largest position + 1 the encoding can represent; None means any position
    max_positions: int | None = None
    #: position axes it reads: positions (axes, B, T) when > 1 (M-RoPE); None: it reads none (NoPE)
    position_axes: int | None = 1
    #: the q/k head size it acts on, the channel-pair layout it rotates, its frequency schedule
    #: (None: any size / no pairs / no schedule)
    head_dim: int | None = None
    layout: str | None = None
    scaling: Any = None

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "Config" in cls.__dict__:
            cls.Config.encoding = cls

    @classmethod
    def build(cls, dims: ModelDims, **options: Any) -> PositionalEncoding:
        """The encoding for one layer (or the input) of a model of size ``dims``; ``options`` are
        the fields of its config."""
        return cls(cls.Config(**options), dims)

    @classmethod
    def create(cls, *args: Any, **options: Any) -> PositionalEncoding:
        """By hand, for an encoding that reads no sizes: ``options`` are the fields of its config."""
        if args:
            raise TypeError(
                f"{cls.__name__} takes (config, dims), or .build(dims, **options); it has no create() "
                f"taking sizes, got {args!r}"
            )
        return cls(cls.Config(**options), None)

    def init_weights(self, init: WeightInit) -> None:
        """The model's initialisation of this encoding's parameters (default: none; an encoding keeps
        what its constructor drew, as its reference does)."""

    @property
    def length_dependent(self) -> bool:
        """True when the rotation depends on the total sequence length (the cache keeps un-rotated keys)."""
        return False

    def rotation_state(self, seq_len: int) -> Hashable:
        """What the rotation at total length ``seq_len`` depends on (None: nothing). Re-rotating
        cached keys is not enough when it changes: every cached token's hidden state in the layers
        above was computed under the old rotation, so the GPT recomputes them (module docstring of
        :mod:`posenc.model`)."""
        return None

    def embed(self, positions: Tensor) -> Tensor | None:
        """Vectors added to the token embeddings: positions (T,) or (B, T) -> (T, C) or (B, T, C)."""
        return None

    def rotate(self, q: Tensor, k: Tensor, positions: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """Transform q, k of shape (B, nh, T, hs) given their positions (T,) or (B, T)."""
        return q, k

    def rotate_queries(self, q: Tensor, positions: Tensor | None = None, *, seq_len: Any = None) -> Tensor:
        """Transform queries alone, at total length ``seq_len`` (past + current tokens)."""
        return q

    def rotate_keys(self, k: Tensor, positions: Tensor | None = None, *, seq_len: Any = None) -> Tensor:
        """Transform keys alone, at total length ``seq_len``."""
        return k

    def token_features(self, x: Tensor, past: Tensor | None = None) -> Tensor | None:
        """Per-token features (B, nh, T, F) from the layer input x (B, T, C), or None. ``past``: the
        features of the tokens already cached (B, nh, T_past, F), for features that accumulate."""
        return None

    def score_bias(
        self,
        q_positions: Tensor,
        k_positions: Tensor,
        q_features: Tensor | None = None,
        k_features: Tensor | None = None,
    ) -> Tensor | None:
        """Additive attention-score bias, (nh, Tq, Tk) for (T,) positions or (B, nh, Tq, Tk) for (B, T)
        positions or with features. Features are :meth:`token_features` of the queries (..., Tq, F)
        and of the keys (..., Tk, F), sliced like the positions."""
        return None

    def elementwise_score_bias(self) -> Callable[..., Tensor]:
        """:meth:`score_bias` as a function of one score, ``f(head, q_position, k_position,
        q_feature=None, k_feature=None) -> float32 bias``, for encodings with ``elementwise_bias``.

        FlexAttention compiles ``f`` into its kernel (a ``score_mod``, called with 0-d tensors: the
        head index, the two positions and the two tokens' one feature), and its compiler sets three
        rules (docs/attention.md): ``f`` uses elementwise operations only (no reduction, no
        per-head vector computed and then indexed: compute such tensors here, once per call, and
        let ``f`` index them); ``f`` indexes each tensor that needs a gradient at most once
        (FlexAttention's backward compiles no second index of one), and never is a view (a
        captured view that needs a gradient loses it in torch 2.13: ``.clone()`` it); a scalar
        parameter enters as a copy per head, indexed by the head. ``f``'s arguments also broadcast, so
        ``bias_over_heads`` can evaluate it over a whole tile. tests/test_flex.py checks it
        against ``score_bias`` in values and gradients, and FlexAttention's backward graph."""
        raise NotImplementedError(f"{type(self).__name__} has no elementwise score bias (elementwise_bias=False)")

    @property
    def weighting(self) -> Weighting:
        """How the kernel turns this layer's scores into weights (softmax unless the encoding says)."""
        return SOFTMAX

    def content_bias(self, q: Tensor, scores: Tensor, visible: Tensor, scale: float) -> Tensor | None:
        """Additive bias from one tile's queries q (B, nh, bq, hs) and their scaled scores q.k * scale
        (B, nh, bq, span) over its visible keys (``visible``: (bq, span) or (B, 1, bq, span)); the
        tile holds each query's whole row of visible keys. None: no such bias."""
        return None

    def decays(self, name: str, parameter: nn.Parameter) -> bool:
        """Whether ``parameter`` (named ``name`` inside this encoding) gets weight decay. The default is
        the model's rule (matrices only); an encoding overrides it to follow its reference."""
        return parameter.dim() >= 2


def bias_over_heads(encoding: PositionalEncoding, n_head: int, q_positions: Tensor, k_positions: Tensor) -> Tensor:
    """``encoding.elementwise_score_bias()`` over every head and (query, key) pair: (nh, Tq, Tk) for
    (T,) positions, (B, nh, Tq, Tk) for (B, T): a ``score_bias`` for encodings whose elementwise
    form is also cheap over a whole tile."""
    heads = torch.arange(n_head, device=q_positions.device).view(-1, 1, 1)  # (nh, 1, 1)
    bias = encoding.elementwise_score_bias()
    return bias(heads, q_positions[..., None, :, None], k_positions[..., None, None, :])


def bias_by_distance(
    encoding: PositionalEncoding,
    n_head: int,
    q_positions: Tensor,
    k_positions: Tensor,
    by_pair: Callable[[Tensor, Tensor], Tensor] | None = None,
) -> Tensor:
    """:func:`bias_over_heads` for an encoding whose bias is a function of the distance q - k alone.

    On CPU, when both position vectors are runs of consecutive integers (a whole sequence or a tile
    of one: every call without per-row positions), the bias is computed once per distinct distance
    (Tq + Tk - 1 of them) and laid out as the (nh, Tq, Tk) Toeplitz matrix in one copy, whose
    backward sums the diagonals: the same values as over every (query, key) pair, at a fraction of
    the work where a pair costs more than a copy (T5: its table's gradient by pair was a third of a
    T=4096 training step; ALiBi's and KERPLE's two or three operations per pair measured the same
    either way and stay by pair). Elsewhere, and on other devices (the check of the positions would
    wait for the device), every pair: by ``by_pair(q_positions, k_positions)``, default
    :func:`bias_over_heads`."""
    if not (_consecutive(q_positions) and _consecutive(k_positions)):
        if by_pair is not None:
            return by_pair(q_positions, k_positions)
        return bias_over_heads(encoding, n_head, q_positions, k_positions)
    Tq, Tk = q_positions.shape[0], k_positions.shape[0]
    farthest = int(q_positions[-1]) - int(k_positions[0])
    distances = farthest - torch.arange(Tq + Tk - 1, device=q_positions.device)  # descending
    heads = torch.arange(n_head, device=q_positions.device).view(-1, 1)
    per_distance = encoding.elementwise_score_bias()(heads, distances, torch.zeros((), dtype=distances.dtype))
    # row s of the windows is distances s .. s + Tk - 1 of that list: query Tq - 1 - s against every key;
    # index_select copies them in query order, row-major (a flip kept the windows' key-major strides,
    # and the fused kernel read that mask at a third of the speed)
    rows = torch.arange(Tq - 1, -1, -1, device=q_positions.device)
    return per_distance.expand(n_head, -1).unfold(-1, Tk, 1).index_select(-2, rows)


def _consecutive(positions: Tensor) -> bool:
    """Whether ``positions`` is a (T,) CPU run of consecutive integers."""
    if positions.dim() != 1 or positions.device.type != "cpu" or positions.is_floating_point():
        return False
    return positions.shape[0] < 2 or bool((positions.diff() == 1).all())


def check_positions(positions: Tensor, limit: int | None, name: str = "positions", axes: bool = False) -> None:
    """Refuse non-integer, negative or (when ``limit`` is set) too large positions with a clear error;
    ``axes``: (n_axes, B, T) positions, one row per axis (M-RoPE), are allowed too.

    Skipped while compiling (the compiled training path only passes ``arange`` positions); on an
    accelerator the value check is an on-device assert rather than a host sync.
    """
    if torch.compiler.is_compiling():
        return
    if positions.dtype not in (torch.int64, torch.int32):
        raise TypeError(f"{name} must be an integer tensor, got dtype {positions.dtype}")
    if positions.dim() not in ((1, 2, 3) if axes else (1, 2)):
        shapes = "(T,), (B, T) or (n_axes, B, T)" if axes else "(T,) or (B, T)"
        raise ValueError(f"{name} must have shape {shapes}, got {tuple(positions.shape)}")
    if positions.numel() == 0:
        return
    if positions.device.type != "cpu":  # no host sync on an accelerator: assert on the device
        ok = positions >= 0 if limit is None else (positions >= 0) & (positions < limit)
        torch._assert_async(ok.all(), f"{name} must be >= 0" + ("" if limit is None else f" and < {limit}"))
        return
    lo, hi = int(positions.min()), int(positions.max())
    if lo < 0:
        raise ValueError(f"{name} must be >= 0, got a minimum of {lo}")
    if limit is not None and hi >= limit:
        raise ValueError(
            f"{name} go up to {hi}, but this encoding represents positions < {limit} "
            f"(its table size); use a relative encoding or a larger block_size"
        )

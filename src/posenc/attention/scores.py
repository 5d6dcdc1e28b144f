"""What shapes an attention score, as one object every kernel path takes: :class:`ScoreInputs`.

A score of query i and key j is ``q.k * scale``, then ``softcap * tanh(score / softcap)`` when a
logit ``softcap`` is set, then ``+ score_bias`` (an encoding's, from the positions and per-token
features) and ``+ content_bias`` (CoPE); the visibility rule of :mod:`posenc.attention.mask` (the
layer's :class:`~posenc.attention.mask.Mask`, document ids, key padding) removes the keys a query
cannot see; the ``weighting`` turns the scores into weights (softmax, with per-head ``sinks`` in
its denominator, or stick-breaking). :func:`posenc.attention.kernel.attend` and its four paths
take these as one :class:`ScoreInputs`, checked here once for every path. Shapes: B batch, nh
query heads, n_kv key/value heads, Tq queries (the last Tq of the Tk keys), hs head size.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from posenc.attention.mask import Mask, as_mask
from posenc.encodings.base import SOFTMAX, Weighting

#: (q_positions, k_positions, q_features, k_features) of a tile -> additive float bias (nh, bq, bk) or
#: (B, nh, bq, bk), or None. Positions are (bq,) / (bk,) or (B, bq) / (B, bk). An encoding's ``score_bias``.
ScoreBias = Callable[..., "Tensor | None"]
#: (head, q position, k position, q feature, k feature) -> float32 bias of one score, elementwise:
#: what an encoding's ``elementwise_score_bias()`` returns, the form FlexAttention compiles.
ElementwiseBias = Callable[..., Tensor]
#: (q block (B, nh, bq, hs), its scaled scores (B, nh, bq, span), the visibility mask, scale) -> additive
#: bias (B, nh, bq, span) or None. An encoding's ``content_bias`` (CoPE).
ContentBias = Callable[[Tensor, Tensor, Tensor, float], "Tensor | None"]


@dataclasses.dataclass(frozen=True, eq=False)
class ScoreInputs:
    """Everything beyond q, k and v that shapes a causal attention score (None = absent).

    ``score_bias``: the encoding's ``score_bias`` method when its ``where == "scores"`` (the flex
    path reads it as the elementwise bias itself); ``elementwise_score_bias``: its
    ``elementwise_score_bias`` method when it has one, called only when the flex path runs;
    ``content_bias``: CoPE's. ``q_positions``/``k_positions`` ((Tq,)/(Tk,) or (B, Tq)/(B, Tk)) and
    ``q_features``/``k_features`` ((..., Tq, F)/(..., Tk, F)) are what the bias receives, tile by
    tile; positions default to ``arange(Tk - Tq, Tk)`` and ``arange(Tk)``. ``mask``: the layer's
    window and chunk; ``q_segments``/``k_segments`` (B, Tq)/(B, Tk): document ids, a query seeing
    its own document only; ``key_padding_mask`` (B, Tk) bool, True = a real token. ``softcap``:
    Gemma 2's logit cap; ``sinks`` (nh,): one logit per head in the softmax's denominator
    (gpt-oss); ``weighting``: softmax or stick-breaking. ``learned_bias``: whether the bias will
    take a gradient (None: whenever gradients are on), for the choice of path. ``block_mask``: a
    FlexAttention ``BlockMask`` of this visibility built once per forward
    (:func:`~posenc.attention.flex.flex_block_mask`), read by the flex path only.
    """

    score_bias: ScoreBias | None = None
    elementwise_score_bias: Callable[[], ElementwiseBias] | None = None
    content_bias: ContentBias | None = None
    q_positions: Tensor | None = None
    k_positions: Tensor | None = None
    q_features: Tensor | None = None
    k_features: Tensor | None = None
    mask: Mask = Mask()
    q_segments: Tensor | None = None
    k_segments: Tensor | None = None
    key_padding_mask: Tensor | None = None
    softcap: float | None = None
    sinks: Tensor | None = None
    weighting: Weighting = SOFTMAX
    learned_bias: bool | None = None
    block_mask: Any = None

    def __post_init__(self) -> None:
        if not isinstance(self.mask, Mask):
            raise TypeError(f"ScoreInputs.mask must be a Mask, got {self.mask!r}")
        softcap = self.softcap
        if softcap is not None and (isinstance(softcap, bool) or not isinstance(softcap, (int, float)) or softcap <= 0):
            raise ValueError(f"softcap must be a number > 0 or None, got {softcap!r}")
        if not isinstance(self.weighting, Weighting):
            raise TypeError(f"ScoreInputs.weighting must be a Weighting, got {self.weighting!r}")

    def replace(self, **changes: Any) -> ScoreInputs:
        return dataclasses.replace(self, **changes)

    def beyond_causality(self) -> list[str]:
        """The names of what shapes these scores beyond causality and a softmax of q.k: what SDPA's
        ``is_causal`` cannot compute (positions and features only feed a bias, so are not named)."""
        named = dict(score_bias=self.score_bias, window=self.mask.window, chunk=self.mask.chunk)
        named |= dict(q_segments=self.q_segments, k_segments=self.k_segments, key_padding_mask=self.key_padding_mask)
        named |= dict(softcap=self.softcap, sinks=self.sinks)
        return [name for name, x in named.items() if x is not None]

    def check_path(self, path: str) -> None:
        """Refuse what the path (``"sdpa"``, ``"dense"``, ``"flex"``, ``"blockwise"``) cannot compute."""
        named = self.beyond_causality()
        if path == "sdpa" and named:
            raise ValueError(
                f"backend='sdpa' supports no score_bias, window, chunk, segments, softcap or sinks; got {named}"
            )
        if path == "dense" and self.softcap is not None:
            raise ValueError("backend='dense' takes no softcap (it caps the scores before the bias); use 'blockwise'")
        if path != "blockwise" and self.content_bias is not None:
            raise ValueError(f"backend={path!r} takes no content bias (CoPE); it runs 'blockwise'")
        if path != "blockwise" and self.weighting.kind != "softmax":
            raise ValueError(
                f"backend={path!r} runs softmax attention only; {self.weighting.kind} weights run 'blockwise'"
            )

    def checked(self, q: Tensor, k: Tensor, v: Tensor, dropout_p: float) -> ScoreInputs:
        """Check q (B, nh, Tq, hs), k (B, n_kv, Tk, hs), v (B, n_kv, Tk, dv) and these inputs
        against them; return these inputs with each side's document ids filled in from the other."""
        check_shapes(q, k, v, dropout_p)
        (B, nh, Tq, _), Tk = q.shape, k.shape[2]
        q_seg, k_seg = self.q_segments, self.k_segments
        if q_seg is None and k_seg is not None:
            q_seg = k_seg[:, Tk - Tq :]
        if k_seg is None and q_seg is not None:
            if Tq != Tk:
                raise ValueError(f"with Tq={Tq} < Tk={Tk}, pass k_segments (B, Tk) as well as q_segments")
            k_seg = q_seg
        if q_seg is not None and (tuple(q_seg.shape) != (B, Tq) or tuple(k_seg.shape) != (B, Tk)):
            raise ValueError(
                f"q_segments/k_segments must be (B, Tq)=({B}, {Tq}) and (B, Tk)=({B}, {Tk}), "
                f"got {tuple(q_seg.shape)} and {tuple(k_seg.shape)}"
            )
        pad = self.key_padding_mask
        if pad is not None and (pad.dtype != torch.bool or tuple(pad.shape) != (B, Tk)):
            raise ValueError(
                f"key_padding_mask must be a bool (B, Tk)=({B}, {Tk}) tensor, got {pad.dtype} {tuple(pad.shape)}"
            )
        if self.sinks is not None and tuple(self.sinks.shape) != (nh,):
            raise ValueError(f"sinks must be one logit per query head ({nh},), got {tuple(self.sinks.shape)}")
        return self.replace(q_segments=q_seg, k_segments=k_seg)

    def positions(self, Tq: int, Tk: int, device: torch.device) -> tuple[Tensor, Tensor]:
        """The positions the bias receives: as given, else ``arange(Tk - Tq, Tk)`` and ``arange(Tk)``."""
        q_pos = torch.arange(Tk - Tq, Tk, device=device) if self.q_positions is None else self.q_positions
        k_pos = torch.arange(Tk, device=device) if self.k_positions is None else self.k_positions
        return q_pos, k_pos


FIELDS = frozenset(f.name for f in dataclasses.fields(ScoreInputs))


def score_inputs(inputs: ScoreInputs | None, fields: dict[str, Any]) -> ScoreInputs:
    """A kernel call's one input object: ``inputs``, or one made from its fields given as keywords
    (``window=``/``chunk=`` for the mask), never both."""
    if inputs is not None:
        if not isinstance(inputs, ScoreInputs):
            raise TypeError(f"inputs must be a ScoreInputs, got {type(inputs).__name__}")
        if fields:
            raise TypeError(f"pass a ScoreInputs or its fields as keywords, not both; got inputs and {sorted(fields)}")
        return inputs
    fields = dict(fields)
    window, chunk = fields.pop("window", None), fields.pop("chunk", None)
    unknown = sorted(set(fields) - FIELDS)
    if unknown:
        raise TypeError(f"unknown attention inputs {unknown}; known: {sorted(FIELDS | {'window', 'chunk'})}")
    if (window is not None or chunk is not None) and "mask" in fields:
        raise TypeError("pass window/chunk or mask, not both")
    if "mask" not in fields:
        fields["mask"] = as_mask(window, chunk)
    return ScoreInputs(**fields)


def check_shapes(q: Tensor, k: Tensor, v: Tensor, dropout_p: float) -> None:
    """q (B, nh, Tq, hs), k (B, n_kv, Tk, hs), v (B, n_kv, Tk, dv) with n_kv dividing nh, Tq <= Tk,
    and a dropout probability in [0, 1)."""
    if q.dim() != 4 or k.dim() != 4 or v.dim() != 4:
        raise ValueError(f"q, k, v must be (B, nh, T, hs), got {tuple(q.shape)}, {tuple(k.shape)}, {tuple(v.shape)}")
    B, nh, Tq, hs = q.shape
    if k.shape[:3] != v.shape[:3] or k.shape[0] != B or k.shape[3] != hs:
        raise ValueError(f"k {tuple(k.shape)} and v {tuple(v.shape)} do not fit q {tuple(q.shape)}")
    n_kv, Tk = k.shape[1], k.shape[2]
    if nh % n_kv:
        raise ValueError(f"q has {nh} heads, which is not a multiple of the {n_kv} key/value heads")
    if Tq > Tk:
        raise ValueError(f"the queries must be the last of the keys, got Tq={Tq} > Tk={Tk}")
    if not 0.0 <= dropout_p < 1.0:
        raise ValueError(f"dropout_p must be in [0, 1), got {dropout_p!r}")

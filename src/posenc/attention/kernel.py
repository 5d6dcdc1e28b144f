"""The one attention kernel's entry point: :func:`attend` picks a path for every attention variant.

- ``"sdpa"``: ``scaled_dot_product_attention`` -- a softmax of q.k shaped by nothing but causality:
  ``is_causal=True`` (the flash kernel where one exists), or a boolean (Tq, Tk) mask in a KV-cache
  step (over the keys from ``Mask.first_key`` on); also a one-query decoding step of a window or
  chunk and nothing else, which sees every one of those keys (no mask);
- ``"dense"``: :func:`posenc.attention.dense.dense_attention`, one SDPA call with the bias and the
  visibility as an additive mask, for score biases, windows, chunks, documents, padding and sinks
  while that mask fits :data:`~posenc.attention.dense.DENSE_BUDGET` (float32/64 inputs);
- ``"blockwise"``: :func:`posenc.attention.blockwise.blockwise_attention`, exact at linear memory for
  everything else (past the budget, softcap, content biases, stick-breaking weights);
- ``"flex"``: :func:`posenc.attention.flex.flex_attention_path`, compiled FlexAttention with block
  masks. ``auto`` takes it on CUDA (with Triton) only for the cases a committed GPU check passed
  (:mod:`posenc.gpu_checks`; none until ``benchmarks/check_flex.py`` has run on a GPU):
  whole-sequence paths but plain causality, biases in an encoding's elementwise form
  (``elementwise_score_bias``), heads 16 to 256 wide, no attention dropout (:func:`choose_backend`).
  ``backend="flex"`` takes it anywhere.

Rules and costs: docs/attention.md.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from posenc.attention.blockwise import ContentBias, ElementwiseBias, ScoreBias, _check_inputs, blockwise_attention
from posenc.attention.dense import dense_attention, dense_fits
from posenc.attention.flex import flex_attention_path
from posenc.attention.mask import Mask, visible
from posenc.encodings.base import SOFTMAX, PositionalEncoding, Weighting
from posenc.gpu_checks import checked

Backend = Literal["auto", "sdpa", "dense", "blockwise", "flex"]
BACKENDS: tuple[str, ...] = ("auto", "sdpa", "dense", "blockwise", "flex")


#: the narrowest q/k and v heads FlexAttention's CUDA kernel takes, and the widest sent to it (wider
#: heads, like MLA's absorbed 288-576, keep the other paths: not checked on a GPU here)
FLEX_MIN_HEAD_DIM, FLEX_MAX_HEAD_DIM = 16, 256


def flex_compiles(q: Tensor) -> bool:
    """Whether compiled FlexAttention serves ``q``'s device: CUDA, with Triton installed."""
    if q.device.type != "cuda":
        return False
    from torch.utils._triton import has_triton

    return has_triton()


def flex_case(
    q: Tensor,
    k: Tensor,
    *,
    elementwise_score_bias: Callable[[], ElementwiseBias] | None = None,
    window: int | None = None,
    chunk: int | None = None,
    q_segments: Tensor | None = None,
    key_padding_mask: Tensor | None = None,
    softcap: float | None = None,
    sinks: Tensor | None = None,
    value_dim: int | None = None,
) -> str | None:
    """The key under which a GPU check records this FlexAttention call (:mod:`posenc.gpu_checks`):
    the encoding whose bias it compiles, what shapes the mask, grouped heads, a KV-cache step, the
    head widths and q's dtype, e.g. ``"ALiBi window sinks hs64 float32"``. None for a bias that is
    no encoding's method (a caller's own function: no check can vouch for it)."""
    bias = "no bias"
    if elementwise_score_bias is not None:
        owner = getattr(elementwise_score_bias, "__self__", None)
        if not isinstance(owner, PositionalEncoding):
            return None
        bias = type(owner).__name__
    shaping = dict(window=window, chunk=chunk, documents=q_segments, padding=key_padding_mask)
    shaping |= dict(softcap=softcap, sinks=sinks)
    flags = [name for name, x in shaping.items() if x is not None]
    flags += ["gqa"] * (q.shape[1] != k.shape[1]) + ["cache"] * (q.shape[2] != k.shape[2])
    width = f"hs{q.shape[-1]}" + ("" if value_dim in (None, q.shape[-1]) else f"/{value_dim}")
    return " ".join([bias, *flags, width, str(q.dtype).removeprefix("torch.")])


def choose_backend(
    q: Tensor,
    k: Tensor,
    *,
    score_bias: ScoreBias | None = None,
    elementwise_score_bias: Callable[[], ElementwiseBias] | None = None,
    window: int | None = None,
    chunk: int | None = None,
    q_segments: Tensor | None = None,
    k_segments: Tensor | None = None,
    key_padding_mask: Tensor | None = None,
    softcap: float | None = None,
    sinks: Tensor | None = None,
    weighting: Weighting = SOFTMAX,
    dropout_p: float = 0.0,
    value_dim: int | None = None,
    learned_bias: bool | None = None,
) -> Literal["sdpa", "dense", "blockwise", "flex"]:
    """The path :func:`attend` takes with ``backend="auto"`` (rules in docs/attention.md): SDPA when
    nothing but causality shapes a softmax of the scores, or a window or chunk shapes one query's
    (a decoding step); else, on CUDA with Triton, compiled FlexAttention for more than one query
    when the bias (if any) is elementwise (``elementwise_score_bias``), the q/k and v heads
    (``value_dim``, default q's) are ``FLEX_MIN_HEAD_DIM`` to ``FLEX_MAX_HEAD_DIM`` wide, there is no
    attention dropout, and a committed GPU check passed this case (:func:`flex_case`), with its
    gradients when the bias takes one (``learned_bias``; None: it does whenever gradients are on);
    else one SDPA call with a dense mask while the mask fits
    :data:`~posenc.attention.dense.DENSE_BUDGET` (softmax, no softcap); else blockwise (every
    device; FlexAttention has no CPU backward)."""
    others = (score_bias, q_segments, k_segments, key_padding_mask, softcap, sinks)
    if weighting.kind != "softmax":
        return "blockwise"
    if all(x is None for x in others) and (q.shape[2] == 1 or (window is None and chunk is None)):
        return "sdpa"  # causality alone, or one query of a window or chunk: SDPA over the keys it sees
    learned = score_bias is not None and (torch.is_grad_enabled() if learned_bias is None else learned_bias)
    elementwise = score_bias is None or elementwise_score_bias is not None
    widths = (q.shape[-1], q.shape[-1] if value_dim is None else value_dim)
    fits = min(widths) >= FLEX_MIN_HEAD_DIM and max(widths) <= FLEX_MAX_HEAD_DIM
    if q.shape[2] > 1 and elementwise and fits and dropout_p == 0.0 and flex_compiles(q):
        case = dict(window=window, chunk=chunk, q_segments=q_segments, key_padding_mask=key_padding_mask)
        case |= dict(softcap=softcap, sinks=sinks, value_dim=value_dim)
        key = flex_case(q, k, elementwise_score_bias=elementwise_score_bias if score_bias is not None else None, **case)
        if checked(key, backward=learned):
            return "flex"
    return "dense" if softcap is None and dense_fits(q, k) else "blockwise"


def _sdpa(q: Tensor, k: Tensor, v: Tensor, scale: float | None, dropout_p: float, mask: Mask) -> Tensor:
    """SDPA over the keys the queries (the last Tq of Tk) can see: ``is_causal`` for a whole
    sequence; in a KV-cache step the keys from ``mask.first_key`` on, with a boolean (Tq, Tk') mask
    unless one query sees them all."""
    Tq, Tk = q.shape[2], k.shape[2]
    gqa = q.shape[1] != k.shape[1]
    if Tq == Tk and not mask.local:
        return F.scaled_dot_product_attention(q, k, v, dropout_p=dropout_p, is_causal=True, scale=scale, enable_gqa=gqa)
    lo = mask.first_key(Tk - Tq)
    allowed = None if Tq == 1 else visible(Tk - Tq, Tk, lo, Tk, mask, device=q.device)
    k, v = k[:, :, lo:], v[:, :, lo:]
    return F.scaled_dot_product_attention(q, k, v, attn_mask=allowed, dropout_p=dropout_p, scale=scale, enable_gqa=gqa)


def attend(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    *,
    score_bias: ScoreBias | None = None,
    elementwise_score_bias: Callable[[], ElementwiseBias] | None = None,
    content_bias: ContentBias | None = None,
    q_positions: Tensor | None = None,
    k_positions: Tensor | None = None,
    q_features: Tensor | None = None,
    k_features: Tensor | None = None,
    window: int | None = None,
    chunk: int | None = None,
    q_segments: Tensor | None = None,
    k_segments: Tensor | None = None,
    key_padding_mask: Tensor | None = None,
    scale: float | None = None,
    softcap: float | None = None,
    sinks: Tensor | None = None,
    weighting: Weighting = SOFTMAX,
    dropout_p: float = 0.0,
    backend: Backend = "auto",
    block_mask=None,
    learned_bias: bool | None = None,
) -> Tensor:
    """Causal attention q (B, nh, Tq, hs), k (B, n_kv, Tk, hs), v (B, n_kv, Tk, dv) -> (B, nh, Tq, dv)
    by the best path.

    ``score_bias``: the encoding's ``score_bias`` method when its ``where == "scores"``, else None;
    ``elementwise_score_bias``: its ``elementwise_score_bias`` method when it has one
    (``elementwise_bias``), called only when the flex path runs; ``learned_bias``: whether the bias
    will take a gradient (its parameters or features need one): ``auto`` then takes flex only where
    the GPU check passed the case's gradients (None: assume so whenever gradients are on).
    ``backend``: ``"auto"`` (see :func:`choose_backend`) or a path to force. ``block_mask``: only
    for the flex path (see :func:`flex_block_mask`).
    """
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    extras = dict(score_bias=score_bias, window=window, chunk=chunk, q_segments=q_segments, k_segments=k_segments)
    extras |= dict(key_padding_mask=key_padding_mask, softcap=softcap)
    if backend == "sdpa":  # asked for by name: nothing but causality
        named = [name for name, x in extras.items() if x is not None] + (["sinks"] if sinks is not None else [])
        if named:
            raise ValueError(
                f"backend='sdpa' supports no score_bias, window, chunk, segments, softcap or sinks; got {named}"
            )
    if backend == "auto":
        backend = (
            "blockwise"
            if content_bias is not None
            else choose_backend(
                q,
                k,
                sinks=sinks,
                weighting=weighting,
                elementwise_score_bias=elementwise_score_bias,
                dropout_p=dropout_p,
                value_dim=v.shape[-1],
                learned_bias=learned_bias,
                **extras,
            )
        )
    _check_path(backend, softcap, content_bias, weighting)
    if backend == "sdpa":
        _check_inputs(q, k, v, None, None, None, dropout_p)
        return _sdpa(q, k, v, scale, dropout_p, Mask(window=window, chunk=chunk))
    common = dict(scale=scale, sinks=sinks, q_positions=q_positions, k_positions=k_positions)
    common |= dict(q_features=q_features, k_features=k_features)
    if backend == "flex":
        _check_flex(score_bias, elementwise_score_bias, dropout_p)
        extras["score_bias"] = None if score_bias is None else elementwise_score_bias()
        return flex_attention_path(q, k, v, block_mask=block_mask, **common, **extras)
    if backend == "dense":
        extras.pop("softcap")
        return dense_attention(q, k, v, dropout_p=dropout_p, **common, **extras)
    return blockwise_attention(
        q, k, v, weighting=weighting, dropout_p=dropout_p, content_bias=content_bias, **common, **extras
    )


def _check_path(backend: str, softcap: float | None, content_bias: ContentBias | None, weighting: Weighting) -> None:
    """Refuse what the chosen (or forced) path cannot compute."""
    if backend == "dense" and softcap is not None:
        raise ValueError("backend='dense' takes no softcap (it caps the scores before the bias); use 'blockwise'")
    if backend != "blockwise" and content_bias is not None:
        raise ValueError(f"backend={backend!r} takes no content bias (CoPE); it runs 'blockwise'")
    if backend != "blockwise" and weighting.kind != "softmax":
        raise ValueError(f"backend={backend!r} runs softmax attention only; {weighting.kind} weights run 'blockwise'")


def _check_flex(score_bias: ScoreBias | None, elementwise: Callable | None, dropout_p: float) -> None:
    if dropout_p > 0.0:
        raise ValueError(f"FlexAttention has no attention dropout; got dropout_p={dropout_p}, use 'blockwise'")
    if score_bias is not None and elementwise is None:
        raise ValueError(
            "FlexAttention compiles an elementwise score bias (the encoding's elementwise_score_bias); this one "
            "has none (elementwise_bias=False): use 'blockwise' or 'dense'"
        )

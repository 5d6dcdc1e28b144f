"""The one attention kernel's entry point: :func:`attend` picks a path for every attention variant.

- ``"sdpa"``: ``scaled_dot_product_attention`` -- a softmax of q.k shaped by nothing but causality:
  ``is_causal=True`` (the flash kernel where one exists), or a boolean (Tq, Tk) mask in a KV-cache
  step; also a one-query decoding step of a window or chunk and nothing else, over the keys it sees
  (every one of them visible, so no mask);
- ``"dense"``: :func:`posenc.attention.dense.dense_attention`, one SDPA call with the bias and the
  visibility as an additive mask, for score biases, windows, chunks, documents, padding and sinks
  while that mask fits :data:`~posenc.attention.dense.DENSE_BUDGET` (float32/64 inputs);
- ``"blockwise"``: :func:`posenc.attention.blockwise.blockwise_attention`, exact at linear memory for
  everything else (past the budget, softcap, content biases, stick-breaking weights);
- ``"flex"``: :func:`posenc.attention.flex.flex_attention_path`, opt-in.

Rules and costs: docs/attention.md.
"""

from __future__ import annotations

from typing import Literal

import torch.nn.functional as F
from torch import Tensor

from posenc.attention.blockwise import ContentBias, ScoreBias, _check_inputs, blockwise_attention
from posenc.attention.dense import dense_attention, dense_fits
from posenc.attention.flex import flex_attention_path
from posenc.attention.mask import Mask, visible
from posenc.encodings.base import SOFTMAX, Weighting

Backend = Literal["auto", "sdpa", "dense", "blockwise", "flex"]
BACKENDS: tuple[str, ...] = ("auto", "sdpa", "dense", "blockwise", "flex")


def choose_backend(
    q: Tensor,
    k: Tensor,
    *,
    score_bias: ScoreBias | None = None,
    window: int | None = None,
    chunk: int | None = None,
    q_segments: Tensor | None = None,
    k_segments: Tensor | None = None,
    key_padding_mask: Tensor | None = None,
    softcap: float | None = None,
    sinks: Tensor | None = None,
    weighting: Weighting = SOFTMAX,
) -> Literal["sdpa", "dense", "blockwise"]:
    """The path :func:`attend` takes with ``backend="auto"`` (rules in docs/attention.md): SDPA when
    nothing but causality shapes a softmax of the scores; else one SDPA call with a dense mask while
    the mask fits :data:`~posenc.attention.dense.DENSE_BUDGET` (softmax, no softcap); else
    blockwise. FlexAttention is opt-in only: its compiled kernel has not been checked on CUDA here,
    and on CPU it has no backward."""
    extras = (score_bias, window, chunk, q_segments, k_segments, key_padding_mask, softcap, sinks)
    if weighting.kind != "softmax":
        return "blockwise"
    if all(x is None for x in extras):
        return "sdpa"
    return "dense" if softcap is None and dense_fits(q, k) else "blockwise"


def _sdpa(q: Tensor, k: Tensor, v: Tensor, scale: float | None, dropout_p: float) -> Tensor:
    Tq, Tk = q.shape[2], k.shape[2]
    gqa = q.shape[1] != k.shape[1]
    if Tq == Tk:
        return F.scaled_dot_product_attention(q, k, v, dropout_p=dropout_p, is_causal=True, scale=scale, enable_gqa=gqa)
    allowed = visible(Tk - Tq, Tk, 0, Tk, Mask(), device=q.device)  # (Tq, Tk): a KV-cache step
    return F.scaled_dot_product_attention(q, k, v, attn_mask=allowed, dropout_p=dropout_p, scale=scale, enable_gqa=gqa)


def _one_local_query(q: Tensor, content_bias, sinks, weighting: Weighting, extras: dict) -> bool:
    """A decoding step (one query) of a window or chunk with nothing else shaping a softmax: it sees
    every key from ``Mask.first_key`` on, so SDPA runs over those keys alone, without a mask, instead
    of a dense mask over the whole cache."""
    local = extras["window"] is not None or extras["chunk"] is not None
    others = [x for name, x in extras.items() if name not in ("window", "chunk")]
    return (
        q.shape[2] == 1
        and local
        and all(x is None for x in others)
        and content_bias is None
        and sinks is None
        and weighting.kind == "softmax"
    )


def attend(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    *,
    score_bias: ScoreBias | None = None,
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
) -> Tensor:
    """Causal attention q (B, nh, Tq, hs), k (B, n_kv, Tk, hs), v (B, n_kv, Tk, dv) -> (B, nh, Tq, dv)
    by the best path.

    ``score_bias``: the encoding's ``score_bias`` method when its ``where == "scores"``, else None.
    ``backend``: ``"auto"`` (see :func:`choose_backend`) or a path to force. ``block_mask``: only
    for the flex path (see :func:`flex_block_mask`).
    """
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    extras = dict(score_bias=score_bias, window=window, chunk=chunk, q_segments=q_segments, k_segments=k_segments)
    extras |= dict(key_padding_mask=key_padding_mask, softcap=softcap)
    if backend == "auto" and _one_local_query(q, content_bias, sinks, weighting, extras):
        _check_inputs(q, k, v, None, None, None, dropout_p)
        lo = Mask(window=window, chunk=chunk).first_key(k.shape[2] - 1)  # the query is the last key
        gqa = q.shape[1] != k.shape[1]
        return F.scaled_dot_product_attention(
            q, k[:, :, lo:], v[:, :, lo:], dropout_p=dropout_p, scale=scale, enable_gqa=gqa
        )
    if backend == "auto":
        backend = (
            "blockwise"
            if content_bias is not None
            else choose_backend(q, k, sinks=sinks, weighting=weighting, **extras)
        )
    if backend == "dense" and softcap is not None:
        raise ValueError("backend='dense' takes no softcap (it caps the scores before the bias); use 'blockwise'")
    if backend != "blockwise" and content_bias is not None:
        raise ValueError(f"backend={backend!r} takes no content bias (CoPE); it runs 'blockwise'")
    if backend != "blockwise" and weighting.kind != "softmax":
        raise ValueError(f"backend={backend!r} runs softmax attention only; {weighting.kind} weights run 'blockwise'")
    if backend == "sdpa":
        named = [name for name, x in extras.items() if x is not None] + (["sinks"] if sinks is not None else [])
        if named:
            raise ValueError(
                f"backend='sdpa' supports no score_bias, window, chunk, segments, softcap or sinks; got {named}"
            )
        _check_inputs(q, k, v, None, None, None, dropout_p)
        return _sdpa(q, k, v, scale, dropout_p)
    positions = dict(q_positions=q_positions, k_positions=k_positions)
    if backend == "flex":
        if dropout_p > 0.0:
            raise ValueError(f"FlexAttention has no attention dropout; got dropout_p={dropout_p}, use 'blockwise'")
        if sinks is not None or q_features is not None:
            raise ValueError("FlexAttention takes no sinks and no per-token features here; use 'blockwise'")
        return flex_attention_path(q, k, v, scale=scale, block_mask=block_mask, **positions, **extras)
    if backend == "dense":
        features = dict(q_features=q_features, k_features=k_features)
        extras.pop("softcap")
        return dense_attention(
            q, k, v, scale=scale, sinks=sinks, dropout_p=dropout_p, **positions, **features, **extras
        )
    features = dict(q_features=q_features, k_features=k_features, content_bias=content_bias)
    return blockwise_attention(
        q, k, v, scale=scale, sinks=sinks, weighting=weighting, dropout_p=dropout_p, **positions, **features, **extras
    )

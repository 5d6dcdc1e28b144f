"""Exact causal attention with an additive score bias at linear memory.

Shapes: B batch, nh query heads, n_kv key/value heads (n_kv divides nh: grouped-query
attention), Tq queries, Tk keys, hs head size, bq/bk query/key block sizes.

The queries are the *last* Tq of the Tk keys (a KV-cache step has Tq < Tk); which keys a query
sees -- causal, a sliding ``window``, a ``chunk``, document ``segments``, padding -- is the one
rule of :mod:`posenc.attention.mask`. The value width may differ from the key width (MLA). A
query with no visible key returns zeros (never NaN).

The scores are ``q.k * scale``, then ``softcap * tanh(scores / softcap)`` when a logit ``softcap``
is set (Gemma 2), then ``+ score_bias``; per-head ``sinks`` (gpt-oss) add one logit per head to the
softmax's denominator only, so a head can put weight nowhere. ``score_bias(q_positions,
k_positions, q_features, k_features)`` is an encoding's hook: it receives the tile's slice of the
positions and, for content-dependent encodings, of the per-token features (token dim -2).

Three paths, chosen by :func:`attend` (see docs/attention.md):

- ``"sdpa"``: ``scaled_dot_product_attention`` -- no bias, no window or chunk, no segments, no
  padding, no softcap, no sinks: ``is_causal=True`` when Tq == Tk (the flash kernel where one
  exists; the "RoPE layer" baseline), a boolean (Tq, Tk) mask in a KV-cache step.
- ``"blockwise"`` (any device): :func:`blockwise_attention`. Queries go in blocks of ``block_q``;
  each block is scored against only the key blocks it can see (causal upper bound, window lower
  bound), with the bias built for that (bq, bk-span) tile only. Under autograd every query block
  is a ``torch.utils.checkpoint`` region, so backward recomputes the tile instead of saving it
  and gradients reach the bias's own parameters through the ordinary graph. Peak memory is one
  tile, O(nh * bq * span), plus O(T) for inputs, outputs and gradients.
- ``"flex"`` (opt-in: an attention config's ``backend="flex"``): :func:`flex_attention_path`,
  ``flex_attention`` with the bias as ``score_mod`` and the mask as a ``BlockMask`` built once per
  shape (cached) or passed in; compiled on CUDA, the unfused reference on CPU (forward only: this
  torch has no CPU backward, and its compiled CPU kernel gave wrong values with a generic
  score_mod). No sinks and no features. Not chosen automatically: see docs/attention.md.

Scores and the softmax run in float32 for half-precision inputs (float64 inputs stay float64); the
probabilities are cast back to the dtype of ``v`` for the value product.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.checkpoint import checkpoint

from posenc.attention.mask import Mask, as_mask, index_rule, visible

#: (q_positions, k_positions, q_features, k_features) of a tile -> additive float bias (nh, bq, bk) or
#: (B, nh, bq, bk), or None. Positions are (bq,) / (bk,) or (B, bq) / (B, bk). An encoding's ``score_bias``.
ScoreBias = Callable[..., "Tensor | None"]
Backend = Literal["auto", "sdpa", "blockwise", "flex"]
BACKENDS: tuple[str, ...] = ("auto", "sdpa", "blockwise", "flex")


def _check_inputs(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    q_segments: Tensor | None,
    k_segments: Tensor | None,
    key_padding_mask: Tensor | None,
    dropout_p: float,
) -> tuple[Tensor | None, Tensor | None]:
    """Validate shapes and options; return (q_segments, k_segments), filled in from each other."""
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
    if q_segments is None and k_segments is not None:
        q_segments = k_segments[:, Tk - Tq :]
    if k_segments is None and q_segments is not None:
        if Tq != Tk:
            raise ValueError(f"with Tq={Tq} < Tk={Tk}, pass k_segments (B, Tk) as well as q_segments")
        k_segments = q_segments
    if q_segments is not None and (tuple(q_segments.shape) != (B, Tq) or tuple(k_segments.shape) != (B, Tk)):
        raise ValueError(
            f"q_segments/k_segments must be (B, Tq)=({B}, {Tq}) and (B, Tk)=({B}, {Tk}), "
            f"got {tuple(q_segments.shape)} and {tuple(k_segments.shape)}"
        )
    if key_padding_mask is not None and (
        key_padding_mask.dtype != torch.bool or tuple(key_padding_mask.shape) != (B, Tk)
    ):
        raise ValueError(
            f"key_padding_mask must be a bool (B, Tk)=({B}, {Tk}) tensor, "
            f"got {key_padding_mask.dtype} {tuple(key_padding_mask.shape)}"
        )
    return q_segments, k_segments


def _check_extras(q: Tensor, softcap: float | None, sinks: Tensor | None) -> None:
    if softcap is not None and (isinstance(softcap, bool) or not isinstance(softcap, (int, float)) or softcap <= 0):
        raise ValueError(f"softcap must be a number > 0 or None, got {softcap!r}")
    if sinks is not None and tuple(sinks.shape) != (q.shape[1],):
        raise ValueError(f"sinks must be one logit per query head ({q.shape[1]},), got {tuple(sinks.shape)}")


def _default_positions(positions: Tensor | None, start: int, stop: int, device: torch.device) -> Tensor:
    return torch.arange(start, stop, device=device) if positions is None else positions


def _softmax_weights(s: Tensor, allowed: Tensor, sinks: Tensor | None) -> Tensor:
    """softmax over the visible keys of scores s (B, nh, bq, span), with the sinks' logits (nh,) in
    the denominator; rows with no visible key (and no sink) get zeros."""
    s = s.masked_fill(~allowed, float("-inf"))
    m = s.amax(dim=-1, keepdim=True)
    if sinks is not None:
        sink = sinks.to(s.dtype).view(1, -1, 1, 1)  # (1, nh, 1, 1)
        m = torch.maximum(m, sink)
    m = m.detach()  # softmax is shift invariant: no gradient needed
    m = m.masked_fill(m == float("-inf"), 0.0)  # rows with no visible key
    p = torch.exp(s - m)
    denominator = p.sum(dim=-1, keepdim=True)
    if sinks is not None:
        denominator = denominator + torch.exp(sink - m)
    # every row with a visible key (or a sink) has a term exp(0) = 1, so clamping at 1 is exact and
    # turns rows with none into 0 / 1 = 0
    return p / denominator.clamp_min(1.0)


def _tile(
    q: Tensor,
    k_chunks: tuple[Tensor, ...],
    v_chunks: tuple[Tensor, ...],
    q_pos: Tensor | None,
    k_pos: Tensor | None,
    q_feat: Tensor | None,
    k_feat: Tensor | None,
    allowed: Tensor,
    score_bias: ScoreBias | None,
    scale: float,
    softcap: float | None,
    sinks: Tensor | None,
    dropout_p: float,
) -> Tensor:
    """Attention of one query block q (B, nh, bq, hs) against the key chunks it can see.

    ``allowed`` (bq, span) or (B, 1, bq, span) is the visibility mask of the tile.
    """
    B, nh, bq, hs = q.shape
    k = k_chunks[0] if len(k_chunks) == 1 else torch.cat(k_chunks, dim=2)  # (B, n_kv, span, hs)
    v = v_chunks[0] if len(v_chunks) == 1 else torch.cat(v_chunks, dim=2)  # (B, n_kv, span, dv)
    n_kv, span, dv = k.shape[1], k.shape[2], v.shape[3]
    g = nh // n_kv
    # grouped-query attention without repeating K/V: the g query heads of a group share one matmul
    qg = q.reshape(B, n_kv, g * bq, hs)  # (B, n_kv, g*bq, hs)
    s = torch.matmul(qg, k.transpose(-1, -2)).view(B, nh, bq, span)  # (B, nh, bq, span)
    s = s.to(torch.promote_types(s.dtype, torch.float32)) * scale  # at least float32; float64 stays float64
    if softcap is not None:
        s = softcap * torch.tanh(s / softcap)
    if score_bias is not None:
        bias = score_bias(q_pos, k_pos, q_feat, k_feat)  # (nh, bq, span) or (B, nh, bq, span)
        if bias is not None:
            s = s + bias
    p = _softmax_weights(s, allowed, sinks)
    if dropout_p > 0.0:
        p = F.dropout(p, p=dropout_p, training=True)
    y = torch.matmul(p.to(v.dtype).view(B, n_kv, g * bq, span), v)  # (B, n_kv, g*bq, dv)
    return y.view(B, nh, bq, dv)


def blockwise_attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    *,
    score_bias: ScoreBias | None = None,
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
    dropout_p: float = 0.0,
    block_q: int = 128,
    block_k: int = 128,
) -> Tensor:
    """Exact causal attention for q (B, nh, Tq, hs) against k (B, n_kv, Tk, hs), v (B, n_kv, Tk, dv)
    -> (B, nh, Tq, dv).

    Never builds a (nh, Tq, Tk) tensor in forward or backward: see the module docstring.
    ``q_positions``/``k_positions`` ((Tq,)/(Tk,) or (B, Tq)/(B, Tk)) are what ``score_bias``
    receives, block by block; they default to ``arange(Tk - Tq, Tk)`` and ``arange(Tk)``; so are
    ``q_features``/``k_features`` (..., Tq, F) / (..., Tk, F). ``scale`` defaults to 1/sqrt(hs).
    ``block_q``/``block_k``: tile sizes; a query block reads whole key blocks, so the key span is
    rounded out to multiples of ``block_k``.
    """
    q_segments, k_segments = _check_inputs(q, k, v, q_segments, k_segments, key_padding_mask, dropout_p)
    mask = as_mask(window, chunk)
    _check_extras(q, softcap, sinks)
    if block_q <= 0 or block_k <= 0:
        raise ValueError(f"block_q and block_k must be positive, got {block_q} and {block_k}")
    Tq, hs = q.shape[2], q.shape[3]
    Tk = k.shape[2]
    offset = Tk - Tq
    scale = 1.0 / math.sqrt(hs) if scale is None else scale
    if score_bias is not None:
        q_positions = _default_positions(q_positions, offset, Tk, q.device)
        k_positions = _default_positions(k_positions, 0, Tk, q.device)
    # one split per tensor: backward assembles each gradient once, instead of one full-size
    # zero-filled gradient per query block that a slice would cost
    k_chunks, v_chunks = k.split(block_k, dim=2), v.split(block_k, dim=2)
    # Recompute tiles in backward (saving none) unless the tiles are few: a local mask without a
    # bias keeps T x (window + block_k) scores in all, linear in T, and saving them halves the work.
    recompute = torch.is_grad_enabled() and not (score_bias is None and mask.local)
    outputs = []
    for n, q_blk in enumerate(q.split(block_q, dim=2)):
        q_lo = n * block_q
        q_hi = q_lo + q_blk.shape[2]
        first, last = offset + q_lo, offset + q_hi - 1  # global indices of the block's queries
        c_lo, c_hi = mask.first_key(first) // block_k, last // block_k + 1  # key chunks [c_lo, c_hi)
        k_lo, k_hi = c_lo * block_k, min(c_hi * block_k, Tk)
        allowed = visible(
            first,
            last + 1,
            k_lo,
            k_hi,
            mask,
            device=q.device,
            q_segments=None if q_segments is None else q_segments[:, q_lo:q_hi],
            k_segments=None if k_segments is None else k_segments[:, k_lo:k_hi],
            key_padding_mask=None if key_padding_mask is None else key_padding_mask[:, k_lo:k_hi],
        )
        pos = feat = (None, None)
        if score_bias is not None:
            pos = (q_positions[..., q_lo:q_hi], k_positions[..., k_lo:k_hi])
        if q_features is not None:
            feat = (q_features[..., q_lo:q_hi, :], k_features[..., k_lo:k_hi, :])
        args = (q_blk, k_chunks[c_lo:c_hi], v_chunks[c_lo:c_hi], *pos, *feat, allowed, score_bias, scale)
        args += (softcap, sinks, dropout_p)
        if recompute:
            outputs.append(checkpoint(_tile, *args, use_reentrant=False))
        else:
            outputs.append(_tile(*args))
    return outputs[0] if len(outputs) == 1 else torch.cat(outputs, dim=2)  # (B, nh, Tq, dv)


# ----------------------------------------------------------------------------- FlexAttention


def flex_block_mask(
    Tq: int,
    Tk: int,
    *,
    device: torch.device | str,
    window: int | None = None,
    chunk: int | None = None,
    q_segments: Tensor | None = None,
    k_segments: Tensor | None = None,
    key_padding_mask: Tensor | None = None,
):
    """The FlexAttention ``BlockMask`` of the visibility rule (:mod:`posenc.attention.mask`).

    Masks that depend only on the shape are cached (built once per (Tq, Tk, mask, device));
    masks that depend on segment ids or padding depend on data: build them once per forward with
    this function and pass the result to every layer's :func:`attend` as ``block_mask``.
    """
    mask = as_mask(window, chunk)
    if q_segments is None and key_padding_mask is None:
        return _structural_block_mask(Tq, Tk, mask, str(torch.device(device)))
    return _build_block_mask(Tq, Tk, mask, q_segments, k_segments, key_padding_mask, device)


def _build_block_mask(Tq, Tk, mask, q_segments, k_segments, key_padding_mask, device):
    from torch.nn.attention.flex_attention import create_block_mask

    offset = Tk - Tq

    def mask_mod(b, h, q_idx, kv_idx):
        keep = index_rule(q_idx + offset, kv_idx, mask)
        if q_segments is not None:
            keep = keep & (q_segments[b, q_idx] == k_segments[b, kv_idx])
        if key_padding_mask is not None:
            keep = keep & key_padding_mask[b, kv_idx]
        return keep

    per_row = q_segments is not None or key_padding_mask is not None
    B = (q_segments if q_segments is not None else key_padding_mask).shape[0] if per_row else None
    return create_block_mask(mask_mod, B, None, Tq, Tk, device=device)


@functools.lru_cache(maxsize=64)
def _structural_block_mask(Tq: int, Tk: int, mask: Mask, device: str):
    return _build_block_mask(Tq, Tk, mask, None, None, None, device)


@functools.cache
def _compiled_flex_attention():
    from torch.nn.attention.flex_attention import flex_attention

    return torch.compile(flex_attention, dynamic=False)


def _score_mod(score_bias: ScoreBias | None, q_positions: Tensor, k_positions: Tensor, softcap: float | None):
    """The scores' softcap and ``score_bias`` as a FlexAttention ``score_mod`` of one (b, h, q, k) score."""
    q_rows, k_rows = q_positions.dim() == 2, k_positions.dim() == 2
    # broadcasting against a (1,) zero turns the 0-d position into a (1,) one; the compiler
    # cannot lower a reshape of an indexed value
    one = torch.zeros(1, dtype=q_positions.dtype, device=q_positions.device)

    def score_mod(score, b, h, q_idx, kv_idx):
        if softcap is not None:
            score = softcap * torch.tanh(score / softcap)
        if score_bias is None:
            return score
        qp = q_positions[b, q_idx] if q_rows else q_positions[q_idx]
        kp = k_positions[b, kv_idx] if k_rows else k_positions[kv_idx]
        bias = score_bias(qp + one, kp + one)  # (nh, 1, 1)
        return score + bias[h, 0, 0].to(score.dtype)

    return score_mod


def flex_attention_path(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    *,
    score_bias: ScoreBias | None = None,
    q_positions: Tensor | None = None,
    k_positions: Tensor | None = None,
    window: int | None = None,
    chunk: int | None = None,
    q_segments: Tensor | None = None,
    k_segments: Tensor | None = None,
    key_padding_mask: Tensor | None = None,
    scale: float | None = None,
    softcap: float | None = None,
    block_mask=None,
    compiled: bool | None = None,
) -> Tensor:
    """The same attention as :func:`blockwise_attention` through FlexAttention (fused on CUDA).

    ``block_mask`` from :func:`flex_block_mask`, or None to take the cached structural one (or to
    build one from segments/padding). ``compiled``: None compiles on CUDA only; ``False`` runs
    FlexAttention's unfused reference implementation (it materialises the scores).
    """
    from torch.nn.attention.flex_attention import flex_attention

    q_segments, k_segments = _check_inputs(q, k, v, q_segments, k_segments, key_padding_mask, 0.0)
    _check_extras(q, softcap, None)
    Tq, Tk = q.shape[2], k.shape[2]
    if block_mask is None:
        block_mask = flex_block_mask(
            Tq,
            Tk,
            device=q.device,
            window=window,
            chunk=chunk,
            q_segments=q_segments,
            k_segments=k_segments,
            key_padding_mask=key_padding_mask,
        )
    score_mod = None
    if score_bias is not None or softcap is not None:
        q_positions = _default_positions(q_positions, Tk - Tq, Tk, q.device)
        k_positions = _default_positions(k_positions, 0, Tk, q.device)
        score_mod = _score_mod(score_bias, q_positions, k_positions, softcap)
    compiled = q.device.type == "cuda" if compiled is None else compiled
    fn = _compiled_flex_attention() if compiled else flex_attention
    return fn(
        q, k, v, score_mod=score_mod, block_mask=block_mask, scale=scale, enable_gqa=q.shape[1] != k.shape[1]
    )  # (B, nh, Tq, dv)


# ----------------------------------------------------------------------------- dispatch


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
) -> Literal["sdpa", "blockwise"]:
    """The path :func:`attend` takes with ``backend="auto"`` (rules in docs/attention.md): SDPA when
    nothing but causality shapes the scores, else blockwise. FlexAttention is opt-in only: its
    compiled kernel has not been checked on CUDA here, and on CPU it has no backward."""
    extras = (score_bias, window, chunk, q_segments, k_segments, key_padding_mask, softcap, sinks)
    if all(x is None for x in extras):
        return "sdpa"
    return "blockwise"


def _sdpa(q: Tensor, k: Tensor, v: Tensor, scale: float | None, dropout_p: float) -> Tensor:
    Tq, Tk = q.shape[2], k.shape[2]
    gqa = q.shape[1] != k.shape[1]
    if Tq == Tk:
        return F.scaled_dot_product_attention(q, k, v, dropout_p=dropout_p, is_causal=True, scale=scale, enable_gqa=gqa)
    allowed = visible(Tk - Tq, Tk, 0, Tk, Mask(), device=q.device)  # (Tq, Tk): a KV-cache step
    return F.scaled_dot_product_attention(q, k, v, attn_mask=allowed, dropout_p=dropout_p, scale=scale, enable_gqa=gqa)


def attend(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    *,
    score_bias: ScoreBias | None = None,
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
    if backend == "auto":
        backend = choose_backend(q, k, sinks=sinks, **extras)
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
    features = dict(q_features=q_features, k_features=k_features)
    return blockwise_attention(
        q, k, v, scale=scale, sinks=sinks, dropout_p=dropout_p, **positions, **features, **extras
    )

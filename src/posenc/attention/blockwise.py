"""Exact causal attention with an additive score bias at linear memory.

Shapes: B batch, nh query heads, n_kv key/value heads (n_kv divides nh: grouped-query
attention), Tq queries, Tk keys, hs head size, bq/bk query/key block sizes.

The queries are the *last* Tq of the Tk keys (a KV-cache step has Tq < Tk); which keys a query
sees -- causal, a sliding ``window``, a ``chunk``, document ``segments``, padding -- is the one
rule of :mod:`posenc.attention.mask`. The value width may differ from the key width (MLA). A
query with no visible key returns zeros (never NaN).

What shapes the scores comes in one :class:`~posenc.attention.scores.ScoreInputs` (or its fields
as keywords). The scores are ``q.k * scale``, then ``softcap * tanh(scores / softcap)`` when a logit
``softcap`` is set (Gemma 2), then ``+ score_bias`` and ``+ content_bias`` (CoPE); per-head ``sinks``
(gpt-oss) add one logit per head to the softmax's denominator only, so a head can put weight
nowhere; the weights are a softmax or stick-breaking's (``weighting``). ``score_bias(q_positions,
k_positions, q_features, k_features)`` is an encoding's hook: it receives the tile's slice of the
positions and, for content-dependent encodings, of the per-token features (token dim -2).

This is one of the four paths of :func:`posenc.attention.kernel.attend` (``"sdpa"``, ``"dense"``,
``"flex"``, ``"blockwise"``: that module and docs/attention.md say which runs when), the one that
computes everything on every device: queries go in blocks of ``block_q``; each block is scored
against only the key blocks it can see (causal upper bound, window lower bound), with the bias
built for that (bq, bk-span) tile only. Under autograd every query block is a
``torch.utils.checkpoint`` region, so backward recomputes the tile instead of saving it and
gradients reach the bias's own parameters through the ordinary graph; on CPU, softmax tiles
without a softcap, content bias, sinks, dropout, documents or padding take the fused tiles of
:mod:`posenc.attention.flash_tiles` instead. Peak memory is one tile, O(nh * bq * span), plus O(T)
for inputs, outputs and gradients.

Scores and the softmax run in float32 for half-precision inputs (float64 inputs stay float64); the
probabilities are cast back to the dtype of ``v`` for the value product.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.checkpoint import checkpoint

from posenc.attention.flash_tiles import flash_tiles_attention, flash_tiles_serve
from posenc.attention.mask import Mask, chunk_starts, visible
from posenc.attention.scores import ContentBias, ElementwiseBias, ScoreBias, ScoreInputs, score_inputs
from posenc.encodings.base import Weighting

__all__ = ["ContentBias", "ElementwiseBias", "ScoreBias", "TILE_BUDGET", "blockwise_attention", "query_block"]


#: The most elements of one tile's scores (B, nh, bq, span) that ``block_q=None`` allows: 2**19
#: (2 MiB in float32). Every intermediate of a tile (bias, weights, their gradients) is this size,
#: so it bounds the kernel's working memory beside the O(T) inputs and outputs.
TILE_BUDGET: int = 2**19


def query_block(B: int, nh: int, Tk: int, budget: int | None = None) -> int:
    """The query block size for ``Tk`` keys: the largest power of two from 16 to 128 whose tile
    (B, nh, bq, Tk) has at most ``budget`` (default :data:`TILE_BUDGET`) elements; 16 at least."""
    budget = TILE_BUDGET if budget is None else budget
    bq = 128
    while bq > 16 and B * nh * bq * Tk > budget:
        bq //= 2
    return bq


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


def _stickbreaking_weights(s: Tensor, allowed: Tensor) -> tuple[Tensor, Tensor]:
    """Stick-breaking weights of scores s (B, nh, bq, span) over the visible keys, in log space:
    A_ij = sigmoid(z_ij) * prod over visible k > j of (1 - sigmoid(z_ik)); and the stick left over,
    1 - sum_j A_ij (B, nh, bq). The tile holds a query block's whole row of visible keys, so the
    product from the diagonal backward is a reverse cumulative sum along the row."""
    log_z = F.logsigmoid(s).masked_fill(~allowed, float("-inf"))
    log_beta = F.logsigmoid(-s).masked_fill(~allowed, 0.0)
    after = log_beta.flip(-1).cumsum(-1).flip(-1) - log_beta  # sum over visible k > j
    weights = torch.exp(log_z + after)
    return weights, 1.0 - weights.sum(dim=-1)


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
    content_bias: ContentBias | None,
    scale: float,
    softcap: float | None,
    sinks: Tensor | None,
    dropout_p: float,
    weighting: Weighting,
    own: int,
) -> Tensor:
    """Attention of one query block q (B, nh, bq, hs) against the key chunks it can see.

    ``allowed`` (bq, span) or (B, 1, bq, span) is the visibility mask of the tile; ``own`` is the
    index in the span of the block's first query's own key (stick-breaking's remainder reads it).
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
    content = None if content_bias is None else content_bias(q, s, allowed, scale)  # from the raw scaled scores
    if softcap is not None:
        s = softcap * torch.tanh(s / softcap)
    if score_bias is not None:
        bias = score_bias(q_pos, k_pos, q_feat, k_feat)  # (nh, bq, span) or (B, nh, bq, span)
        if bias is not None:
            s = s + bias
    if content is not None:
        s = s + content
    if weighting.kind == "stickbreaking":
        p, rest = _stickbreaking_weights(s, allowed)
    else:
        p, rest = _softmax_weights(s, allowed, sinks), None
    if dropout_p > 0.0:
        p = F.dropout(p, p=dropout_p, training=True)
    y = torch.matmul(p.to(v.dtype).view(B, n_kv, g * bq, span), v).view(B, nh, bq, dv)
    if rest is not None and weighting.remainder == "self":  # the stick left over goes to the query's own value
        v_own = v[:, :, own : own + bq, None].transpose(2, 3).expand(B, n_kv, g, bq, dv).reshape(B, nh, bq, dv)
        y = y + rest.to(v.dtype)[..., None] * v_own
    return y


def blockwise_attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    inputs: ScoreInputs | None = None,
    *,
    scale: float | None = None,
    dropout_p: float = 0.0,
    block_q: int | None = None,
    block_k: int = 128,
    **fields,
) -> Tensor:
    """Exact causal attention for q (B, nh, Tq, hs) against k (B, n_kv, Tk, hs), v (B, n_kv, Tk, dv)
    -> (B, nh, Tq, dv), shaped by ``inputs`` (:class:`~posenc.attention.scores.ScoreInputs`, or its
    fields as keywords: ``blockwise_attention(q, k, v, score_bias=..., window=4)``).

    Never builds a (nh, Tq, Tk) tensor in forward or backward: see the module docstring. ``scale``
    defaults to 1/sqrt(hs). ``block_q``/``block_k``: tile sizes; a query block reads whole key
    blocks, so the key span is rounded out to multiples of ``block_k``. ``block_q=None`` sizes the
    query blocks so that one tile's scores stay within :data:`TILE_BUDGET` elements (:func:`query_block`).
    """
    inputs = score_inputs(inputs, fields).checked(q, k, v, dropout_p)
    mask, weighting = inputs.mask, inputs.weighting
    if weighting.kind == "stickbreaking" and inputs.sinks is not None:
        raise ValueError(
            "stick-breaking attention takes no sinks: the stick left over already goes nowhere or to the query"
        )
    block_q_given = block_q  # the fused tiles size their own blocks
    if block_q is None:  # a window bounds the keys a query block reads: size the block by that span
        span = k.shape[2] if mask.window is None else min(k.shape[2], mask.window + 2 * block_k)
        block_q = query_block(q.shape[0], q.shape[1], span)
    if block_q <= 0 or block_k <= 0:
        raise ValueError(f"block_q and block_k must be positive, got {block_q} and {block_k}")
    Tq, Tk = q.shape[2], k.shape[2]
    scale = 1.0 / math.sqrt(q.shape[3]) if scale is None else scale
    if inputs.score_bias is not None:
        q_positions, k_positions = inputs.positions(Tq, Tk, q.device)
        inputs = inputs.replace(q_positions=q_positions, k_positions=k_positions)
    if flash_tiles_serve(q, v, inputs, dropout_p):
        return flash_tiles_attention(q, k, v, inputs, scale=scale, block_q=block_q_given, block_k=block_k)
    # one split per tensor: backward assembles each gradient once, instead of one full-size
    # zero-filled gradient per query block that a slice would cost
    k_chunks, v_chunks = k.split(block_k, dim=2), v.split(block_k, dim=2)
    # Recompute tiles in backward, saving none: a window's saved scores took the layer to 2.6x the
    # RoPE layer's memory at T=4096 (docs/attention.md)
    recompute = torch.is_grad_enabled()
    starts = chunk_starts(mask, inputs.k_segments, Tq)
    # chunks counted from each document's start need not align with the row's: bound by the window only
    bound = Mask(window=mask.window) if starts[1] is not None else mask
    outputs = []
    for n, q_blk in enumerate(q.split(block_q, dim=2)):
        q_lo = n * block_q
        first, last = Tk - Tq + q_lo, Tk - Tq + q_lo + q_blk.shape[2] - 1  # global indices of the block's queries
        c_lo, c_hi = bound.first_key(first) // block_k, last // block_k + 1  # key chunks [c_lo, c_hi)
        k_lo, k_hi = c_lo * block_k, min(c_hi * block_k, Tk)
        allowed, pos, feat = _block(inputs, starts, q.device, q_lo, q_lo + q_blk.shape[2], first, k_lo, k_hi)
        args = (q_blk, k_chunks[c_lo:c_hi], v_chunks[c_lo:c_hi], *pos, *feat, allowed, inputs.score_bias)
        args += (inputs.content_bias, scale, inputs.softcap, inputs.sinks, dropout_p, weighting, first - k_lo)
        if recompute:
            outputs.append(checkpoint(_tile, *args, use_reentrant=False))
        else:
            outputs.append(_tile(*args))
    return outputs[0] if len(outputs) == 1 else torch.cat(outputs, dim=2)  # (B, nh, Tq, dv)


def _block(
    inputs: ScoreInputs, starts: tuple, device: torch.device, q_lo: int, q_hi: int, first: int, k_lo: int, k_hi: int
) -> tuple[Tensor, tuple, tuple]:
    """One query block's visibility mask and its slices of the positions and features."""
    q_seg, k_seg, pad = inputs.q_segments, inputs.k_segments, inputs.key_padding_mask
    q_starts, k_starts = starts
    weighting = inputs.weighting
    allowed = visible(
        first,
        first + q_hi - q_lo,
        k_lo,
        k_hi,
        inputs.mask,
        device=device,
        q_segments=None if q_seg is None else q_seg[:, q_lo:q_hi],
        k_segments=None if k_seg is None else k_seg[:, k_lo:k_hi],
        key_padding_mask=None if pad is None else pad[:, k_lo:k_hi],
        itself=weighting.kind != "stickbreaking" or weighting.attend_current,
        q_starts=None if q_starts is None else q_starts[:, q_lo:q_hi],
        k_starts=None if k_starts is None else k_starts[:, k_lo:k_hi],
    )
    pos = feat = (None, None)
    if inputs.score_bias is not None:
        pos = (inputs.q_positions[..., q_lo:q_hi], inputs.k_positions[..., k_lo:k_hi])
    if inputs.q_features is not None:
        feat = (inputs.q_features[..., q_lo:q_hi, :], inputs.k_features[..., k_lo:k_hi, :])
    return allowed, pos, feat

"""The dense path: one fused SDPA call with the score bias and the visibility as an additive mask.

For short sequences the (B, nh, Tq, Tk) scores are small, and one ``scaled_dot_product_attention``
call with a float ``attn_mask`` -- the encoding's bias where a key is visible, -inf where it is
not -- is faster forward and backward than walking tiles in Python (docs/attention.md measures
both). :func:`posenc.attention.kernel.attend` takes this path when that mask has at most
:data:`DENSE_BUDGET` elements; past it, the blockwise kernel keeps memory linear in T.

Same inputs (:class:`~posenc.attention.scores.ScoreInputs`) and outputs as
:func:`~posenc.attention.blockwise.blockwise_attention`, for softmax
weights without a logit softcap or a content bias (those need the scores themselves): score
biases (with their per-token features), windows, chunks, document segments, key padding, GQA,
KV-cache steps, dropout, and per-head sinks as one extra key whose score is the sink's logit and
whose value is zero. Rows with no visible key return 0. Half-precision inputs do not take this
path: SDPA would add the bias in half precision, where the blockwise kernel computes in float32.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from posenc.attention.mask import chunk_starts, visible
from posenc.attention.scores import ScoreInputs, score_inputs

#: The most elements of the (B, nh, Tq, Tk) mask for which ``attend(backend="auto")`` takes the
#: dense path: 2**24 (64 MiB in float32; SDPA's math kernel keeps about three such tensors per
#: layer for backward). Set ``posenc.attention.dense.DENSE_BUDGET`` to change it; 0 turns it off.
DENSE_BUDGET: int = 2**24

#: The input dtypes the dense path takes (see the module docstring).
DENSE_DTYPES = (torch.float32, torch.float64)


def dense_fits(q: Tensor, k: Tensor, budget: int | None = None) -> bool:
    """Whether the mask of q (B, nh, Tq, hs) against k (B, n_kv, Tk, hs) fits the budget."""
    budget = DENSE_BUDGET if budget is None else budget
    B, nh, Tq, _ = q.shape
    return q.dtype in DENSE_DTYPES and B * nh * Tq * k.shape[2] <= budget


def dense_attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    inputs: ScoreInputs | None = None,
    *,
    scale: float | None = None,
    dropout_p: float = 0.0,
    **fields,
) -> Tensor:
    """Causal attention q (B, nh, Tq, hs), k (B, n_kv, Tk, hs), v (B, n_kv, Tk, dv) -> (B, nh, Tq, dv)
    through one SDPA call (arguments as :func:`~posenc.attention.blockwise.blockwise_attention`)."""
    inputs = score_inputs(inputs, fields).checked(q, k, v, dropout_p)
    inputs.check_path("dense")
    B, nh, Tq, hs = q.shape
    Tk = k.shape[2]
    q_starts, k_starts = chunk_starts(inputs.mask, inputs.k_segments, Tq)
    allowed = visible(
        Tk - Tq,
        Tk,
        0,
        Tk,
        inputs.mask,
        device=q.device,
        q_segments=inputs.q_segments,
        k_segments=inputs.k_segments,
        key_padding_mask=inputs.key_padding_mask,
        q_starts=q_starts,
        k_starts=k_starts,
    )  # (Tq, Tk) or (B, 1, Tq, Tk)
    mask = torch.where(allowed, 0.0, float("-inf")).to(q.dtype)
    if inputs.score_bias is not None:
        q_pos, k_pos = inputs.positions(Tq, Tk, q.device)
        bias = inputs.score_bias(q_pos, k_pos, inputs.q_features, inputs.k_features)  # (nh, Tq, Tk) or (B, nh, Tq, Tk)
        if bias is not None:
            mask = mask + bias.to(q.dtype)
    empty, sinks = None, inputs.sinks
    if sinks is None:
        empty = ~allowed.any(dim=-1, keepdim=True)  # rows with no visible key: SDPA would return NaN
        if bool(empty.any()):
            mask = mask.masked_fill(empty, 0.0)
        else:
            empty = None
    else:  # one more key: score q.0 + sink = the sink's logit, value 0
        mask = mask.expand(B, nh, Tq, Tk)
        sink = sinks.to(q.dtype).view(1, nh, 1, 1).expand(B, nh, Tq, 1)
        mask = torch.cat([mask, sink], dim=-1)
        k = torch.cat([k, k.new_zeros(B, k.shape[1], 1, hs)], dim=2)
        v = torch.cat([v, v.new_zeros(B, v.shape[1], 1, v.shape[3])], dim=2)
    out = F.scaled_dot_product_attention(
        q,
        k,
        v,
        attn_mask=mask,
        dropout_p=dropout_p,
        scale=1.0 / math.sqrt(hs) if scale is None else scale,
        enable_gqa=k.shape[1] != nh,
    )
    return out if empty is None else out.masked_fill(empty, 0.0)

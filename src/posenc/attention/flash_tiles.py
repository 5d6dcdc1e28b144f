"""The blockwise path's training kernel on CPU: query blocks through torch's fused CPU flash kernel,
with a backward of posenc's own that recomputes each tile instead of saving it.

:func:`~posenc.attention.blockwise.blockwise_attention` takes this path under autograd on CPU for
softmax weights with no softcap, content bias, sinks, dropout, document segments or padding
(:func:`flash_tiles_serve`). Per query block, the visible key span (causal upper bound, window lower
bound, as the blockwise path cuts it) goes to ``_scaled_dot_product_flash_attention_for_cpu`` with
the tile's bias and visibility as one additive float mask: fused, and the blocks past the causal
bound are never computed (a whole-sequence mask would make the kernel score them all). Saved for
backward: q, k, v, the output and the rows' log-sum-exp, O(T).

Backward, per tile: the mask is rebuilt. Without a bias gradient the fused CPU flash backward gives
dq, dk, dv. With one (a learned bias: its encoding's parameters, or FoX's token features), the tile
is recomputed in matmuls -- P = exp(S - lse), dS = P * (dO V^T - rowsum(dO * O)) -- and dS is the
bias tile's gradient, pulled back through the bias's own graph (rebuilt for the tile under
``enable_grad``) into the inputs that need it: the features and the parameters of the module whose
``score_bias`` method it is. So gradients reach them through the ordinary autograd graph
(``torch.autograd.grad`` included), as with the checkpointed tiles this replaces.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from posenc.attention.mask import Mask, visible
from posenc.attention.scores import ScoreInputs

_flash = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu
_flash_backward = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu_backward

#: the dtypes the fused CPU kernel computes exactly enough for the float64-checked tests
FLASH_TILE_DTYPES = (torch.float32, torch.float64)


def bias_leaves(score_bias) -> list[Tensor] | None:
    """The parameters a ``score_bias`` can take gradients into: its module's, when it is a bound
    method of an ``nn.Module``; [] for no bias; None when they cannot be known (a caller's function)."""
    if score_bias is None:
        return []
    owner = getattr(score_bias, "__self__", None)
    if not isinstance(owner, nn.Module):
        return None
    return [p for p in owner.parameters() if p.requires_grad]


def exp_or_zero_(x: Tensor) -> Tensor:
    """``exp(x)`` in place where it is a normal float, else exactly 0 (within ``e`` of the smallest
    normal float, ``finfo.tiny``, and below, -inf included). CPUs compute subnormal floats tens of
    times slower, and the weights of far or masked keys land there in bulk: a FoX tile's 2M weights
    took 7 ms instead of 1. What is dropped is at most ``e * tiny`` (3e-38 in float32) per weight."""
    cut = math.log(torch.finfo(x.dtype).tiny) + 1.0
    low = x < cut
    return x.clamp_min_(cut).exp_().masked_fill_(low, 0.0)


class _Plan:
    """The tiling: per query block its global query range and key span, and the mask rule."""

    def __init__(self, Tq: int, Tk: int, mask: Mask, block_q: int, block_k: int) -> None:
        self.mask, self.blocks = mask, []
        for q_lo in range(0, Tq, block_q):
            q_hi = min(q_lo + block_q, Tq)
            first, last = Tk - Tq + q_lo, Tk - Tq + q_hi - 1
            k_lo = mask.first_key(first) // block_k * block_k
            k_hi = min((last // block_k + 1) * block_k, Tk)
            self.blocks.append((q_lo, q_hi, first, k_lo, k_hi))


def _tile_mask(plan: _Plan, blk, device, dtype, score_bias, positions, features) -> tuple[Tensor, Tensor | None]:
    """The tile's additive mask (1 or B, nh or 1, bq, span): bias where visible, -inf elsewhere; and
    the bias tile itself (None without a bias)."""
    q_lo, q_hi, first, k_lo, k_hi = blk
    allowed = visible(first, first + q_hi - q_lo, k_lo, k_hi, plan.mask, device=device)  # (bq, span)
    m = torch.zeros(allowed.shape, dtype=dtype, device=device).masked_fill_(~allowed, float("-inf"))
    bias = None
    if score_bias is not None:
        q_pos, k_pos = positions
        qf, kf = features
        bias = score_bias(
            q_pos[..., q_lo:q_hi],
            k_pos[..., k_lo:k_hi],
            None if qf is None else qf[..., q_lo:q_hi, :],
            None if kf is None else kf[..., k_lo:k_hi, :],
        )
    if bias is not None:
        m = bias.to(dtype) + m
    return (m if m.dim() == 4 else m.view(1, -1, *m.shape[-2:])), bias


class FlashTiles(torch.autograd.Function):
    """Attention of q (B, nh, Tq, hs) against k, v (B, nh, Tk, hs) by query blocks on the fused CPU
    flash kernel; ``leaves``: the tensors the bias can take gradients into (features first)."""

    @staticmethod
    def forward(ctx, q, k, v, plan, scale, score_bias, positions, n_feat, *leaves):  # type: ignore[override]
        features = tuple(leaves[:n_feat]) + (None,) * (2 - n_feat)
        outs, lses = [], []
        for blk in plan.blocks:
            q_lo, q_hi, _, k_lo, k_hi = blk
            m, _ = _tile_mask(plan, blk, q.device, q.dtype, score_bias, positions, features)
            out, lse = _flash(q[:, :, q_lo:q_hi], k[:, :, k_lo:k_hi], v[:, :, k_lo:k_hi], attn_mask=m, scale=scale)
            outs.append(out)
            lses.append(lse)
        out = outs[0] if len(outs) == 1 else torch.cat(outs, dim=2)
        ctx.save_for_backward(q, k, v, out, torch.cat(lses, dim=-1), *leaves)
        ctx.plan, ctx.scale, ctx.score_bias, ctx.positions, ctx.n_feat = plan, scale, score_bias, positions, n_feat
        return out

    @staticmethod
    def backward(ctx, d_out):  # type: ignore[override]
        q, k, v, out, lse, *leaves = ctx.saved_tensors
        plan, scale, n_feat = ctx.plan, ctx.scale, ctx.n_feat
        d_out = d_out.contiguous()
        dq, dk, dv = torch.empty_like(q), torch.zeros_like(k), torch.zeros_like(v)
        wanted = [i for i, t in enumerate(leaves) if ctx.needs_input_grad[8 + i]]
        d_leaves: list[Tensor | None] = [None] * len(leaves)
        for blk in plan.blocks:
            q_lo, q_hi, _, k_lo, k_hi = blk
            qb, kb, vb = q[:, :, q_lo:q_hi], k[:, :, k_lo:k_hi], v[:, :, k_lo:k_hi]
            dob, ob, lseb = d_out[:, :, q_lo:q_hi], out[:, :, q_lo:q_hi], lse[..., q_lo:q_hi]
            if not wanted:  # no bias gradient: the fused backward
                with torch.no_grad():
                    m, _ = _tile_mask(
                        plan, blk, q.device, q.dtype, ctx.score_bias, ctx.positions, _feat(leaves, n_feat)
                    )
                    gq, gk, gv = _flash_backward(dob, qb, kb, vb, ob, lseb, 0.0, False, attn_mask=m, scale=scale)
            else:
                # features are passed to the bias: fresh leaves for them; the parameters are read by
                # the bias's module itself (leaves already)
                inputs = [t.detach().requires_grad_(i in wanted) if i < n_feat else t for i, t in enumerate(leaves)]
                with torch.enable_grad():
                    m, bias = _tile_mask(
                        plan, blk, q.device, q.dtype, ctx.score_bias, ctx.positions, _feat(inputs, n_feat)
                    )
                with torch.no_grad():
                    s = torch.matmul(qb, kb.transpose(-1, -2)).mul_(scale).add_(m.detach())  # (B, nh, bq, span)
                    p = exp_or_zero_(s.sub_(lseb.unsqueeze(-1)))
                    dp = torch.matmul(dob, vb.transpose(-1, -2))
                    ds = dp.sub_((dob * ob).sum(-1, keepdim=True)).mul_(p)
                    gv = torch.matmul(p.transpose(-1, -2), dob)
                    gq = torch.matmul(ds, kb).mul_(scale)
                    gk = torch.matmul(ds.transpose(-1, -2), qb).mul_(scale)
                if bias is not None and bias.requires_grad:
                    d_bias = ds.sum(0) if bias.dim() == 3 else ds
                    targets = [inputs[i] for i in wanted]
                    got = torch.autograd.grad(bias, targets, d_bias.to(bias.dtype), allow_unused=True)
                    for i, g in zip(wanted, got, strict=True):
                        if g is not None:
                            d_leaves[i] = g if d_leaves[i] is None else d_leaves[i] + g
            dq[:, :, q_lo:q_hi] = gq
            dk[:, :, k_lo:k_hi] += gk
            dv[:, :, k_lo:k_hi] += gv
        return dq, dk, dv, None, None, None, None, None, *d_leaves


def _feat(leaves, n_feat: int) -> tuple:
    return tuple(leaves[:n_feat]) + (None,) * (2 - n_feat)


def flash_tiles_serve(q: Tensor, v: Tensor, inputs: ScoreInputs, dropout_p: float) -> bool:
    """Whether :class:`FlashTiles` computes this call exactly (module docstring)."""
    return v.dtype == q.dtype and flash_tiles_take(q, inputs, dropout_p, value_dim=v.shape[-1])


def flash_tiles_take(q: Tensor, inputs: ScoreInputs, dropout_p: float, value_dim: int | None = None) -> bool:
    """:func:`flash_tiles_serve` before v exists (``value_dim``: its head width, default q's)."""
    if not (torch.is_grad_enabled() and q.device.type == "cpu" and q.dtype in FLASH_TILE_DTYPES):
        return False
    if value_dim is not None and value_dim != q.shape[-1]:  # the fused kernel takes one head width (not MLA's)
        return False
    if inputs.weighting.kind != "softmax" or inputs.softcap is not None or inputs.sinks is not None:
        return False
    if inputs.content_bias is not None or dropout_p > 0.0:
        return False
    if inputs.q_segments is not None or inputs.key_padding_mask is not None:
        return False
    if (inputs.q_features is None) != (inputs.k_features is None):
        return False
    return bias_leaves(inputs.score_bias) is not None


#: the most scores (B * nh * bq * span) of one tile that ``block_q=None`` allows here: 2**21 (8 MiB
#: in float32); the backward of a learned bias holds about four such tensors at once
FLASH_TILE_BUDGET: int = 2**21


def flash_tiles_attention(
    q: Tensor, k: Tensor, v: Tensor, inputs: ScoreInputs, *, scale: float, block_q: int | None, block_k: int
) -> Tensor:
    """:class:`FlashTiles` for checked inputs (``blockwise_attention``'s, positions filled in);
    grouped key/value heads are repeated to the query heads (autograd sums their gradients back)."""
    B, nh, Tq, hs = q.shape
    Tk, mask = k.shape[2], inputs.mask
    if k.shape[1] != nh:
        k, v = (t.repeat_interleave(nh // t.shape[1], dim=1) for t in (k, v))
    if block_q is None:
        span = Tk if mask.window is None else min(Tk, mask.window + 2 * block_k)
        block_q = max(16, min(Tq, FLASH_TILE_BUDGET // max(1, B * nh * span)))
    plan = _Plan(Tq, Tk, mask, block_q, block_k)
    features = [t for t in (inputs.q_features, inputs.k_features) if t is not None]
    leaves = bias_leaves(inputs.score_bias)
    positions = (inputs.q_positions, inputs.k_positions)
    return FlashTiles.apply(q, k, v, plan, scale, inputs.score_bias, positions, len(features), *features, *leaves)

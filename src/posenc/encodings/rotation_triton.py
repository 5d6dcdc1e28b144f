"""The rotation as one fused Triton kernel, forward and backward: the path of
:func:`~posenc.encodings.rotation.apply_rotary` on CUDA, where Triton is installed, for the dtypes a
committed GPU check passed (:mod:`posenc.gpu_checks`) or when ``TRITON_ROTARY = True`` asks for it.

One program rotates one row (a token of a head): it reads the row's pairs -- (i, i + rd/2) for
the half layout, (2i, 2i+1) for the interleaved one -- and the float32 cos/sin of its position
(a table shared by the batch, or one per row for per-row positions), computes in float32, writes
the rotated pairs and copies the channels past ``rotary_dim`` unchanged. The backward is the same
kernel rotating by -angle (the transpose of a rotation), so nothing but the tables is saved.
q and k may be strided views (the heads of a fused qkv projection): only the channel dim must be
contiguous. The output is contiguous (B, H, T, hs) in x's dtype.

Tested on CPU under ``TRITON_INTERPRET=1`` against the formula in float32 and float16
(tests/test_rotation_triton.py; Triton's interpreter has no bfloat16).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor


@triton.jit
def _rotary_kernel(
    x_ptr,
    out_ptr,
    cos_ptr,
    sin_ptr,
    H,
    T,
    stride_xb,
    stride_xh,
    stride_xt,
    stride_cb,
    stride_ct,
    HS: tl.constexpr,
    RD: tl.constexpr,
    INTERLEAVED: tl.constexpr,
    TRANSPOSE: tl.constexpr,
    HALF_BLOCK: tl.constexpr,
    PASS_BLOCK: tl.constexpr,
):
    row = tl.program_id(0)  # over B * H * T
    t = row % T
    h = (row // T) % H
    b = row // (T * H)
    x_row = x_ptr + b * stride_xb + h * stride_xh + t * stride_xt
    out_row = out_ptr + row * HS
    c_row = b * stride_cb + t * stride_ct
    i = tl.arange(0, HALF_BLOCK)
    live = i < RD // 2
    if INTERLEAVED:
        first, second = 2 * i, 2 * i + 1
    else:
        first, second = i, i + RD // 2
    x1 = tl.load(x_row + first, mask=live, other=0.0).to(tl.float32)
    x2 = tl.load(x_row + second, mask=live, other=0.0).to(tl.float32)
    c1 = tl.load(cos_ptr + c_row + first, mask=live, other=0.0)
    c2 = tl.load(cos_ptr + c_row + second, mask=live, other=0.0)
    s1 = tl.load(sin_ptr + c_row + first, mask=live, other=0.0)
    s2 = tl.load(sin_ptr + c_row + second, mask=live, other=0.0)
    if TRANSPOSE:  # the adjoint: o1 = x1 c1 + x2 s2, o2 = x2 c2 - x1 s1
        o1 = x1 * c1 + x2 * s2
        o2 = x2 * c2 - x1 * s1
    else:  # o1 = x1 c1 - x2 s1, o2 = x2 c2 + x1 s2
        o1 = x1 * c1 - x2 * s1
        o2 = x2 * c2 + x1 * s2
    tl.store(out_row + first, o1.to(out_ptr.dtype.element_ty), mask=live)
    tl.store(out_row + second, o2.to(out_ptr.dtype.element_ty), mask=live)
    if PASS_BLOCK > 0:  # partial rotary: the rest passes through bit-identical
        j = RD + tl.arange(0, PASS_BLOCK)
        keep = j < HS
        tl.store(out_row + j, tl.load(x_row + j, mask=keep), mask=keep)


def rotary_triton(x: Tensor, cos: Tensor, sin: Tensor, interleaved: bool, transpose: bool = False) -> Tensor:
    """Rotate the first ``cos.shape[-1]`` channels of x (B, H, T, hs) by cos/sin (T, rd) or
    (B, T, rd), float32, expanded to the pair layout; ``transpose`` rotates by -angle."""
    if x.dim() != 4 or x.stride(-1) != 1:
        raise ValueError(f"x must be (B, H, T, hs) with contiguous channels, got {tuple(x.shape)} {x.stride()}")
    B, H, T, hs = x.shape
    rd = cos.shape[-1]
    if rd % 2 or rd > hs or cos.shape != sin.shape or cos.shape[-2] != T:
        raise ValueError(
            f"cos/sin {tuple(cos.shape)} do not fit x {tuple(x.shape)}: (T, rd) or (B, T, rd), rd even <= hs"
        )
    cos, sin = cos.to(torch.float32).contiguous(), sin.to(torch.float32).contiguous()
    stride_cb = cos.stride(0) if cos.dim() == 3 else 0
    out = torch.empty((B, H, T, hs), dtype=x.dtype, device=x.device)
    if out.numel() == 0:
        return out
    _rotary_kernel[(B * H * T,)](
        x,
        out,
        cos,
        sin,
        H,
        T,
        x.stride(0),
        x.stride(1),
        x.stride(2),
        stride_cb,
        cos.stride(-2),
        HS=hs,
        RD=rd,
        INTERLEAVED=interleaved,
        TRANSPOSE=transpose,
        HALF_BLOCK=triton.next_power_of_2(max(rd // 2, 1)),
        PASS_BLOCK=0 if rd == hs else triton.next_power_of_2(hs - rd),
    )
    return out


class TritonRotary(torch.autograd.Function):
    """:func:`rotary_triton` with its backward: the same kernel rotating the gradient by -angle."""

    @staticmethod
    def forward(x: Tensor, cos: Tensor, sin: Tensor, interleaved: bool) -> Tensor:
        return rotary_triton(x, cos, sin, interleaved)

    @staticmethod
    def setup_context(ctx, inputs, output) -> None:  # type: ignore[override]
        _, cos, sin, interleaved = inputs
        ctx.save_for_backward(cos, sin)
        ctx.interleaved = interleaved

    @staticmethod
    def backward(ctx, grad: Tensor):  # type: ignore[override]
        cos, sin = ctx.saved_tensors
        grad = grad if grad.stride(-1) == 1 else grad.contiguous()
        if torch.is_grad_enabled():  # create_graph=True: the rotation by -angle, itself differentiable
            # (exact for the expanded tables, whose two members of a pair share their angle)
            return TritonRotary.apply(grad, cos, -sin, ctx.interleaved), None, None, None
        return rotary_triton(grad, cos, sin, ctx.interleaved, transpose=True), None, None, None

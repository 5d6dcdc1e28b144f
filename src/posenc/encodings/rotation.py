"""The rotation itself, shared by every RoPE: channel-pair layouts, float32 cos/sin tables from
float64 angles, and ``apply_rotary`` with its eager fast paths (a three-op kernel run over
cache-sized tiles, with a hand-written backward, for the half layout; a complex multiply for the
interleaved one). Pure functions of tensors;
:class:`~posenc.encodings.rope.RotaryEmbedding` owns the frequencies and the tables.
"""

from __future__ import annotations

import functools
import math
from typing import Literal

import torch
from einops import rearrange
from torch import Tensor

from posenc.encodings.rope_scaling import default_inv_freq
from posenc.gpu_checks import checked

Layout = Literal["half", "interleaved"]
LAYOUTS: tuple[str, ...] = ("half", "interleaved")
TWO_PI = 2 * math.pi

#: Whether ``apply_rotary`` runs the fused Triton kernel on CUDA: None (default) only for the dtypes
#: a committed GPU check passed (:mod:`posenc.gpu_checks`, :func:`rotary_case`; none until
#: ``benchmarks/check_flex.py`` has run on a GPU), True wherever Triton is installed, False never.
#: Set ``posenc.encodings.rotation.TRITON_ROTARY`` to choose.
TRITON_ROTARY: bool | None = None


def rope_inv_freq(rotary_dim: int, base: float, device: torch.device | None = None) -> Tensor:
    """Inverse frequencies ``base ** (-2i / rotary_dim)``, i < rotary_dim/2, as float32 (computed in float64)."""
    return default_inv_freq(rotary_dim, base, device).to(torch.float32)


def expand_pairs(per_pair: Tensor, layout: Layout) -> Tensor:
    """(..., rd/2) -> (..., rd): pair i at (i, i + rd/2) for "half", (2i, 2i+1) for "interleaved"."""
    if layout == "half":
        return torch.cat((per_pair, per_pair), dim=-1)
    return torch.repeat_interleave(per_pair, 2, dim=-1)


def rope_cos_sin(
    positions: Tensor, inv_freq: Tensor, layout: Layout, attention_factor: float = 1.0
) -> tuple[Tensor, Tensor]:
    """float32 cos/sin of shape (*positions.shape, rotary_dim), expanded to the pair layout.

    The angles are formed in float64 (whatever inv_freq's dtype) and reduced to [-pi, pi] before
    the float32 cos/sin, so the tables do not lose precision at large positions.
    """
    with torch.autocast(device_type=positions.device.type, enabled=False):
        angles = positions.to(torch.float64)[..., None] * inv_freq.to(torch.float64)  # (..., T, rd/2)
        angles = (angles - TWO_PI * torch.round(angles / TWO_PI)).to(torch.float32)
        cos, sin = angles.cos(), angles.sin()
        if attention_factor != 1.0:
            cos, sin = cos * attention_factor, sin * attention_factor
        return expand_pairs(cos, layout), expand_pairs(sin, layout)


def rotate_pairs(x: Tensor, layout: Layout) -> Tensor:
    """The 90-degree rotation of every pair: (x1, x2) -> (-x2, x1), in the given layout."""
    if layout == "half":
        h = (x.shape[-1] + 1) // 2  # chunk(2)'s split, as slices: the compiler fuses slices, not chunk
        x1, x2 = x[..., :h], x[..., h:]
        return torch.cat((-x2, x1), dim=-1)
    pairs = rearrange(x, "... (d two) -> ... d two", two=2)
    return rearrange(torch.stack((-pairs[..., 1], pairs[..., 0]), dim=-1), "... d two -> ... (d two)")


def apply_rotary(x: Tensor, cos: Tensor, sin: Tensor, layout: Layout = "half") -> Tensor:
    """Rotate the first ``cos.shape[-1]`` channels of x (..., T, hs); the rest pass through.

    cos/sin: (T, rd) or (B, T, rd), any float dtype; they are cast to x.dtype for the multiply.
    """
    tables = cos, sin
    if cos.dim() == 3:  # per-row positions (B, T, rd) -> (B, 1, T, rd) to broadcast over heads
        cos, sin = cos[:, None], sin[:, None]
    cos, sin = cos.to(x.dtype), sin.to(x.dtype)
    if (
        torch.compiler.is_compiling()  # the compiler fuses the plain formula into one kernel
        or cos.requires_grad
        or sin.requires_grad  # gradients for the tables come from the plain formula's autograd
        or not _broadcasts_into(cos.shape[:-1], x.shape[:-1])
        or _is_func_transformed(x)  # torch.func (vmap, grad, jvp) wrappers refuse out= ops
    ):
        return _rotary_reference(x, cos, sin, layout)
    if x.is_cuda:  # the fused kernel where chosen and installed; else the formula (which compile fuses)
        fused = _triton_rotary() if _triton_chosen(x) else None
        if fused is None or not _fits_kernel(x, tables[0]):
            return _rotary_reference(x, cos, sin, layout)
        return fused.TritonRotary.apply(x, *tables, layout == "interleaved")
    if not (torch.is_grad_enabled() and x.requires_grad):  # inference: no autograd node to build
        return _rotary_into(x, cos, sin, layout, transpose=False)
    return _Rotary.apply(x, cos, sin, layout)


def rotary_case(x: Tensor) -> str:
    """The key under which a GPU check records the Triton rotation of inputs like ``x``."""
    return "triton rotary " + str(x.dtype).removeprefix("torch.")


def _triton_chosen(x: Tensor) -> bool:
    if TRITON_ROTARY is None:
        return checked(rotary_case(x), backward=x.requires_grad)
    return TRITON_ROTARY


def _broadcasts_into(shape: tuple[int, ...], target: tuple[int, ...]) -> bool:
    """Whether ``shape`` broadcasts to ``target`` without growing it (torch.broadcast_shapes(shape,
    target) == target, without its cost: a decoding step calls this twice per layer)."""
    return len(shape) <= len(target) and all(s in (1, t) for s, t in zip(reversed(shape), reversed(target)))


def _fits_kernel(x: Tensor, table: Tensor) -> bool:
    """x (B, H, T, hs) with contiguous channels, the table (T, rd) or (B, T, rd)."""
    if x.dim() != 4 or x.stride(-1) != 1 or table.shape[-2] != x.shape[2]:
        return False
    return table.dim() == 2 or (table.dim() == 3 and table.shape[0] == x.shape[0])


@functools.cache
def _triton_rotary():
    """The Triton kernel's module, or None where Triton is not installed."""
    try:
        from posenc.encodings import rotation_triton
    except ImportError:
        return None
    return rotation_triton


def _is_func_transformed(x: Tensor) -> bool:
    return torch._C._functorch.is_functorch_wrapped_tensor(x)


def _rotary_reference(x: Tensor, cos: Tensor, sin: Tensor, layout: Layout) -> Tensor:
    rd = cos.shape[-1]
    if rd == x.shape[-1]:
        return x * cos + rotate_pairs(x, layout) * sin
    x_rot, x_pass = x[..., :rd], x[..., rd:]
    return torch.cat((x_rot * cos + rotate_pairs(x_rot, layout) * sin, x_pass), dim=-1)


def _rotary_into(x: Tensor, cos: Tensor, sin: Tensor, layout: Layout, transpose: bool) -> Tensor:
    """``_rotary_reference`` (or, with ``transpose``, its adjoint: the rotation by -angle) in three
    ops on one fresh buffer: out = x * cos, then a fused multiply-add on each half of the pairs.

    Eager PyTorch runs every op as a separate pass over memory; the plain formula takes five ops
    and four temporaries (neg, cat, two products) and its autograd graph as many again backward.
    Few large ops also matter on a busy CPU, where every op is a thread barrier.
    """
    rd = cos.shape[-1]
    out = torch.empty_like(x, memory_format=torch.contiguous_format)
    if rd < x.shape[-1]:
        out[..., rd:] = x[..., rd:]  # partial rotary: pass through bit-identical
    if (
        layout == "interleaved"
        and x.dtype in (torch.float32, torch.float64)
        and x.is_contiguous()
        and x.shape[-1] % 2 == 0
    ):
        # pairs (2i, 2i+1) are complex numbers: one complex multiply (by the conjugate for the adjoint)
        # instead of three strided passes, ~1.6x faster on CPU
        cis = torch.complex(cos[..., 0::2], -sin[..., 0::2] if transpose else sin[..., 0::2])  # (..., T, rd/2)
        pairs_of = lambda t: torch.view_as_complex(t[..., :rd].unflatten(-1, (-1, 2)))
        torch.mul(pairs_of(x), cis, out=pairs_of(out))
        return out
    if layout == "half":
        first, second = slice(0, rd // 2), slice(rd // 2, rd)
    else:
        first, second = slice(0, rd, 2), slice(1, rd, 2)
    # forward:  o1 = x1 c1 - x2 s1,  o2 = x2 c2 + x1 s2
    # adjoint:  o1 = x1 c1 + x2 s2,  o2 = x2 c2 - x1 s1
    sign = -1.0 if transpose else 1.0
    sin_a, sin_b = (sin[..., second], sin[..., first]) if transpose else (sin[..., first], sin[..., second])
    lead = x.shape[:-1]
    cos, sin_a, sin_b = (t.contiguous().expand(*lead, t.shape[-1]) for t in (cos, sin_a, sin_b))
    xs, os_ = x[..., :rd], out[..., :rd]
    views = (os_, xs, cos, os_[..., first], xs[..., second], sin_a, os_[..., second], xs[..., first], sin_b)
    for o, xt, c, o1, x2, s1, o2, x1, s2 in _tiles(x, views):
        # cache-sized pieces: the two half-width ops read what the first op just wrote
        torch.mul(xt, c, out=o)
        o1.addcmul_(x2, s1, value=-sign)
        o2.addcmul_(x1, s2, value=sign)
    return out


_TILE_BYTES = 1 << 20  # about one core's L2 cache


def _tiles(x: Tensor, views: tuple[Tensor, ...], tile_bytes: int | None = None):
    """Cut ``views`` (tensors over x's leading dims) into matching pieces of at most about
    ``tile_bytes`` of x, splitting x's outermost-in-memory dims first so each piece is compact.

    Three eager ops over a large tensor each stream it from memory, and the two half-width ones are
    strided; on pieces that stay in cache they cost about one pass in all (docs/benchmarks.md).
    """
    n_lead = x.dim() - 1
    tile_bytes = _TILE_BYTES if tile_bytes is None else tile_bytes
    budget = max(1, tile_bytes // (x.shape[-1] * x.element_size()))  # rows of the last dim per piece
    if x.numel() // max(x.shape[-1], 1) <= budget:  # one piece (a decoding step): the views as they are
        return iter((views,))
    order = sorted(range(n_lead), key=lambda d: -x.stride(d))
    perm = (*order, n_lead)

    def split(pieces: tuple[Tensor, ...], level: int):
        rows = math.prod(pieces[0].shape[level:-1])
        if rows <= budget or level == n_lead:
            yield pieces
            return
        inner = rows // pieces[0].shape[level]
        step = max(1, budget // max(inner, 1))
        for part in zip(*(t.split(step, dim=level) for t in pieces)):
            if inner <= budget:
                yield part
            else:
                yield from split(part, level + 1)

    return split(tuple(t.permute(perm) for t in views), 0)


class _Rotary(torch.autograd.Function):
    """apply_rotary with a hand-written backward: the gradient of a rotation is the rotation by
    -angle, computed like the forward, instead of autograd replaying the plain formula's five ops."""

    @staticmethod
    def forward(x: Tensor, cos: Tensor, sin: Tensor, layout: Layout) -> Tensor:
        return _rotary_into(x, cos, sin, layout, transpose=False)

    @staticmethod
    def setup_context(ctx, inputs, output) -> None:  # type: ignore[override]
        _, cos, sin, layout = inputs
        ctx.save_for_backward(cos, sin)
        ctx.save_for_forward(cos, sin)
        ctx.layout = layout

    @staticmethod
    def jvp(ctx, x_tangent: Tensor, cos_tangent, sin_tangent, _layout) -> Tensor:  # type: ignore[override]
        # forward-mode AD: the rotation is linear in x (the tables carry no tangent on this path)
        cos, sin = ctx.saved_tensors
        return _rotary_reference(x_tangent, cos, sin, ctx.layout)

    @staticmethod
    def backward(ctx, grad: Tensor):  # type: ignore[override]
        cos, sin = ctx.saved_tensors
        if torch.is_grad_enabled():  # create_graph=True: stay differentiable for double backward
            rd = cos.shape[-1]
            g_rot = grad[..., :rd]
            g_rot = g_rot * cos - rotate_pairs(g_rot * sin, ctx.layout)
            dx = g_rot if rd == grad.shape[-1] else torch.cat((g_rot, grad[..., rd:]), dim=-1)
        else:
            dx = _rotary_into(grad, cos, sin, ctx.layout, transpose=True)
        return dx, None, None, None

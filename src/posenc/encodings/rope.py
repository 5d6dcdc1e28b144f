"""Rotary position embedding (RoPE; Su et al. 2021, "RoFormer", arXiv:2104.09864).

Where it acts: on q and k inside every attention layer (``where = "qk"``). Channel pair i of a
vector at position m is rotated by the angle ``m * base ** (-2i / rotary_dim)``; the dot product of
a rotated query and key then depends on their positions only through m - n.

Conventions
- ``layout="half"``: pairs are (i, i + rotary_dim/2) -- GPT-NeoX, Hugging Face Llama/Qwen
  (``rotate_half``), torchtune. ``layout="interleaved"``: pairs are (2i, 2i+1) -- the RoFormer
  paper, GPT-J, Meta's Llama (complex multiply). The two layouts are the same rotation up to a
  fixed permutation of channels.
- Rotation sign: (x1, x2) -> (x1 cos - x2 sin, x1 sin + x2 cos), i.e. counter-clockwise by +angle.
- ``rotary_dim < head_dim`` (partial rotary, GPT-NeoX style): the first ``rotary_dim`` channels
  are rotated, the remaining ones pass through bit-identical.
- Precision: inverse frequencies, angles and the cos/sin tables are always float32, computed with
  autocast off, and stay float32 after ``.to(torch.bfloat16)`` / ``.half()``. They are cast to the
  input dtype only for the final multiply.
- The cos/sin tables for positions < ``cache_len`` are built at construction (non-persistent
  buffers); other positions are computed on the fly, never clipped.

Golden tests: a per-pair 2x2 rotation written from the paper's formula, Hugging Face's
``apply_rotary_pos_emb`` (half layout) and a GPT-J-style interleaved rotation (tests/test_rope.py).
"""

from __future__ import annotations

from typing import Any, Literal

import torch
from einops import rearrange
from torch import Tensor

from posenc.encodings.base import ModelDims, PositionalEncoding, check_positions

Layout = Literal["half", "interleaved"]
LAYOUTS: tuple[str, ...] = ("half", "interleaved")


def rope_inv_freq(rotary_dim: int, base: float, device: torch.device | None = None) -> Tensor:
    """Inverse frequencies ``base ** (-2i / rotary_dim)``, i < rotary_dim/2, as float32 (computed in float64)."""
    exponent = torch.arange(0, rotary_dim, 2, dtype=torch.float64, device=device) / rotary_dim
    return (base ** -exponent).to(torch.float32)


def rope_cos_sin(positions: Tensor, inv_freq: Tensor, layout: Layout) -> tuple[Tensor, Tensor]:
    """float32 cos/sin of shape (*positions.shape, rotary_dim), expanded to the pair layout."""
    with torch.autocast(device_type=positions.device.type, enabled=False):
        angles = positions.to(torch.float32)[..., None] * inv_freq.to(torch.float32)  # (..., T, rd/2)
        if layout == "half":
            angles = torch.cat((angles, angles), dim=-1)  # (..., T, rd): pair i sits at i and i + rd/2
        else:
            angles = torch.repeat_interleave(angles, 2, dim=-1)  # (..., T, rd): pair i at 2i, 2i+1
        return angles.cos(), angles.sin()


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
    if cos.dim() == 3:  # per-row positions (B, T, rd) -> (B, 1, T, rd) to broadcast over heads
        cos, sin = cos[:, None], sin[:, None]
    cos, sin = cos.to(x.dtype), sin.to(x.dtype)
    if (
        torch.compiler.is_compiling()  # the compiler fuses the plain formula into one kernel
        or cos.requires_grad
        or sin.requires_grad  # gradients for the tables come from the plain formula's autograd
        or torch.broadcast_shapes(x.shape[:-1], cos.shape[:-1]) != x.shape[:-1]
        or _is_func_transformed(x)  # torch.func (vmap, grad, jvp) wrappers refuse out= ops
    ):
        return _rotary_reference(x, cos, sin, layout)
    return _Rotary.apply(x, cos, sin, layout)


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
    if layout == "half":
        first, second = slice(0, rd // 2), slice(rd // 2, rd)
    else:
        first, second = slice(0, rd, 2), slice(1, rd, 2)
    # forward:  o1 = x1 c1 - x2 s1,  o2 = x2 c2 + x1 s2
    # adjoint:  o1 = x1 c1 + x2 s2,  o2 = x2 c2 - x1 s1
    sign = -1.0 if transpose else 1.0
    sin_a, sin_b = (sin[..., second], sin[..., first]) if transpose else (sin[..., first], sin[..., second])
    xs, os_ = x[..., :rd], out[..., :rd]
    torch.mul(xs, cos, out=os_)
    os_[..., first].addcmul_(xs[..., second], sin_a, value=-sign)
    os_[..., second].addcmul_(xs[..., first], sin_b, value=sign)
    return out


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


class RotaryEmbedding(PositionalEncoding):
    """RoPE for q, k of shape (B, nh, T, hs): ``q, k = rope(q, k, positions=None)``.

    Args:
        head_dim: size of each head (hs).
        base: the rotary base (10000 in RoFormer/GPT-NeoX/Llama 2, 500000 in Llama 3).
        layout: ``"half"`` (NeoX / Hugging Face) or ``"interleaved"`` (RoFormer / GPT-J / Meta).
        rotary_dim: channels that are rotated (even, <= head_dim); ``None`` means all of them.
        cache_len: positions ``< cache_len`` use the cos/sin tables built here; others are computed.
    """

    where = "qk"

    def __init__(
        self,
        head_dim: int,
        base: float = 10000.0,
        layout: Layout = "half",
        rotary_dim: int | None = None,
        *,
        cache_len: int = 2048,
    ) -> None:
        super().__init__()
        rotary_dim = head_dim if rotary_dim is None else rotary_dim
        if not isinstance(head_dim, int) or head_dim <= 0:
            raise ValueError(f"head_dim must be a positive int, got {head_dim!r}")
        if not isinstance(rotary_dim, int) or rotary_dim <= 0 or rotary_dim % 2 or rotary_dim > head_dim:
            raise ValueError(
                f"rotary_dim must be an even int in [2, head_dim={head_dim}], got {rotary_dim!r}"
            )
        if not base > 0:
            raise ValueError(f"base must be > 0, got {base!r}")
        if layout not in LAYOUTS:
            raise ValueError(f"layout must be one of {LAYOUTS}, got {layout!r}")
        if not isinstance(cache_len, int) or cache_len < 0:
            raise ValueError(f"cache_len must be an int >= 0, got {cache_len!r}")
        self.head_dim, self.rotary_dim, self.base = head_dim, rotary_dim, float(base)
        self.layout: Layout = layout
        self.cache_len = cache_len
        self._build_tables(device=None)

    @classmethod
    def build(cls, dims: ModelDims, **options: Any) -> RotaryEmbedding:
        return cls(dims.head_dim, **({"cache_len": dims.block_size} | options))

    def _build_tables(self, device: torch.device | None) -> None:
        inv_freq = rope_inv_freq(self.rotary_dim, self.base, device)
        cos, sin = rope_cos_sin(torch.arange(self.cache_len, device=device), inv_freq, self.layout)
        self.register_buffer("inv_freq", inv_freq, persistent=False)
        self.register_buffer("cos_cached", cos, persistent=False)  # (cache_len, rd) float32
        self.register_buffer("sin_cached", sin, persistent=False)

    def _apply(self, fn, recurse=True):  # type: ignore[override]
        # .to(dtype) / .half() would round the tables; re-derive them in float32 on the new device.
        super()._apply(fn, recurse)
        self._build_tables(self.inv_freq.device)
        return self

    def cos_sin(self, positions: Tensor | None, seq_len: int, device: torch.device) -> tuple[Tensor, Tensor]:
        """float32 cos/sin tables for ``positions`` (default ``arange(seq_len)``)."""
        if positions is None:
            if seq_len <= self.cache_len:
                return self.cos_cached[:seq_len], self.sin_cached[:seq_len]
            positions = torch.arange(seq_len, device=device)
        else:
            check_positions(positions, None)
        return rope_cos_sin(positions, self.inv_freq, self.layout)

    def rotate(self, q: Tensor, k: Tensor, positions: Tensor | None = None) -> tuple[Tensor, Tensor]:
        if q.shape[-1] != self.head_dim or k.shape[-1] != self.head_dim:
            raise ValueError(
                f"q and k must have head size {self.head_dim} in their last dim, "
                f"got {tuple(q.shape)} and {tuple(k.shape)}"
            )
        T = q.shape[-2]
        if k.shape[-2] != T:
            raise ValueError(f"q and k must have the same length T, got {tuple(q.shape)} and {tuple(k.shape)}")
        if positions is not None and (positions.dim() not in (1, 2) or positions.shape[-1] != T):
            # a (1,) tensor would otherwise broadcast and put every token at one position
            raise ValueError(f"positions must have shape ({T},) or (B, {T}), got {tuple(positions.shape)}")
        cos, sin = self.cos_sin(positions, T, q.device)
        return apply_rotary(q, cos, sin, self.layout), apply_rotary(k, cos, sin, self.layout)

    forward = rotate

    def extra_repr(self) -> str:
        return (
            f"head_dim={self.head_dim}, base={self.base}, layout={self.layout!r}, "
            f"rotary_dim={self.rotary_dim}, cache_len={self.cache_len}"
        )

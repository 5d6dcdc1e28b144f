"""The protocol every positional encoding follows: where it acts, and the three hooks.

An encoding acts in exactly one place (``where``):

- ``"input"``: :meth:`embed` returns vectors added to the token embeddings once, before the
  first layer (learned or sinusoidal absolute tables);
- ``"qk"``: :meth:`rotate` transforms queries and keys inside every attention layer (RoPE);
- ``"scores"``: :meth:`score_bias` returns an additive bias for the attention scores (ALiBi);
- ``"none"``: no positional signal at all (NoPE).

Every hook has a neutral default, so attention and the model call all of them and contain no
encoding-specific branches. Shapes: B batch, T tokens, C channels, nh heads, hs head size.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar, Literal

import torch
from torch import Tensor, nn

Where = Literal["input", "qk", "scores", "none"]


@dataclass(frozen=True)
class ModelDims:
    """The sizes of the model an encoding is built for: all that :meth:`PositionalEncoding.build`
    may read, so that encodings know nothing of ``GPTConfig``."""

    n_embd: int
    n_head: int
    block_size: int
    n_layer: int = 1
    #: size of the vectors an encoding of q/k acts on; None means n_embd // n_head (an attention
    #: variant whose rotary part is narrower, like MLA's decoupled key, sets its own)
    head_dim: int | None = None

    def __post_init__(self) -> None:
        if self.head_dim is None:
            object.__setattr__(self, "head_dim", self.n_embd // self.n_head)


class PositionalEncoding(nn.Module):
    """Base class: a module that injects position information at one place (``where``)."""

    where: ClassVar[Where] = "none"
    #: Largest position + 1 the encoding can represent; ``None`` means any position.
    max_positions: int | None = None

    @classmethod
    def build(cls, dims: ModelDims, **options: Any) -> PositionalEncoding:
        """The encoding for one layer (or the input) of a model of size ``dims``; ``options`` are
        the encoding's own keyword arguments (e.g. RoPE's ``base``). The default passes only them."""
        return cls(**options)

    def embed(self, positions: Tensor) -> Tensor | None:
        """Vectors added to the token embeddings: positions (T,) or (B, T) -> (T, C) or (B, T, C)."""
        return None

    def rotate(self, q: Tensor, k: Tensor, positions: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """Transform q, k of shape (B, nh, T, hs) given their positions (T,) or (B, T)."""
        return q, k

    def score_bias(self, q_positions: Tensor, k_positions: Tensor) -> Tensor | None:
        """Additive attention-score bias, (nh, Tq, Tk) for (T,) positions or (B, nh, Tq, Tk) for (B, T)."""
        return None


def check_positions(positions: Tensor, limit: int | None, name: str = "positions") -> None:
    """Refuse non-integer, negative or (when ``limit`` is set) too large positions with a clear error.

    Skipped while compiling (the compiled training path only passes ``arange`` positions); on an
    accelerator the value check is an on-device assert rather than a host sync.
    """
    if torch.compiler.is_compiling():
        return
    if positions.dtype not in (torch.int64, torch.int32):
        raise TypeError(f"{name} must be an integer tensor, got dtype {positions.dtype}")
    if positions.dim() not in (1, 2):
        raise ValueError(f"{name} must have shape (T,) or (B, T), got {tuple(positions.shape)}")
    if positions.numel() == 0:
        return
    if positions.device.type != "cpu":  # no host sync on an accelerator: assert on the device
        ok = positions >= 0 if limit is None else (positions >= 0) & (positions < limit)
        torch._assert_async(ok.all(), f"{name} must be >= 0" + ("" if limit is None else f" and < {limit}"))
        return
    lo, hi = int(positions.min()), int(positions.max())
    if lo < 0:
        raise ValueError(f"{name} must be >= 0, got a minimum of {lo}")
    if limit is not None and hi >= limit:
        raise ValueError(
            f"{name} go up to {hi}, but this encoding represents positions < {limit} "
            f"(its table size); use a relative encoding or a larger block_size"
        )

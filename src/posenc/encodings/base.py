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

from typing import TYPE_CHECKING, ClassVar, Literal

import torch
from torch import Tensor, nn

if TYPE_CHECKING:
    from posenc.config import GPTConfig

Where = Literal["input", "qk", "scores", "none"]


class PositionalEncoding(nn.Module):
    """Base class: a module that injects position information at one place (``where``)."""

    where: ClassVar[Where] = "none"
    #: Largest position + 1 the encoding can represent; ``None`` means any position.
    max_positions: int | None = None

    @classmethod
    def from_config(cls, config: GPTConfig) -> PositionalEncoding:
        """Build the encoding for one layer (or for the input) of a GPT described by ``config``."""
        raise NotImplementedError(f"{cls.__name__} does not define from_config")

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

    Skipped while compiling: the value checks need a host sync and the compiled training path
    only ever passes ``arange`` positions.
    """
    if torch.compiler.is_compiling():
        return
    if positions.dtype not in (torch.int64, torch.int32):
        raise TypeError(f"{name} must be an integer tensor, got dtype {positions.dtype}")
    if positions.dim() not in (1, 2):
        raise ValueError(f"{name} must have shape (T,) or (B, T), got {tuple(positions.shape)}")
    if positions.numel() == 0:
        return
    lo, hi = int(positions.min()), int(positions.max())
    if lo < 0:
        raise ValueError(f"{name} must be >= 0, got a minimum of {lo}")
    if limit is not None and hi >= limit:
        raise ValueError(
            f"{name} go up to {hi}, but this encoding represents positions < {limit} "
            f"(its table size); use a relative encoding or a larger block_size"
        )

"""Absolute position embeddings added to the token embeddings before the first layer.

Where it acts: at the input (``where = "input"``), once per model, never inside attention.

- :class:`AbsolutePE` -- a learned table of ``n_positions`` vectors (GPT-2, nanoGPT), initialised
  N(0, 0.02) by the GPT; positions >= ``n_positions`` are refused with a ``ValueError``.
- ``AbsolutePE(..., sinusoidal=True)`` / :class:`SinusoidalPE` -- the fixed table of Vaswani et al.
  2017, "Attention Is All You Need", section 3.5: PE(p, 2i) = sin(p / 10000^(2i/C)),
  PE(p, 2i+1) = cos(p / 10000^(2i/C)) (interleaved sin/cos), multiplied by a fixed ``scale``
  (default 1/sqrt(C)). It has no parameters and is evaluated in float32 at any position, so it
  extrapolates past ``n_positions``. Why the scale: Vaswani et al. multiply the token embeddings
  by sqrt(C) before adding the table; with GPT-2's N(0, 0.02) tied embeddings that factor is not
  applied, so the table is scaled down instead (the same ratio up to an overall factor, and the
  initial scale of x-transformers' ScaledSinusoidalEmbedding). Unscaled, the table (RMS 0.71)
  would drown the token embeddings (RMS 0.02).

Golden tests: the sinusoidal values against the formula in float64; the learned table against
Hugging Face GPT-2's ``wpe`` through ``GPT.from_hf`` (tests/test_absolute.py, tests/test_hf.py).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from posenc.encodings.base import EncodingConfig, ModelDims, PositionalEncoding, check_positions, sizes
from posenc.spec import check_bool, check_int, check_number, spec
from posenc.weight_init import WeightInit


def sinusoidal_table(positions: Tensor, dim: int, base: float = 10000.0) -> Tensor:
    """Vaswani et al.'s sinusoids for ``positions`` (any shape) -> (*positions.shape, dim), float32."""
    with torch.autocast(device_type=positions.device.type, enabled=False):
        i = torch.arange(0, dim, 2, dtype=torch.float64, device=positions.device)
        inv_freq = torch.exp(-math.log(base) * i / dim).to(torch.float32)  # (ceil(dim/2),)
        angles = positions.to(torch.float32)[..., None] * inv_freq  # (..., T, ceil(dim/2))
        table = torch.stack((angles.sin(), angles.cos()), dim=-1).flatten(-2)  # sin at 2i, cos at 2i+1
        return table[..., :dim]


class AbsolutePE(PositionalEncoding):
    """Absolute positions added at the input: learned (default) or fixed sinusoidal.

    Args:
        n_positions: table size; the learned table refuses positions >= n_positions.
        dim: embedding size (n_embd).
        sinusoidal: use the fixed sinusoidal table (no parameters, any position).
        scale: factor on the sinusoidal table; default 1/sqrt(dim). Only with ``sinusoidal``.
    """

    where = "input"

    @spec
    class Config(EncodingConfig):
        """``sinusoidal``: the fixed table instead of a learned one; ``scale``: its factor (None = 1/sqrt(C))."""

        sinusoidal: bool = False
        scale: float | None = None

        def __post_init__(self) -> None:
            check_bool(f"{self.encoding.__name__}.Config", "sinusoidal", self.sinusoidal)
            check_number(f"{self.encoding.__name__}.Config", "scale", self.scale, optional=True)
            if self.scale is not None and not self.sinusoidal:
                raise ValueError(f"scale={self.scale!r} applies only to the sinusoidal table (sinusoidal=True)")

    def __init__(self, config: Config, dims: ModelDims) -> None:
        """A table of ``block_size`` positions by ``n_embd`` channels."""
        super().__init__()
        n_positions, dim = dims.block_size, dims.n_embd
        check_int(type(self).__name__, "n_positions", n_positions)
        check_int(type(self).__name__, "dim", dim)
        self.config = config
        sinusoidal, scale = config.sinusoidal, config.scale
        self.n_positions, self.dim, self.sinusoidal = n_positions, dim, sinusoidal
        self.scale = (1.0 / math.sqrt(dim) if scale is None else float(scale)) if sinusoidal else 1.0
        self.max_positions = None if sinusoidal else n_positions
        self.weight = None if sinusoidal else nn.Parameter(torch.empty(n_positions, dim))
        if self.weight is not None:
            nn.init.normal_(self.weight, mean=0.0, std=0.02)

    @classmethod
    def create(cls, n_positions: int, dim: int, *, sinusoidal: bool = False, scale: float | None = None) -> AbsolutePE:
        return cls(cls.Config(sinusoidal=sinusoidal, scale=scale), sizes(n_embd=dim, block_size=n_positions))

    def init_weights(self, init: WeightInit) -> None:
        """GPT-2's N(0, 0.02) table, from the model's seed."""
        if self.weight is not None:
            init.normal("weight", self.weight)

    def embed(self, positions: Tensor) -> Tensor:
        check_positions(positions, self.max_positions)
        if self.weight is None:
            return sinusoidal_table(positions, self.dim) * self.scale
        return self.weight[positions]  # (T, C) or (B, T, C)

    forward = embed

    def extra_repr(self) -> str:
        return f"n_positions={self.n_positions}, dim={self.dim}, sinusoidal={self.sinusoidal}, scale={self.scale:.4g}"


class SinusoidalPE(AbsolutePE):
    """The fixed sinusoidal table of Vaswani et al. 2017 (``AbsolutePE(..., sinusoidal=True)``)."""

    @spec
    class Config(EncodingConfig):
        """``scale``: the table's factor (None = 1/sqrt(C))."""

        scale: float | None = None

        def __post_init__(self) -> None:
            check_number("SinusoidalPE.Config", "scale", self.scale, optional=True)

    def __init__(self, config: Config, dims: ModelDims) -> None:
        super().__init__(AbsolutePE.Config(sinusoidal=True, scale=config.scale), dims)
        self.config = config

    @classmethod
    def create(cls, n_positions: int, dim: int, *, scale: float | None = None) -> SinusoidalPE:
        return cls(cls.Config(scale=scale), sizes(n_embd=dim, block_size=n_positions))

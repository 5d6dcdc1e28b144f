"""Positions on more than one axis for images and video: :class:`AxialRotaryEmbedding` (N-D axial
RoPE, Pixtral's layout, per-head axes, RoPE-Mixed) and :func:`grid_coords`; :mod:`posenc.vision.vit`
is a small vision transformer that compares them."""

from posenc.vision.axial import AxialRotaryEmbedding, grid_coords, rope_frequencies

__all__ = ["AxialRotaryEmbedding", "grid_coords", "rope_frequencies"]

"""M-RoPE's layouts: which position axis each frequency pair of a rotary head takes (Qwen2-VL,
"Qwen2-VL: Enhancing Vision-Language Model's Perception of the World at Any Resolution",
arXiv:2409.12191; Qwen2.5-VL; Qwen3-VL), for :class:`~posenc.encodings.rope.RotaryEmbedding`'s
``mrope_section`` and ``mrope_interleaved``.

With ``mrope_section=(t, h, w)`` a token has one position per axis, positions of shape (3, B, T),
and frequency pair i is rotated by the position on its axis. The sections count pairs per axis and
sum to rotary_dim / 2. Chunked (Qwen2-VL, Qwen2.5-VL): the first t pairs take the time axis, the
next h the rows, the last w the columns. Interleaved (Qwen3-VL): pair i takes axis i % 3 while
i < 3 x that axis's section, axis 0 otherwise, so every axis keeps high and low frequencies.
Positions of one axis -- (T,) or (B, T), text only -- are the same ids on every axis: plain RoPE.
"""

from __future__ import annotations

from typing import Any

from posenc.encodings.rope_scaling import length_key


def check_section(owner: str, section: Any, interleaved: Any, rope_type: str, xpos: bool) -> tuple[int, ...] | None:
    """The section as a tuple (or None), refusing what no M-RoPE can be."""
    if not isinstance(interleaved, bool):
        raise TypeError(f"{owner} mrope_interleaved must be a bool, got {interleaved!r}")
    if section is None:
        if interleaved:
            raise ValueError(f"{owner} mrope_interleaved=True needs an mrope_section")
        return None
    if not isinstance(section, (tuple, list)) or len(section) < 2:
        raise ValueError(f"{owner} mrope_section must be a tuple of >= 2 pair counts, got {section!r}")
    if any(isinstance(n, bool) or not isinstance(n, int) or n <= 0 for n in section):
        raise ValueError(f"{owner} mrope_section must hold positive ints, got {section!r}")
    if length_key(rope_type) is not None or xpos:
        raise ValueError(
            f"{owner} mrope_section does not combine with a rotation that depends on the sequence "
            f"length (rope_type={rope_type!r}, xpos={xpos}): one length per axis is undefined"
        )
    return tuple(section)


def pair_axes(section: tuple[int, ...], interleaved: bool, rotary_dim: int) -> list[int]:
    """The position axis of each of the rotary_dim / 2 frequency pairs (module docstring)."""
    n, pairs = len(section), rotary_dim // 2
    if sum(section) != pairs:
        raise ValueError(
            f"mrope_section={section} counts {sum(section)} frequency pairs, but rotary_dim={rotary_dim} has {pairs}"
        )
    if not interleaved:  # chunked: section[0] pairs of axis 0, then axis 1, ...
        return [axis for axis, count in enumerate(section) for _ in range(count)]
    axes = [next((a for a in range(1, n) if i % n == a and i < n * section[a]), 0) for i in range(pairs)]
    counts = tuple(axes.count(a) for a in range(n))
    if counts != section:
        raise ValueError(
            f"mrope_section={section} cannot be interleaved over {pairs} pairs (it gives {counts}): "
            "axis a > 0 takes pairs a, a + n, ... below n x its count"
        )
    return axes

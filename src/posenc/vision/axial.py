"""N-dimensional axial RoPE for patches and frames: a token at coordinates (c_0, ..., c_{n-1}) -- a
patch's (row, column), a frame's (time, row, column) -- has frequency pair i rotated by

    angle_i = sum_a c_a * F[a, i]

with one frequency matrix F (n_axes, pairs) per head (or one shared by every head). Every layout of
the axial RoPEs in use is a choice of F:

- ``split="contiguous"`` (rotary-embedding-torch's ``get_axial_freqs``; the RoPE-ViT papers' axial
  RoPE): axis a owns the a-th block of ``pairs / n_axes`` pairs, with 1-D RoPE frequencies over its
  own ``rotary_dim / n_axes`` channels.
- ``split="alternating"`` (Pixtral, Hugging Face's ``PixtralVisionRotaryEmbedding``): the frequencies
  of one 1-D RoPE over all ``rotary_dim`` channels are dealt out in turn, even ones to rows and odd
  ones to columns, each axis's pairs then in a block.
- ``head_axes=(a_0, ..., a_{H-1})``: head h rotates all its pairs by axis ``a_h`` with the 1-D
  frequencies of the full width, or not at all for ``None`` (some heads positional, some not).
- ``mixed=True`` (RoPE-Mixed, Heo et al. 2024, "Rotary Position Embedding for Vision Transformer",
  ECCV, arXiv:2403.13298): F is learned, per head, initialised as the paper does -- pair magnitudes
  ``base ** (-4j / rotary_dim)`` along a random direction per head (for two axes pair j and pair
  j + pairs/2 take perpendicular directions) -- so a pair can rotate along a diagonal.

``freqs="lang"`` gives 1-D RoPE frequencies ``base ** (-2j / d)``, for integer coordinates;
``freqs="pixel"`` gives rotary-embedding-torch's ``pi * linspace(1, max_freq / 2, d / 2)``, for
coordinates normalised to [-1, 1] (:func:`grid_coords` with ``normalize=True``: patch centres, so
a finer grid over the same image stays in the same range -- resolution extrapolation).

Coordinates are (T, n_axes) or (B, T, n_axes), integer or float; the first ``n_prefix`` tokens of q
and k (CLS, registers) take no coordinates and pass through unrotated. While training, optional
augmentations of the coordinates (DINOv3's): a per-sample shift in [-shift, shift] per axis, a
per-axis ``jitter`` factor and a global ``rescale`` factor, both log-uniform in [1/f, f].

Angles are formed in float64 (the learned F too, with autograd through the cast), reduced to [-pi, pi], and
cos/sin are float32, in the ``layout`` of :mod:`posenc.encodings.rotation` (``"half"``: pair i is
channels (i, i + rd/2); ``"interleaved"``: (2i, 2i+1)); channels past ``rotary_dim`` pass through.

Tests: Hugging Face's Pixtral rotary (alternating), rotary-embedding-torch's axial frequencies
(contiguous, lang and pixel), translation invariance and separability (tests/test_axial.py).
"""

from __future__ import annotations

import math
from typing import Any, Literal

import torch
from torch import Tensor, nn

from posenc.built import BuiltFromConfig
from posenc.encodings.base import ModelDims, sizes
from posenc.encodings.rotation import LAYOUTS, Layout, apply_rotary, expand_pairs
from posenc.spec import Spec, check_bool, check_int, set_field, spec

TWO_PI = 2 * math.pi
SPLITS: tuple[str, ...] = ("contiguous", "alternating")
FREQS: tuple[str, ...] = ("lang", "pixel")


def rope_frequencies(dim: int, base: float, freqs: str = "lang", max_freq: float = 10.0) -> Tensor:
    """float64 frequencies of ``dim / 2`` pairs: ``base ** (-2j / dim)`` ("lang") or
    ``pi * linspace(1, max_freq / 2, dim / 2)`` ("pixel", for coordinates in [-1, 1])."""
    if freqs == "pixel":
        return torch.linspace(1.0, max_freq / 2, dim // 2, dtype=torch.float64) * math.pi
    return base ** (-torch.arange(0, dim, 2, dtype=torch.float64) / dim)


def grid_coords(*sizes: int, normalize: bool = False, device: torch.device | None = None) -> Tensor:
    """(prod(sizes), len(sizes)) coordinates of a grid in row-major order: integer indices, or
    with ``normalize`` the cell centres scaled to [-1, 1] on each axis (float64)."""
    axes = []
    for n in sizes:
        if normalize:
            axes.append((torch.arange(n, dtype=torch.float64, device=device) + 0.5) / n * 2 - 1)
        else:
            axes.append(torch.arange(n, device=device))
    return torch.stack(torch.meshgrid(*axes, indexing="ij"), dim=-1).reshape(-1, len(sizes))


class AxialRotaryEmbedding(nn.Module, metaclass=BuiltFromConfig):
    """Axial RoPE over ``n_axes`` coordinates (module docstring): ``q, k = rope(q, k, coords)``.

    ``AxialRotaryEmbedding(config, dims)``: its ``Config`` and the sizes it reads, ``dims.head_dim``
    and ``dims.n_head`` (the heads of q and k, for ``head_axes`` and ``mixed``).
    ``AxialRotaryEmbedding(head_dim, n_axes=2, ...)`` is :meth:`create`, with these Args:
        head_dim: size of each head.
        n_axes: coordinates per token (2: image rows and columns; 3: video frames too).
        base: 1-D RoPE base of the ``"lang"`` frequencies (and of RoPE-Mixed's magnitudes).
        split: ``"contiguous"`` or ``"alternating"`` (Pixtral); ignored with ``head_axes`` or ``mixed``.
        freqs: ``"lang"`` or ``"pixel"`` (``max_freq``), see :func:`rope_frequencies`.
        layout: channel pairing, ``"half"`` or ``"interleaved"``.
        rotary_dim: channels rotated (default all); divisible by ``2 * n_axes`` for the splits.
        n_heads: heads, needed by ``head_axes`` and ``mixed``.
        head_axes: per head, the axis it rotates by, or None for an unrotated head.
        mixed: learned per-head frequencies (RoPE-Mixed); ``seed`` draws their initial directions.
        n_prefix: leading tokens (CLS, registers) left unrotated.
        shift, jitter, rescale: training-time coordinate augmentations (None: off).
    """

    @spec
    class Config(Spec):
        """The Args of the class but the sizes (``head_dim``, ``n_heads``); what depends on them is
        checked by ``check(dims)``."""

        n_axes: int = 2
        base: float = 10000.0
        split: Literal["contiguous", "alternating"] = "contiguous"
        freqs: Literal["lang", "pixel"] = "lang"
        max_freq: float = 10.0
        layout: Layout = "half"
        rotary_dim: int | None = None
        head_axes: tuple[int | None, ...] | None = None
        mixed: bool = False
        seed: int = 0
        n_prefix: int = 0
        shift: float | None = None
        jitter: float | None = None
        rescale: float | None = None

        def __post_init__(self) -> None:
            n_axes, split, freqs, layout = self.n_axes, self.split, self.freqs, self.layout
            if isinstance(n_axes, bool) or not isinstance(n_axes, int) or n_axes < 1:
                raise ValueError(f"AxialRotaryEmbedding n_axes must be an int >= 1, got {n_axes!r}")
            if split not in SPLITS or freqs not in FREQS or layout not in LAYOUTS:
                raise ValueError(
                    f"AxialRotaryEmbedding split must be one of {SPLITS}, freqs one of {FREQS}, layout one of "
                    f"{LAYOUTS}; got split={split!r}, freqs={freqs!r}, layout={layout!r}"
                )
            if not self.base > 0:
                raise ValueError(f"AxialRotaryEmbedding base must be > 0, got {self.base!r}")
            check_bool("AxialRotaryEmbedding", "mixed", self.mixed)
            check_int("AxialRotaryEmbedding", "seed", self.seed, minimum=-(2**63))  # any int seeds a generator
            if self.head_axes is not None and self.mixed:
                raise ValueError("AxialRotaryEmbedding: give head_axes or mixed=True, not both")
            if self.head_axes is not None:
                set_field(self, "head_axes", tuple(self.head_axes))
            if not isinstance(self.n_prefix, int) or self.n_prefix < 0:
                raise ValueError(f"AxialRotaryEmbedding n_prefix must be an int >= 0, got {self.n_prefix!r}")
            for name in ("shift", "jitter", "rescale"):
                value = getattr(self, name)
                if value is not None and not (value >= (0 if name == "shift" else 1)):
                    raise ValueError(
                        f"AxialRotaryEmbedding {name} must be None or >= {0 if name == 'shift' else 1}, got {value!r}"
                    )

        def rotated_channels(self, head_dim: int) -> int:
            """``rotary_dim``, or all of a head's channels."""
            return head_dim if self.rotary_dim is None else self.rotary_dim

        def check(self, dims: ModelDims) -> None:
            """Refuse a head size the axes do not split into, and heads ``head_axes`` does not match."""
            head_dim, n_heads, n_axes = dims.head_dim, dims.n_head, self.n_axes
            rd = self.rotated_channels(head_dim)
            if not isinstance(rd, int) or rd < 2 or rd % 2 or rd > head_dim:
                raise ValueError(
                    f"AxialRotaryEmbedding rotary_dim must be an even int in [2, head_dim={head_dim}], got {rd!r}"
                )
            if (self.head_axes is not None or self.mixed) and n_heads < 1:
                raise ValueError("AxialRotaryEmbedding head_axes and mixed need n_heads (the heads of q and k)")
            if self.head_axes is not None:
                axes = self.head_axes
                if len(axes) != n_heads or any(a is not None and not 0 <= a < n_axes for a in axes):
                    raise ValueError(
                        f"AxialRotaryEmbedding head_axes must give each of the {n_heads} heads an axis in "
                        f"[0, {n_axes}) or None, got {axes!r}"
                    )
            elif not self.mixed and rd % (2 * n_axes):
                raise ValueError(f"AxialRotaryEmbedding rotary_dim={rd} must split into {n_axes} axes of whole pairs")

        def build(self, dims: ModelDims) -> AxialRotaryEmbedding:
            return AxialRotaryEmbedding(self, dims)

    @classmethod
    def create(
        cls, head_dim: int, n_axes: int = 2, *, n_heads: int | None = None, **options: Any
    ) -> AxialRotaryEmbedding:
        """By hand: the sizes as numbers (``n_heads`` only for ``head_axes`` and ``mixed``) and
        ``options`` the config's fields (the class's Args)."""
        config = cls.Config(n_axes=n_axes, **options)
        if (config.head_axes is not None or config.mixed) and n_heads is None:
            raise ValueError("AxialRotaryEmbedding head_axes and mixed need n_heads (the heads of q and k)")
        return cls(config, sizes(n_head=1 if n_heads is None else n_heads, head_dim=head_dim))

    def __init__(self, config: Config, dims: ModelDims) -> None:
        super().__init__()
        config.check(dims)
        self.config = config
        self.head_dim, self.rotary_dim = dims.head_dim, config.rotated_channels(dims.head_dim)
        self.n_axes, self.layout, self.n_prefix = config.n_axes, config.layout, config.n_prefix
        self.shift, self.jitter, self.rescale = config.shift, config.jitter, config.rescale
        self.split, self.head_axes, self.mixed = config.split, config.head_axes, config.mixed
        F = self._frequency_matrix(config, dims.n_head)
        if config.mixed:
            self.freqs = nn.Parameter(F.to(torch.float32))  # (H, n_axes, pairs), learned
        else:
            self.register_buffer("freqs", F, persistent=False)  # (1 or H, n_axes, pairs) float64

    def _frequency_matrix(self, config: Config, n_heads: int) -> Tensor:
        n, pairs = self.n_axes, self.rotary_dim // 2
        base, freqs, max_freq, head_axes = config.base, config.freqs, config.max_freq, config.head_axes
        if config.mixed:
            return _mixed_init(n_heads, n, self.rotary_dim, base, config.seed)
        if head_axes is not None:
            full = rope_frequencies(self.rotary_dim, base, freqs, max_freq)
            F = torch.zeros(len(head_axes), n, pairs, dtype=torch.float64)
            for h, a in enumerate(head_axes):
                if a is not None:
                    F[h, a] = full
            return F
        per_axis = pairs // n
        F = torch.zeros(1, n, pairs, dtype=torch.float64)
        if config.split == "contiguous":  # each axis: its own 1-D RoPE over rotary_dim / n channels
            own = rope_frequencies(self.rotary_dim // n, base, freqs, max_freq)
            for a in range(n):
                F[0, a, a * per_axis : (a + 1) * per_axis] = own
        else:  # alternating: the full-width frequencies dealt out in turn, each axis's in a block
            full = rope_frequencies(self.rotary_dim, base, freqs, max_freq)
            for a in range(n):
                F[0, a, a * per_axis : (a + 1) * per_axis] = full[a::n]
        return F

    def augment(self, coords: Tensor) -> Tensor:
        """Coordinates (B, T, n) as float64, shifted / jittered / rescaled while training."""
        coords = coords.to(torch.float64)
        if not self.training or (self.shift is None and self.jitter is None and self.rescale is None):
            return coords
        B, dev = coords.shape[0], coords.device
        if self.shift is not None:
            coords = coords + (torch.rand(B, 1, self.n_axes, device=dev, dtype=torch.float64) * 2 - 1) * self.shift
        if self.jitter is not None:
            log = math.log(self.jitter)
            coords = coords * torch.exp((torch.rand(B, 1, self.n_axes, device=dev, dtype=torch.float64) * 2 - 1) * log)
        if self.rescale is not None:
            log = math.log(self.rescale)
            coords = coords * torch.exp((torch.rand(B, 1, 1, device=dev, dtype=torch.float64) * 2 - 1) * log)
        return coords

    def cos_sin(self, coords: Tensor) -> tuple[Tensor, Tensor]:
        """float32 cos/sin (B, 1 or H, T, rotary_dim) for coordinates (T, n) or (B, T, n)."""
        if coords.dim() not in (2, 3) or coords.shape[-1] != self.n_axes:
            raise ValueError(
                f"coords must have shape (T, {self.n_axes}) or (B, T, {self.n_axes}), got {tuple(coords.shape)}"
            )
        c = self.augment(coords if coords.dim() == 3 else coords[None])  # (B, T, n)
        with torch.autocast(device_type=c.device.type, enabled=False):
            # float64 angles, learned frequencies included (autograd passes through the cast and the
            # reduction, whose rounded multiple of 2 pi has zero gradient)
            angles = torch.einsum("btn,hnp->bhtp", c, self.freqs.to(torch.float64))
            angles = (angles - TWO_PI * torch.round(angles / TWO_PI)).to(torch.float32)
            return expand_pairs(angles.cos(), self.layout), expand_pairs(angles.sin(), self.layout)

    def rotate(self, q: Tensor, k: Tensor, coords: Tensor) -> tuple[Tensor, Tensor]:
        """q, k (B, H, T, hs) with T = n_prefix + the coordinates' tokens; the prefix is not rotated."""
        T = q.shape[-2]
        if q.shape[-1] != self.head_dim or k.shape != q.shape:
            raise ValueError(
                f"q and k must have one shape (B, H, T, {self.head_dim}), got {tuple(q.shape)}, {tuple(k.shape)}"
            )
        if coords.shape[-2] != T - self.n_prefix:
            raise ValueError(
                f"coords give {coords.shape[-2]} tokens; q has {T} = n_prefix {self.n_prefix} + the tokens with coordinates"
            )
        cos, sin = self.cos_sin(coords)
        if self.n_prefix:  # unrotated leading tokens: angle 0
            pad = (0, 0, self.n_prefix, 0)
            cos, sin = nn.functional.pad(cos, pad, value=1.0), nn.functional.pad(sin, pad, value=0.0)
        rotate = lambda x: _rotate_heads(x, cos, sin, self.layout)  # noqa: E731
        return rotate(q), rotate(k)

    forward = rotate

    def extra_repr(self) -> str:
        how = "mixed" if self.mixed else f"head_axes={self.head_axes}" if self.head_axes else f"split={self.split!r}"
        return f"head_dim={self.head_dim}, n_axes={self.n_axes}, rotary_dim={self.rotary_dim}, {how}, n_prefix={self.n_prefix}"


def _rotate_heads(x: Tensor, cos: Tensor, sin: Tensor, layout: Layout) -> Tensor:
    """Rotate x (B, H, T, hs) by tables (B, 1 or H, T, rd): per-head tables are applied head by head
    through :func:`apply_rotary`'s reference formula (broadcast over the batch)."""
    cos, sin = (
        torch.broadcast_to(cos, (*x.shape[:-1], cos.shape[-1])),
        torch.broadcast_to(sin, (*x.shape[:-1], sin.shape[-1])),
    )
    B, H, T, _ = x.shape
    flat = lambda t: t.reshape(B * H, T, t.shape[-1])  # noqa: E731
    return apply_rotary(flat(x)[:, None], flat(cos), flat(sin), layout)[:, 0].reshape(x.shape)


def _mixed_init(n_heads: int, n_axes: int, rotary_dim: int, base: float, seed: int) -> Tensor:
    """RoPE-Mixed's initial frequencies (H, n_axes, pairs): magnitudes ``base ** (-4j / rd)``; for two
    axes, pair j along angle phi_h and pair j + pairs/2 along phi_h + pi/2 (the paper's init); for
    other axis counts, a random unit direction per head and pair."""
    g = torch.Generator().manual_seed(seed)
    pairs = rotary_dim // 2
    if n_axes == 2 and pairs % 2 == 0:
        mag = base ** (-torch.arange(0, rotary_dim, 4, dtype=torch.float64) / rotary_dim)  # (pairs / 2,)
        phi = torch.rand(n_heads, 1, generator=g, dtype=torch.float64) * TWO_PI
        angle = torch.cat((phi.expand(-1, pairs // 2), phi.expand(-1, pairs // 2) + math.pi / 2), dim=1)  # (H, pairs)
        m = torch.cat((mag, mag))
        return torch.stack((m * angle.sin(), m * angle.cos()), dim=1)  # axis 0 (rows): y; axis 1 (columns): x
    mag = base ** (-torch.arange(0, rotary_dim, 2, dtype=torch.float64) / rotary_dim)
    direction = torch.randn(n_heads, n_axes, pairs, generator=g, dtype=torch.float64)
    return direction / direction.norm(dim=1, keepdim=True) * mag

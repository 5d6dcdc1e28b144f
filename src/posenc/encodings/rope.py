"""Rotary position embedding (RoPE; Su et al. 2021, "RoFormer", arXiv:2104.09864), with the long-context
frequency schedules of :mod:`posenc.encodings.rope_scaling`, p-RoPE and xPos.

Where it acts: on q and k inside every attention layer (``where = "qk"``). Channel pair i of a
vector at position m is rotated by the angle ``m * w_i``, with ``w_i = base ** (-2i / rotary_dim)``
unless a schedule (``scaling``) says otherwise; the dot product of a rotated query and key then
depends on their positions only through m - n.

Conventions
- ``layout="half"``: pairs are (i, i + rotary_dim/2) -- GPT-NeoX, Hugging Face Llama/Qwen
  (``rotate_half``), torchtune. ``layout="interleaved"``: pairs are (2i, 2i+1) -- the RoFormer
  paper, GPT-J, Meta's Llama (complex multiply). The two layouts are the same rotation up to a
  fixed permutation of channels.
- Rotation sign: (x1, x2) -> (x1 cos - x2 sin, x1 sin + x2 cos), i.e. counter-clockwise by +angle.
- ``rotary_dim < head_dim`` (partial rotary, GPT-NeoX style): the first ``rotary_dim`` channels
  are rotated, the remaining ones pass through bit-identical.
- Precision: frequencies are float64; angles ``m * w_i`` are formed in float64 and reduced to
  [-pi, pi] there, then cos/sin are evaluated and stored in float32 (autocast off), so the tables
  are within ~2e-7 of exact at any position (1e6 and beyond) and stay float32 after
  ``.to(torch.bfloat16)`` / ``.half()``. They are cast to the input dtype only for the final multiply.
  ``inv_freq`` is the float32 rounding of the frequencies, kept for inspection.
- The schedule's attention factor multiplies cos and sin (as Hugging Face does), so q.k scales by
  its square; passed-through channels are not scaled.
- The cos/sin tables for positions < ``cache_len`` are built at construction (non-persistent
  buffers); other positions are computed on the fly, never clipped.

Options
- ``scaling``: a Hugging Face ``rope_parameters`` / ``rope_scaling`` dict (see
  :func:`~posenc.encodings.rope_scaling.validate_scaling`); :meth:`RotaryEmbedding.from_hf_config`
  reads it from a transformers config.
- ``p_rope=p`` (Barbero et al. 2024, "Round and Round We Go", arXiv:2410.06205): keep the first
  ``int(p * rotary_dim // 2)`` (highest) frequencies and set the others to 0, so those pairs carry
  no position. Hugging Face's ``proportional`` schedule is the same thing for ``p =
  partial_rotary_factor``.
- ``norm_after_eps=eps``: q and k divided by their RMS over the head, without a gain, after the
  rotation (Llama 4's weightless QK-norm, which its RoPE layers apply after RoPE).
- ``xpos=True`` (Sun et al. 2022, "A Length-Extrapolatable Transformer", arXiv:2212.10554), as
  rotary-embedding-torch's ``use_xpos``: pair i of a query at position m is also multiplied by
  ``zeta_i ** ((m - c) / xpos_scale_base)`` and a key by its inverse, ``zeta_i = (2i + 0.4 d) / (1.4 d)``,
  with the centre ``c = seq_len // 2``. q.k then decays like ``zeta ** ((m - n) / xpos_scale_base)``.

Multi-axis positions (M-RoPE, :mod:`posenc.encodings.mrope`): with ``mrope_section=(t, h, w)``
positions may have shape (3, B, T) and pair i is rotated by the position on its axis (chunked, or
``mrope_interleaved``); a module's ``pair_axes`` lists the axis each pair takes.

Length-dependent encodings (``length_dependent``: ``dynamic``, ``longrope``, or xPos, whose centre
moves) rotate by a function of the total sequence length ``seq_len`` (past + current tokens;
default: max position + 1, or T without positions). A rotated key is then only valid for the
``seq_len`` it was rotated with, so a KV cache must hold UN-rotated keys and rotate all of them
again at every step with the current ``seq_len``:

    k_all = cache.append(k_raw)                                   # (B, nh, S, hs), not rotated
    q = rope.rotate_queries(q, positions_q, seq_len=S)            # (B, nh, T, hs)
    k_all = rope.rotate_keys(k_all, positions_k, seq_len=S)       # (B, nh, S, hs)

which makes one layer's cached step equal to its uncached forward; a model also recomputes the
cached tokens' hidden states when ``rotation_state`` changes (:mod:`posenc.model`). Static
encodings may cache rotated keys and call ``rotate(q, k, positions)`` on the new tokens only.

API: ``rotate(q, k, positions=None, *, seq_len=None)``, ``rotate_queries(q, positions=None, *,
seq_len=None)``, ``rotate_keys(k, positions=None, *, seq_len=None)``, ``cos_sin(positions, T, device,
*, seq_len=None)`` (float32 rotation tables), ``frequencies(seq_len=None)`` (float64 ``inv_freq``) and
``attention_factor``.

Golden tests: a per-pair 2x2 rotation written from the paper's formula, Hugging Face's
``apply_rotary_pos_emb`` (half layout) and a GPT-J-style interleaved rotation (tests/test_rope.py);
Hugging Face's ``ROPE_INIT_FUNCTIONS``, a float64 rotation at positions up to 1e6, rotary-embedding-
torch's xPos and a p-RoPE formula (tests/test_rope_scaling.py).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor

from posenc.encodings.base import EncodingConfig, ModelDims, PositionalEncoding, check_positions, sizes
from posenc.encodings.mrope import check_section, pair_axes
from posenc.encodings.rope_scaling import (
    ROPE_SCALINGS,
    hf_rope_arguments,
    length_key,
    scaling_rotary_dim,
    validate_scaling,
)
from posenc.encodings.rotation import (
    LAYOUTS,
    Layout,
    apply_rotary,
    expand_pairs,
    rope_cos_sin,
    rope_inv_freq,
    rotate_pairs,
)
from posenc.spec import check_number, frozen_mapping, set_field, spec

__all__ = [
    "LAYOUTS",
    "Layout",
    "RotaryEmbedding",
    "apply_rotary",
    "expand_pairs",
    "rope_cos_sin",
    "rope_inv_freq",
    "rotate_pairs",
]


#: The longest cos/sin table ``build`` makes for a model (``block_size`` when shorter).
MAX_CACHE_LEN = 8192


class RotaryEmbedding(PositionalEncoding):
    """RoPE for q, k of shape (B, nh, T, hs): ``q, k = rope(q, k, positions=None, seq_len=None)``.

    Args:
        head_dim: size of each head (hs).
        base: the rotary base ``rope_base`` (10000 in RoFormer/GPT-NeoX/Llama 2, 500000 in Llama 3).
        layout: ``"half"`` (NeoX / Hugging Face) or ``"interleaved"`` (RoFormer / GPT-J / Meta).
        rotary_dim: channels that are rotated (even, <= head_dim); ``None`` means all of them, or
            ``int(head_dim * partial_rotary_factor)`` when ``scaling`` has that key.
        scaling: a Hugging Face RoPE dict (``rope_type`` and its keys); ``None`` is plain RoPE.
            Its ``rope_theta``, if present, must equal ``base``.
        p_rope: keep this fraction (0, 1] of the highest frequencies; the rest become 0.
        xpos: xPos decay; ``xpos_scale_base`` is its length scale.
        mrope_section: frequency pairs per position axis (M-RoPE, module docstring); positions then
            may have shape (len(mrope_section), B, T). ``mrope_interleaved``: Qwen3-VL's layout.
        norm_after_eps: after the rotation, divide q and k by their RMS over the head (no gain) with
            this eps (Llama 4's QK-norm on its RoPE layers); None: off.
        cache_len: positions ``< cache_len`` use the cos/sin tables built here; others are computed.
    """

    where = "qk"

    @spec
    class Config(EncodingConfig):
        """RoPE's options (see the class): ``base``, ``layout``, ``rotary_dim``, the frequency schedule
        ``scaling`` (stored normalised, None for plain RoPE), ``p_rope``, ``xpos``, ``xpos_scale_base``."""

        base: float = 10000.0
        layout: Layout = "half"
        rotary_dim: int | None = None
        scaling: Mapping[str, Any] | None = None
        p_rope: float | None = None
        xpos: bool = False
        xpos_scale_base: float = 512.0
        mrope_section: tuple[int, ...] | None = None
        mrope_interleaved: bool = False
        norm_after_eps: float | None = None

        def __post_init__(self) -> None:
            owner = "RotaryEmbedding"
            if isinstance(self.base, bool) or not isinstance(self.base, (int, float)) or not self.base > 0:
                raise ValueError(f"{owner} base must be > 0, got {self.base!r}")
            if self.layout not in LAYOUTS:
                raise ValueError(f"{owner} layout must be one of {LAYOUTS}, got {self.layout!r}")
            rd = self.rotary_dim
            if rd is not None and (isinstance(rd, bool) or not isinstance(rd, int) or rd <= 0 or rd % 2):
                raise ValueError(f"{owner} rotary_dim must be None or an even int >= 2, got rotary_dim={rd!r}")
            scaling = validate_scaling(self.scaling)
            theta = scaling.get("rope_theta")
            if theta is not None and float(theta) != float(self.base):
                raise ValueError(f"scaling rope_theta={theta!r} disagrees with base={self.base!r}; pass base={theta!r}")
            p = self.p_rope
            if p is not None:
                if isinstance(p, bool) or not isinstance(p, (int, float)) or not 0 < p <= 1:
                    raise ValueError(f"p_rope must be a fraction in (0, 1], got p_rope={p!r}")
                if scaling["rope_type"] == "proportional":
                    raise ValueError(
                        f"p_rope={p!r} and rope_type 'proportional' both drop frequencies; use one of them"
                    )
            if not isinstance(self.xpos, bool):
                raise TypeError(f"xpos must be a bool, got xpos={self.xpos!r}")
            if isinstance(self.xpos_scale_base, bool) or not self.xpos_scale_base > 0:
                raise ValueError(f"xpos_scale_base must be > 0, got xpos_scale_base={self.xpos_scale_base!r}")
            section = check_section(owner, self.mrope_section, self.mrope_interleaved, scaling["rope_type"], self.xpos)
            set_field(self, "mrope_section", section)
            check_number(owner, "norm_after_eps", self.norm_after_eps, low=0, optional=True)
            plain_rope = scaling == {"rope_type": "default"}
            set_field(self, "base", float(self.base))
            set_field(self, "scaling", None if plain_rope else frozen_mapping(scaling))

        def rotated_channels(self, head_dim: int) -> int:
            """The channels rotated in a head of ``head_dim``: ``rotary_dim``, or what the schedule's
            ``partial_rotary_factor`` gives, or all of them; refused unless even and in [2, head_dim]."""
            rotary_dim = self.rotary_dim
            scaling = validate_scaling(self.scaling)
            if "partial_rotary_factor" in scaling:
                derived = scaling_rotary_dim(head_dim, scaling)
                if rotary_dim is not None and rotary_dim != derived:
                    raise ValueError(
                        f"rotary_dim={rotary_dim!r} disagrees with scaling partial_rotary_factor="
                        f"{scaling['partial_rotary_factor']!r} (head_dim={head_dim} -> {derived})"
                    )
                rotary_dim = derived
            rotary_dim = head_dim if rotary_dim is None else rotary_dim
            if rotary_dim <= 0 or rotary_dim % 2 or rotary_dim > head_dim:
                raise ValueError(f"rotary_dim must be an even int in [2, head_dim={head_dim}], got {rotary_dim!r}")
            if self.mrope_section is not None:
                pair_axes(self.mrope_section, self.mrope_interleaved, rotary_dim)  # refuses a section that does not fit
            return rotary_dim

        def pair_axes(self, head_dim: int) -> list[int] | None:
            """The position axis of each frequency pair (M-RoPE), or None for one axis."""
            if self.mrope_section is None:
                return None
            return pair_axes(self.mrope_section, self.mrope_interleaved, self.rotated_channels(head_dim))

        def check(self, dims: ModelDims) -> None:
            self.rotated_channels(dims.head_dim)

    def __init__(self, config: Config, dims: ModelDims) -> None:
        """RoPE on heads of ``dims.head_dim``, with tables for the first ``block_size`` positions (at most
        ``MAX_CACHE_LEN``: longer ones are computed on the fly, and a 128k-context import would otherwise
        hold a (128k, hs) table per layer)."""
        super().__init__()
        head_dim, cache_len = dims.head_dim, min(dims.block_size, MAX_CACHE_LEN)
        if isinstance(head_dim, bool) or not isinstance(head_dim, int) or head_dim <= 0:
            raise ValueError(f"head_dim must be a positive int, got {head_dim!r}")
        self.config = config
        self.scaling = validate_scaling(config.scaling)
        self.rope_type: str = self.scaling["rope_type"]
        self.head_dim, self.rotary_dim, self.base = head_dim, config.rotated_channels(head_dim), config.base
        self.layout: Layout = config.layout
        self.cache_len = cache_len
        self.p_rope = None if config.p_rope is None else float(config.p_rope)
        self.xpos, self.xpos_scale_base = config.xpos, float(config.xpos_scale_base)
        self.pair_axes = config.pair_axes(head_dim)
        self.position_axes = 1 if config.mrope_section is None else len(config.mrope_section)
        self._schedule = ROPE_SCALINGS[self.rope_type].fn
        # at seq_len <= this, a length-dependent schedule equals its seq_len=None frequencies
        key = length_key(self.rope_type)
        self._short_len: int | None = None if key is None else self.scaling[key]
        self._build_tables(device=None)

    @classmethod
    def create(cls, head_dim: int, *args: Any, cache_len: int = 2048, **options: Any) -> RotaryEmbedding:
        """By hand: ``args`` base, layout, rotary_dim and ``options`` the config's fields (the Args)."""
        names = ("base", "layout", "rotary_dim")
        if len(args) > len(names) or set(names[: len(args)]) & set(options):
            raise TypeError(f"RotaryEmbedding takes head_dim, base, layout, rotary_dim by position, got {args!r}")
        options |= dict(zip(names, args, strict=False))
        return cls.build(sizes(head_dim=head_dim, block_size=0), cache_len=cache_len, **options)

    @classmethod
    def build(cls, dims: ModelDims, *, cache_len: int | None = None, **options: Any) -> RotaryEmbedding:
        """``cache_len`` replaces the tables' length that ``dims`` gives."""
        module = cls(cls.Config(**options), dims)
        if cache_len is not None and cache_len != module.cache_len:
            if isinstance(cache_len, bool) or not isinstance(cache_len, int) or cache_len < 0:
                raise ValueError(f"cache_len must be an int >= 0, got {cache_len!r}")
            module.cache_len = cache_len
            module._build_tables(device=None)
        return module

    @classmethod
    def from_hf_config(cls, config: Any, layer_type: str | None = None, **options: Any) -> RotaryEmbedding:
        """The RoPE of a transformers config (object or ``config.json`` dict): ``rope_theta``,
        ``rope_parameters`` (v5) or ``rope_scaling`` (v4), ``partial_rotary_factor``, ``head_dim``
        (or ``hidden_size // num_attention_heads``), ``max_position_embeddings`` and a top-level
        ``original_max_position_embeddings`` (Phi-3), resolved as Hugging Face does. With per-layer
        parameters (Gemma 3: ``{"full_attention": {...}, "sliding_attention": {...}}``) ``layer_type``
        picks one. ``options`` go to the constructor (layout, cache_len, ...); the layout is
        Hugging Face's ``"half"`` unless given.
        """
        head_dim, theta, params, found = hf_rope_arguments(config, layer_type)
        return cls(head_dim, base=theta, scaling=params, **(found | options))

    @property
    def length_dependent(self) -> bool:
        """True when the rotation depends on the total sequence length (see the module docstring)."""
        return self._short_len is not None or self.xpos

    def rotation_state(self, seq_len: int) -> Any:
        """None while the rotation is that of no length (static schedules; a length-dependent one
        within its original context); past it, LongRoPE's long factors (one state), or the length
        itself (dynamic NTK, whose frequencies move at every length; xPos, whose centre moves)."""
        if not self.length_dependent:
            return None
        if self.xpos:
            return seq_len
        if seq_len <= self._short_len:  # type: ignore[operator]
            return None
        return "long" if self.rope_type == "longrope" else seq_len

    def frequencies(self, seq_len: int | Tensor | None = None, device: torch.device | None = None) -> Tensor:
        """float64 inverse frequencies (rotary_dim/2,) at total length ``seq_len``, p-RoPE applied."""
        inv_freq, _ = self._schedule(self.rotary_dim, self.base, self.scaling, seq_len, device=device)
        if self.p_rope is not None:
            inv_freq = inv_freq.clone()
            inv_freq[int(self.p_rope * self.rotary_dim // 2) :] = 0.0
        return inv_freq

    def _build_tables(self, device: torch.device | None) -> None:
        inv_freq = self.frequencies(None, device)
        _, self.attention_factor = self._schedule(self.rotary_dim, self.base, self.scaling, None)
        cos, sin = rope_cos_sin(
            torch.arange(self.cache_len, device=device),
            inv_freq,
            self.layout,
            self.attention_factor,
        )
        self.register_buffer("inv_freq", inv_freq.to(torch.float32), persistent=False)
        self.register_buffer("inv_freq64", inv_freq, persistent=False)
        self.register_buffer("cos_cached", cos, persistent=False)  # (cache_len, rd) float32
        self.register_buffer("sin_cached", sin, persistent=False)
        if self.pair_axes is not None:  # the axis of each rotated channel, for picking from per-axis tables
            axes = expand_pairs(torch.tensor(self.pair_axes, device=device), self.layout)
            self.register_buffer("channel_axes", axes, persistent=False)
        if self.xpos:
            zeta = torch.arange(0, self.rotary_dim, 2, dtype=torch.float64, device=device) + 0.4 * self.rotary_dim
            self.register_buffer("xpos_zeta", zeta / (1.4 * self.rotary_dim), persistent=False)

    def _apply(self, fn, recurse=True):  # type: ignore[override]
        # .to(dtype) / .half() would round the tables; re-derive them (float64 / float32) on the new device.
        super()._apply(fn, recurse)
        self._build_tables(self.inv_freq.device)
        return self

    def _seq_len(self, positions: Tensor | None, T: int, seq_len: int | Tensor | None) -> int | Tensor | None:
        """The total length a length-dependent rotation uses; None for static ones (they ignore it)."""
        if not self.length_dependent:
            return None
        if positions is None:
            return T if seq_len is None else seq_len
        if torch.compiler.is_compiling():
            return positions.max() + 1 if seq_len is None else seq_len
        needed = int(positions.max()) + 1 if positions.numel() else 0
        if seq_len is None:
            return needed
        if isinstance(seq_len, int) and seq_len < needed:
            raise ValueError(f"seq_len={seq_len} is shorter than the largest position + 1 = {needed}")
        return seq_len

    def _in_tables(self, positions: Tensor | None) -> bool:
        """One integer axis of positions, all inside the built tables (checked on CPU only: no sync)."""
        if positions is None or positions.dim() > 2 or positions.device.type != "cpu" or not positions.numel():
            return False
        exact = not (positions.is_floating_point() or torch.compiler.is_compiling())
        return exact and int(positions.max()) < self.cache_len  # check_positions refused negative ones

    def cos_sin(
        self,
        positions: Tensor | None,
        T: int,
        device: torch.device,
        *,
        seq_len: int | Tensor | None = None,
    ) -> tuple[Tensor, Tensor]:
        """float32 cos/sin tables (T, rd) or (B, T, rd) for ``positions`` (default ``arange(T)``), the
        attention factor included; ``seq_len`` matters only when ``length_dependent``."""
        if positions is not None:
            check_positions(positions, None, axes=self.position_axes > 1)
        seq_len = self._seq_len(positions, T, seq_len)
        if self._short_len is not None and not (isinstance(seq_len, int) and seq_len <= self._short_len):
            inv_freq = self.frequencies(seq_len, self.inv_freq64.device)
        elif positions is None and self.cache_len >= T:
            return self.cos_cached[:T], self.sin_cached[:T]
        elif self._in_tables(positions):  # a decoding step's positions: rows of the same tables
            return self.cos_cached[positions], self.sin_cached[positions]
        else:
            inv_freq = self.inv_freq64
        if positions is None:
            positions = torch.arange(T, device=device)
        if positions.dim() == 3 and self.pair_axes is None:
            raise ValueError(
                f"positions of shape {tuple(positions.shape)} have several axes; this RoPE has no mrope_section"
            )
        cos, sin = rope_cos_sin(positions, inv_freq, self.layout, self.attention_factor)
        if positions.dim() == 3:  # (axes, B, T, rd): each channel from its axis's table
            index = self.channel_axes.expand(1, *cos.shape[1:])
            cos, sin = cos.gather(0, index)[0], sin.gather(0, index)[0]
        return cos, sin

    def xpos_scale(
        self,
        positions: Tensor | None,
        T: int,
        device: torch.device,
        *,
        seq_len: int | Tensor,
    ) -> Tensor:
        """float32 xPos factors (T, rd) or (B, T, rd) for queries; keys use the reciprocal."""
        if positions is None:
            positions = torch.arange(T, device=device)
        with torch.autocast(device_type=positions.device.type, enabled=False):
            power = (positions - seq_len // 2).to(torch.float64)[..., None] / self.xpos_scale_base  # (..., T, 1)
            return expand_pairs(self.xpos_zeta**power, self.layout).to(torch.float32)

    def _check(self, x: Tensor, positions: Tensor | None, name: str) -> None:
        if x.shape[-1] != self.head_dim:
            raise ValueError(f"{name} must have head size {self.head_dim} in its last dim, got {tuple(x.shape)}")
        T = x.shape[-2]
        if positions is None:
            return
        if positions.dim() == 3 and self.position_axes > 1:
            if positions.shape[0] != self.position_axes or positions.shape[-1] != T:
                raise ValueError(
                    f"M-RoPE positions must have shape ({self.position_axes}, B, {T}) (one row per mrope_section axis), "
                    f"got {tuple(positions.shape)}"
                )
        elif positions.dim() not in (1, 2) or positions.shape[-1] != T:
            # a (1,) tensor would otherwise broadcast and put every token at one position
            axes = f", or ({self.position_axes}, B, {T}) with M-RoPE" if self.position_axes > 1 else ""
            raise ValueError(f"positions must have shape ({T},) or (B, {T}){axes}, got {tuple(positions.shape)}")

    def _rotate_one(
        self,
        x: Tensor,
        positions: Tensor | None,
        seq_len: int | Tensor | None,
        key: bool,
    ) -> Tensor:
        T = x.shape[-2]
        cos, sin = self.cos_sin(positions, T, x.device, seq_len=seq_len)
        if self.xpos:
            scale = self.xpos_scale(positions, T, x.device, seq_len=self._seq_len(positions, T, seq_len))
            scale = scale.reciprocal() if key else scale
            cos, sin = cos * scale, sin * scale
        return self._norm_after(apply_rotary(x, cos, sin, self.layout))

    def _norm_after(self, x: Tensor) -> Tensor:
        """x / RMS(x) over the head, without a gain (``norm_after_eps``), or x."""
        eps = self.config.norm_after_eps
        if eps is None:
            return x
        return (x.float() * torch.rsqrt(x.float().pow(2).mean(-1, keepdim=True) + eps)).to(x.dtype)

    def rotate_queries(
        self,
        q: Tensor,
        positions: Tensor | None = None,
        *,
        seq_len: int | Tensor | None = None,
    ) -> Tensor:
        """Rotate queries (B, nh, T, hs) at ``positions``; ``seq_len``: total length (past + current)."""
        self._check(q, positions, "q")
        return self._rotate_one(q, positions, seq_len, key=False)

    def rotate_keys(
        self,
        k: Tensor,
        positions: Tensor | None = None,
        *,
        seq_len: int | Tensor | None = None,
    ) -> Tensor:
        """Rotate keys (B, nh, T, hs) at ``positions``; ``seq_len``: total length (past + current)."""
        self._check(k, positions, "k")
        return self._rotate_one(k, positions, seq_len, key=True)

    def rotate(
        self,
        q: Tensor,
        k: Tensor,
        positions: Tensor | None = None,
        *,
        seq_len: int | Tensor | None = None,
    ) -> tuple[Tensor, Tensor]:
        if q.shape[-1] != self.head_dim or k.shape[-1] != self.head_dim:
            raise ValueError(
                f"q and k must have head size {self.head_dim} in their last dim, "
                f"got {tuple(q.shape)} and {tuple(k.shape)}"
            )
        T = q.shape[-2]
        if k.shape[-2] != T:
            raise ValueError(f"q and k must have the same length T, got {tuple(q.shape)} and {tuple(k.shape)}")
        self._check(q, positions, "q")
        if self.xpos:
            return self._rotate_one(q, positions, seq_len, key=False), self._rotate_one(k, positions, seq_len, key=True)
        cos, sin = self.cos_sin(positions, T, q.device, seq_len=seq_len)
        return self._norm_after(apply_rotary(q, cos, sin, self.layout)), self._norm_after(
            apply_rotary(k, cos, sin, self.layout)
        )

    forward = rotate

    def extra_repr(self) -> str:
        extra = "" if self.rope_type == "default" else f", rope_type={self.rope_type!r}"
        extra += "" if self.p_rope is None else f", p_rope={self.p_rope}"
        extra += f", xpos_scale_base={self.xpos_scale_base}" if self.xpos else ""
        if self.pair_axes is not None:
            extra += f", mrope_section={self.config.mrope_section}" + (
                ", interleaved" if self.config.mrope_interleaved else ""
            )
        return (
            f"head_dim={self.head_dim}, base={self.base}, layout={self.layout!r}, "
            f"rotary_dim={self.rotary_dim}, cache_len={self.cache_len}{extra}"
        )

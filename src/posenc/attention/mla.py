"""Multi-head latent attention (MLA; DeepSeek-AI 2024, "DeepSeek-V2", arXiv:2405.04434; DeepSeek-V3).

Shapes: B batch, T new tokens, S = held + T keys, C = n_embd, nh heads, L = kv_lora_rank,
r = qk_rope_head_dim, dn = qk_nope_head_dim, dv = v_head_dim.

Keys and values are not projected from x directly. One projection ``kv_a_proj_with_mqa`` maps x to
a latent c (L channels, RMS-normalised by ``kv_a_layernorm``) and ONE shared key k_pe (r channels,
the same for every head); ``kv_b_proj`` expands c to per-head k_nope (dn) and v (dv). Queries are
per head [q_nope (dn) | q_pe (r)], from ``q_proj`` or, with ``q_lora_rank``, the low-rank
``q_a_proj -> q_a_layernorm -> q_b_proj``::

    x -> kv_a_proj_with_mqa -> [ c | k_pe ] -> RMSNorm(c) -> kv_b_proj -> k_nope, v   (per head)
                                      `-> pe.rotate (1 head, r channels)
    x -> q_proj (or q_a -> norm -> q_b) -> [ q_nope | q_pe ]                            (per head)
                                                     `-> pe.rotate (nh heads, r channels)
    score_h = (q_nope_h . k_nope_h + q_pe_h . k_pe) * softmax_scale (+ pe.score_bias)

Where the encoding acts: only on the decoupled part (q_pe, k_pe). RoPE cannot act on k_nope,
because a position-dependent rotation between W_UK and the query would stop W_UK from being folded
into the query (docs/mla.md). ``where="qk"`` rotates (q_pe, k_pe) with ``pe.rotate`` (its head size
must be r); ``where="none"`` (NoPE) keeps the decoupled part, unrotated, so the weights and the
Hugging Face mapping are the same for every encoding; ``where="scores"`` adds ``pe.score_bias``;
input-level encodings are refused (they belong to the model).

Conventions
- Softmax scale as DeepSeek: ``(dn + r) ** -0.5``, times ``mscale(factor, mscale_all_dim) ** 2``
  when the RoPE's ``scaling`` dict (YaRN as in DeepSeek-V2/V3 configs) sets ``mscale_all_dim``; the
  RoPE's own ``attention_factor`` (``mscale / mscale_all_dim``) already multiplies cos and sin.
  ``softmax_scale=`` overrides it.
- ``rope_interleave=True`` (DeepSeek-V3 checkpoints): the r channels of q_pe and k_pe hold
  interleaved pairs (2i, 2i+1); they are de-interleaved to (i, i + r/2) and then rotated in the
  half layout, exactly as Hugging Face's ``apply_rotary_pos_emb_interleave``. It therefore needs a
  ``layout="half"`` RoPE (``rope_interleave=False`` with ``layout="interleaved"`` gives the same
  attention with the pairs left in place).
- QK-norm is refused: a per-head norm of k_nope is not linear in c, so it would break the absorbed
  decode below; c and the low-rank query already have their RMSNorms.
- Biases (``bias=True``) as Hugging Face's ``attention_bias``: on q_a_proj, kv_a_proj_with_mqa and
  the output projection ``c_proj`` (Hugging Face's ``o_proj``); never on q_proj, q_b_proj or
  kv_b_proj (a bias there could not be absorbed).

KV cache (:class:`MLACache`): per token only the row [c | k_pe] (L + r numbers, k_pe rotated), never
per-head keys or values. Without a cache the forward is the naive one (expand c to per-head keys
and values, then attend). With a cache it is the absorbed one: W_UK is folded into the query
(q_nope W_UK: (B, nh, T, L)), attention runs against [c | k_pe] as one shared key head with c as
the value (value width L, key width L + r), and W_UV is applied to the (B, nh, T, L) output. Both
are the same function of x to rounding, and both run the one attention kernel, so score biases,
windows, chunks and packed documents are exact and linear in memory here too.
Length-dependent RoPE schedules (``pe.length_dependent``: dynamic NTK, LongRoPE, xPos) rotate by a
function of the total length, so for them the cache holds k_pe UN-rotated and re-rotates all of it
at every step (cheap: one head of r channels).

Golden test: tests/test_mla.py loads the same weights into Hugging Face's ``DeepseekV3Attention``
(with ``DeepseekV3RotaryEmbedding``) and compares outputs, default RoPE and YaRN, with and without
``q_lora_rank``, both ``rope_interleave`` values.
"""

from __future__ import annotations

import torch
from einops import rearrange
from torch import Tensor, nn

from posenc.attention.base import Attention, AttentionConfig, append_positions, kept, with_head_dim
from posenc.attention.mask import Mask
from posenc.attention.mla_dims import MLADims, cache_bytes_per_token, mla_dims, mla_softmax_scale, yarn_mscale
from posenc.encodings.base import EncodingConfig, ModelDims, PositionalEncoding
from posenc.encodings.nope import NoPE
from posenc.spec import check_bool, check_number, spec
from posenc.weight_init import WeightInit

__all__ = [
    "MLACache",
    "MLADims",
    "MultiHeadLatentAttention",
    "cache_bytes_per_token",
    "mla_dims",
    "mla_softmax_scale",
    "yarn_mscale",
]


class MLACache:
    """What one MLA layer keeps per token: the row [normalised latent c | shared key k_pe].

    ``kv`` is (B, S, kv_lora_rank + qk_rope_head_dim); ``latent`` and ``k_pe`` are views of it. k_pe
    is rotated, except under a length-dependent encoding (see the module docstring).
    """

    def __init__(self, kv_lora_rank: int, mask: Mask | None = None) -> None:
        self.kv_lora_rank = kv_lora_rank
        self.mask = Mask() if mask is None else mask  # a window or chunk keeps only the rows still visible
        self.seen = 0
        self.kv: Tensor | None = None  # (B, S, L + r)
        self.positions: Tensor | None = None  # (S,) or (B, S)
        self.features: Tensor | None = None  # (B, nh, S, F): the encoding's token_features, if any

    @property
    def length(self) -> int:
        """Number of tokens already processed."""
        return self.seen

    @property
    def stored(self) -> int:
        """Number of rows held."""
        return 0 if self.kv is None else self.kv.shape[1]

    @property
    def latent(self) -> Tensor | None:
        return None if self.kv is None else self.kv[..., : self.kv_lora_rank]  # (B, S, L)

    @property
    def k_pe(self) -> Tensor | None:
        return None if self.kv is None else self.kv[..., self.kv_lora_rank :]  # (B, S, r)

    @property
    def nbytes(self) -> int:
        """Bytes of the cached rows (positions not counted)."""
        return 0 if self.kv is None else self.kv.numel() * self.kv.element_size()

    def update(self, kv: Tensor, positions: Tensor, documents: bool = False) -> tuple[Tensor, Tensor]:
        """Append rows (B, T, L + r) at ``positions`` (T,) or (B, T); return the held and the new rows
        and positions (:class:`~posenc.attention.base.LayerKVCache` says which rows stay held)."""
        self.seen += kv.shape[1]
        if self.kv is not None:
            kv = torch.cat((self.kv, kv), dim=1)
            positions = append_positions(self.positions, positions, kv.shape[0])
        cut = kv.shape[1] - kept(self.mask, self.seen, kv.shape[1], documents)
        self.kv, self.positions = kv[:, cut:], positions[..., cut:]
        return kv, positions


def _deinterleave(x: Tensor) -> Tensor:
    """(..., r) pairs (2i, 2i+1) -> (i, i + r/2): Hugging Face's de-interleave before rotate_half."""
    return torch.cat((x[..., 0::2], x[..., 1::2]), dim=-1)


class MultiHeadLatentAttention(Attention):
    """Multi-head latent attention with an injected positional encoding on its decoupled rotary part.

    ``MultiHeadLatentAttention(config, dims, pe=..., mask=..., dropout=...)`` builds it from its
    ``Config``; ``MultiHeadLatentAttention(n_embd, n_head, ...)`` (:meth:`create`) from these Args:
        n_embd, n_head: model width and number of heads.
        pe: the encoding (``where`` "qk" with head size ``qk_rope_head_dim``, "scores" or "none");
            ``None`` means :class:`NoPE`.
        qk_norm: must be ``None`` (see the module docstring).
        window, chunk: a sliding window / attention chunk in tokens (``None`` = off).
        dropout: attention-probability and residual dropout.
        bias: Hugging Face's ``attention_bias`` (module docstring).
        block_size: accepted for the common signature; unused.
        kv_lora_rank, q_lora_rank, qk_rope_head_dim, qk_nope_head_dim, v_head_dim: sizes, defaults
            as :func:`mla_dims`.
        rope_interleave: the rotary channels hold interleaved pairs (DeepSeek-V3 checkpoints).
        softmax_scale: overrides :func:`mla_softmax_scale`.
        softcap, sinks, backend: see :class:`~posenc.attention.base.AttentionConfig`.
    """

    @spec
    class Config(AttentionConfig):
        """MLA's sizes (None = the defaults of :func:`mla_dims`), ``rope_interleave``, ``bias`` (Hugging
        Face's ``attention_bias``) and ``softmax_scale`` (None = DeepSeek's)."""

        kv_lora_rank: int | None = None
        q_lora_rank: int | None = None
        qk_rope_head_dim: int | None = None
        qk_nope_head_dim: int | None = None
        v_head_dim: int | None = None
        rope_interleave: bool = False
        bias: bool = False
        softmax_scale: float | None = None

        def __post_init__(self) -> None:
            super().__post_init__()
            owner = "MultiHeadLatentAttention.Config"  # the sizes are checked against the model: check(dims)
            check_bool(owner, "rope_interleave", self.rope_interleave)
            check_bool(owner, "bias", self.bias)
            check_number(owner, "softmax_scale", self.softmax_scale, low=0, optional=True)

        def dims(self, dims: ModelDims) -> MLADims:
            sizes = ("kv_lora_rank", "q_lora_rank", "qk_rope_head_dim", "qk_nope_head_dim", "v_head_dim")
            return mla_dims(dims.n_embd, dims.n_head, **{name: getattr(self, name) for name in sizes})

        def check(self, dims: ModelDims, encoding: EncodingConfig | None = None) -> None:
            self.dims(dims)
            if encoding is not None and encoding.encoding.has_content_bias:
                raise ValueError(_NO_CONTENT_BIAS.format(name=encoding.encoding.__name__))
            layout = None if encoding is None else encoding.options().get("layout", "half")
            if self.rope_interleave and layout not in (None, "half"):
                raise ValueError(_INTERLEAVE_NEEDS_HALF.format(name=type(encoding).__qualname__, layout=layout))

        def encoding_dims(self, dims: ModelDims) -> ModelDims:
            """The encoding acts on the decoupled rotary part: head size ``qk_rope_head_dim``."""
            return with_head_dim(dims, self.dims(dims).qk_rope_head_dim)

        def cache_bytes_per_token(self, dims: ModelDims, dtype: torch.dtype = torch.float16) -> int:
            """The latent and the shared rotary key: ``kv_lora_rank + qk_rope_head_dim`` elements."""
            d = self.dims(dims)
            return (d.kv_lora_rank + d.qk_rope_head_dim) * torch.empty((), dtype=dtype).element_size()

    @classmethod
    def create(
        cls,
        n_embd: int,
        n_head: int,
        *,
        pe: PositionalEncoding | None = None,
        qk_norm: str | None = None,
        window: int | None = None,
        chunk: int | None = None,
        dropout: float = 0.0,
        bias: bool = False,
        block_size: int = 1024,
        kv_lora_rank: int | None = None,
        q_lora_rank: int | None = None,
        qk_rope_head_dim: int | None = None,
        qk_nope_head_dim: int | None = None,
        v_head_dim: int | None = None,
        rope_interleave: bool = False,
        softmax_scale: float | None = None,
        softcap: float | None = None,
        sinks: bool = False,
        backend: str = "auto",
    ) -> MultiHeadLatentAttention:
        """The layer from flat keyword arguments (the class's Args): builds the config and the sizes."""
        if qk_norm is not None:
            raise ValueError(
                f"MultiHeadLatentAttention does not take QK-norm (got qk_norm={qk_norm!r}): a per-head norm of the "
                f"keys is not linear in the latent, so W_UK could no longer be folded into the query for decoding"
            )
        config = cls.Config(
            kv_lora_rank=kv_lora_rank,
            q_lora_rank=q_lora_rank,
            qk_rope_head_dim=qk_rope_head_dim,
            qk_nope_head_dim=qk_nope_head_dim,
            v_head_dim=v_head_dim,
            rope_interleave=rope_interleave,
            bias=bias,
            softmax_scale=softmax_scale,
            softcap=softcap,
            sinks=sinks,
            backend=backend,
        )
        dims = ModelDims(n_embd=n_embd, n_head=n_head, block_size=block_size)
        return cls(config, dims, pe=pe, mask=Mask(window=window, chunk=chunk), dropout=dropout)

    def __init__(
        self,
        config: Config,
        dims: ModelDims,
        *,
        pe: PositionalEncoding | None = None,
        mask: Mask | None = None,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        n_embd, n_head, bias, rope_interleave = dims.n_embd, dims.n_head, config.bias, config.rope_interleave
        dims = config.dims(dims)  # the latent and head sizes (MLADims)
        pe = NoPE() if pe is None else pe
        _check_encoding(pe, dims, rope_interleave)
        self.n_embd, self.n_head, self.dims = n_embd, n_head, dims
        self.kv_lora_rank, self.q_lora_rank = dims.kv_lora_rank, dims.q_lora_rank
        self.qk_rope_head_dim, self.qk_nope_head_dim, self.v_head_dim = (
            dims.qk_rope_head_dim,
            dims.qk_nope_head_dim,
            dims.v_head_dim,
        )
        self.rope_interleave = rope_interleave
        q_out = n_head * dims.qk_head_dim
        if dims.q_lora_rank is None:
            self.q_proj = nn.Linear(n_embd, q_out, bias=False)
        else:
            self.q_a_proj = nn.Linear(n_embd, dims.q_lora_rank, bias=bias)
            self.q_a_layernorm = nn.RMSNorm(dims.q_lora_rank, eps=1e-6)
            self.q_b_proj = nn.Linear(dims.q_lora_rank, q_out, bias=False)
        self.kv_a_proj_with_mqa = nn.Linear(n_embd, dims.kv_lora_rank + dims.qk_rope_head_dim, bias=bias)
        self.kv_a_layernorm = nn.RMSNorm(dims.kv_lora_rank, eps=1e-6)
        self.kv_b_proj = nn.Linear(dims.kv_lora_rank, n_head * (dims.qk_nope_head_dim + dims.v_head_dim), bias=False)
        self.c_proj = nn.Linear(n_head * dims.v_head_dim, n_embd, bias=bias)
        self._setup(config, pe, mask, dropout, n_head)
        self.softmax_scale = (
            float(config.softmax_scale)
            if config.softmax_scale is not None
            else mla_softmax_scale(dims.qk_head_dim, self.pe.scaling)
        )

    def new_cache(self) -> MLACache:
        """An empty cache for this layer (latent and shared rotary key per token)."""
        return MLACache(self.kv_lora_rank, self.mask)

    def init_weights(self, init: WeightInit) -> None:
        """Every projection N(0, std), the output one into the residual stream N(0, residual_std);
        the latent norms' gains and the encoding keep their constructors' values."""
        for name in ("q_proj",) if self.q_lora_rank is None else ("q_a_proj", "q_b_proj"):
            init.linear(name, getattr(self, name))
        init.linear("kv_a_proj_with_mqa", self.kv_a_proj_with_mqa)
        init.linear("kv_b_proj", self.kv_b_proj)
        init.linear("c_proj", self.c_proj, residual=True)

    def _queries(self, x: Tensor) -> Tensor:
        if self.q_lora_rank is None:
            q = self.q_proj(x)
        else:
            q = self.q_b_proj(self.q_a_layernorm(self.q_a_proj(x)))
        return rearrange(q, "b t (nh d) -> b nh t d", nh=self.n_head)  # (B, nh, T, dn + r)

    def forward(
        self,
        x: Tensor,
        positions: Tensor | None = None,
        cache: MLACache | None = None,
        segments: tuple[Tensor, Tensor] | None = None,
    ) -> Tensor:
        """x (B, T, C) -> (B, T, C). ``positions`` (T,) or (B, T) default to past + arange(T);
        ``segments``: (query ids (B, T), key ids (B, past + T)) of packed documents."""
        L, r = self.kv_lora_rank, self.qk_rope_head_dim
        q_nope, q_pe = self._queries(x).split([self.qk_nope_head_dim, r], dim=-1)  # (B, nh, T, dn), (B, nh, T, r)
        latent, k_pe = self.kv_a_proj_with_mqa(x).split([L, r], dim=-1)  # (B, T, L), (B, T, r)
        latent = self.kv_a_layernorm(latent)
        k_pe = k_pe[:, None]  # (B, 1, T, r): one key head shared by all query heads
        if self.rope_interleave:
            q_pe, k_pe = _deinterleave(q_pe), _deinterleave(k_pe)
        positions, q_pos = self.default_positions(x, positions, 0 if cache is None else cache.length)
        if cache is None:
            q_pe, k_pe = self.pe.rotate(q_pe, k_pe, positions)
            features = self.features(x, cache)
            y = self._attend_naive(q_nope, q_pe, latent, k_pe, q_pos, q_pos, segments, features)
        elif self.pe.length_dependent:
            row = torch.cat((latent, k_pe[:, 0]), dim=-1)
            kv, k_pos = cache.update(row, q_pos, segments is not None)  # (B, S, L + r), k_pe raw
            seq_len = int(k_pos.max()) + 1
            q_pe = self.pe.rotate_queries(q_pe, q_pos, seq_len=seq_len)
            k_pe_all = self.pe.rotate_keys(kv[:, None, :, L:], k_pos, seq_len=seq_len)  # (B, 1, S, r)
            features = self.features(x, cache)
            y = self._attend_absorbed(q_nope, q_pe, kv[..., :L], k_pe_all, q_pos, k_pos, segments, features)
        else:
            q_pe, k_pe = self.pe.rotate(q_pe, k_pe, positions)
            kv, k_pos = cache.update(
                torch.cat((latent, k_pe[:, 0]), dim=-1), q_pos, segments is not None
            )  # (B, S, L + r)
            features = self.features(x, cache)
            y = self._attend_absorbed(q_nope, q_pe, kv[..., :L], kv[:, None, :, L:], q_pos, k_pos, segments, features)
        y = rearrange(y, "b nh t dv -> b t (nh dv)")  # (B, T, nh * dv)
        return self.resid_dropout(self.c_proj(y))

    def _attend_naive(self, q_nope, q_pe, latent, k_pe, q_pos, k_pos, segments, features) -> Tensor:
        """Expand the latent to per-head keys and values, then attend: -> (B, nh, T, dv)."""
        kv = rearrange(self.kv_b_proj(latent), "b s (nh d) -> b nh s d", nh=self.n_head)  # (B, nh, S, dn + dv)
        k_nope, v = kv.split([self.qk_nope_head_dim, self.v_head_dim], dim=-1)
        k = torch.cat((k_nope, k_pe.expand(-1, self.n_head, -1, -1)), dim=-1)  # (B, nh, S, dn + r)
        q = torch.cat((q_nope, q_pe), dim=-1)  # (B, nh, T, dn + r)
        return self.attend(q, k, v, q_pos, k_pos, segments, features, self.softmax_scale)

    def _attend_absorbed(self, q_nope, q_pe, latent, k_pe, q_pos, k_pos, segments, features) -> Tensor:
        """Attend in latent space: q_nope . (W_UK c) = (q_nope W_UK) . c, and W_UV after the
        weighted sum, so no per-head key or value is formed: -> (B, nh, T, dv)."""
        w = self.kv_b_proj.weight.view(self.n_head, self.qk_nope_head_dim + self.v_head_dim, self.kv_lora_rank)
        w_uk, w_uv = w[:, : self.qk_nope_head_dim], w[:, self.qk_nope_head_dim :]  # (nh, dn, L), (nh, dv, L)
        q_lat = torch.einsum("bhtd,hdl->bhtl", q_nope, w_uk)  # (B, nh, T, L)
        q = torch.cat((q_lat, q_pe), dim=-1)  # (B, nh, T, L + r)
        k = torch.cat((latent[:, None], k_pe), dim=-1)  # (B, 1, S, L + r): one key head for every query head
        o_lat = self.attend(
            q, k, latent[:, None], q_pos, k_pos, segments, features, self.softmax_scale
        )  # (B, nh, T, L)
        return torch.einsum("bhtl,hvl->bhtv", o_lat, w_uv)  # (B, nh, T, dv)

    def extra_repr(self) -> str:
        d = self.dims
        return (
            f"n_head={self.n_head}, kv_lora_rank={d.kv_lora_rank}, q_lora_rank={d.q_lora_rank}, "
            f"qk_rope_head_dim={d.qk_rope_head_dim}, qk_nope_head_dim={d.qk_nope_head_dim}, "
            f"v_head_dim={d.v_head_dim}, rope_interleave={self.rope_interleave}, "
            f"softmax_scale={self.softmax_scale:.6g}, window={self.window}"
        )


_INTERLEAVE_NEEDS_HALF = (
    "rope_interleave=True de-interleaves the rotary channels into the half layout, so it needs a "
    "layout='half' {name}, got layout={layout!r} (rope_interleave=False with layout='interleaved' "
    "is the same attention)"
)


_NO_CONTENT_BIAS = (
    "MultiHeadLatentAttention takes no encoding with a content bias ({name}): it reads per-head queries "
    "of the encoding's width, which MLA forms only on its decoupled rotary part"
)


def _check_encoding(pe: PositionalEncoding, dims: MLADims, rope_interleave: bool) -> None:
    name = type(pe).__name__
    if pe.has_content_bias:
        raise ValueError(_NO_CONTENT_BIAS.format(name=name))
    if pe.where not in ("qk", "scores", "none"):
        raise ValueError(
            f"MultiHeadLatentAttention takes encodings with where 'qk', 'scores' or 'none'; {name} has where={pe.where!r}"
        )
    if pe.head_dim is not None and pe.head_dim != dims.qk_rope_head_dim:
        raise ValueError(
            f"{name} has head_dim={pe.head_dim}, but MLA rotates only its decoupled part of "
            f"qk_rope_head_dim={dims.qk_rope_head_dim} channels; build it with head_dim={dims.qk_rope_head_dim}"
        )
    if rope_interleave and pe.layout not in (None, "half"):
        raise ValueError(_INTERLEAVE_NEEDS_HALF.format(name=name, layout=pe.layout))

"""Causal self-attention that takes its positional encoding as an injected module.

Shapes: B batch, T tokens, C = n_embd channels, nh heads, hs = C // nh head size.

Per layer the order is fixed and pinned by tests/test_attention.py:
    x -> c_attn -> q, k, v -> QK-norm(q, k) -> pe.rotate(q, k) -> [KV cache] -> attention(+ pe.score_bias) -> c_proj
QK-norm acts before RoPE, as in OLMo 2, Qwen3 and Gemma 3, so the rotation sees unit-scale
vectors and the norm never sees position information.

Attention runs through :meth:`posenc.attention.base.Attention.attend` (the one kernel,
:func:`posenc.attention.kernel.attend`): SDPA with ``is_causal=True`` when nothing but
causality shapes the scores (flash kernel where the hardware has one), otherwise one SDPA call
with a dense additive mask while it fits a budget, compiled FlexAttention for the cases a GPU check
passed, or an exact blockwise path, linear in memory (docs/attention.md).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Literal

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn

from posenc.attention.base import Attention, AttentionConfig, KVCache, LayerKVCache, append_positions
from posenc.attention.kernel import attend
from posenc.attention.mask import Mask
from posenc.attention.scores import ScoreInputs
from posenc.built import BuiltFromConfig
from posenc.encodings.base import EncodingConfig, ModelDims, PositionalEncoding
from posenc.spec import Spec, check_bool, check_choice, check_int, check_number, spec
from posenc.weight_init import WeightInit

__all__ = [
    "CausalSelfAttention",
    "KVCache",
    "LayerKVCache",
    "QKNorm",
    "QKNormAttention",
    "append_positions",
    "causal_attention",
]

QKNormType = Literal["rms", "rms_full", "l2"]
QK_NORM_TYPES: tuple[str, ...] = ("rms", "rms_full", "l2")


#: the RMS QK-norms' default epsilon (Qwen3, Gemma 3 and OLMo 2 ship it)
QK_NORM_EPS = 1e-6


class QKNorm(nn.Module, metaclass=BuiltFromConfig):
    """Normalise q and k per head before the dot product.

    - ``"rms"``: RMSNorm over the head dimension with a learnable gain (separate for q and k,
      shared by heads); attention keeps the 1/sqrt(hs) scale (Qwen3, Gemma 3).
    - ``"rms_full"``: RMSNorm over the whole projection before the head split -- all heads of q
      (nh x hs channels) together, all key heads of k together -- with one gain per channel
      (OLMo 2, OLMo 3).
    - ``"l2"``: unit L2 norm and a learnable per-head temperature g replacing 1/sqrt(hs)
      (Henry et al. 2020, "Query-Key Normalization for Transformers", arXiv:2010.04245), with g
      initialised to log2(L^2 - L) for training length L, as in the paper. Plain 1/sqrt(hs) on unit
      vectors would cap every score at 1/sqrt(hs) and make attention nearly uniform.

    ``eps`` is the RMS kinds' epsilon (1e-6 by default, as Qwen3, Gemma 3 and OLMo 2 ship; Hugging
    Face's families share it with their block norms' ``rms_norm_eps``); the L2 kind takes none.

    ``QKNorm(config, dims)``: its ``Config`` (the attention config's ``qk_norm``, ``qk_norm_eps`` and
    ``n_kv_head``) and the sizes it reads: ``dims.head_dim``, ``dims.n_head`` and ``dims.block_size``
    (the training length L). ``QKNorm(head_dim, n_head, kind, ...)`` is :meth:`create`.
    """

    @spec
    class Config(Spec):
        """``kind`` ("rms", "rms_full", "l2"), the RMS kinds' ``eps`` and ``n_kv_head`` (the key heads
        "rms_full" normalises together; None = n_head)."""

        kind: str = "rms"
        eps: float = QK_NORM_EPS
        n_kv_head: int | None = None

        def __post_init__(self) -> None:
            check_choice("QKNorm", "kind", self.kind, QK_NORM_TYPES)
            check_number("QKNorm", "eps", self.eps, low=0)
            check_int("QKNorm", "n_kv_head", self.n_kv_head, optional=True)

        def build(self, dims: ModelDims) -> QKNorm:
            return QKNorm(self, dims)

    @classmethod
    def create(
        cls,
        head_dim: int,
        n_head: int,
        kind: QKNormType = "rms",
        *,
        block_size: int = 1024,
        n_kv_head: int | None = None,
        eps: float = QK_NORM_EPS,
    ) -> QKNorm:
        """By hand, from the sizes as numbers and the config's fields."""
        dims = ModelDims(n_embd=n_head * head_dim, n_head=n_head, block_size=block_size, head_dim=head_dim)
        return cls(cls.Config(kind=kind, eps=eps, n_kv_head=n_kv_head), dims)

    def __init__(self, config: Config, dims: ModelDims) -> None:
        super().__init__()
        head_dim, n_head, block_size, eps = dims.head_dim, dims.n_head, dims.block_size, config.eps
        self.config, self.kind = config, config.kind
        if self.kind == "rms":
            self.q_norm = nn.RMSNorm(head_dim, eps=eps)
            self.k_norm = nn.RMSNorm(head_dim, eps=eps)
            self.temperature = None
        elif self.kind == "rms_full":
            self.q_norm = nn.RMSNorm(n_head * head_dim, eps=eps)
            self.k_norm = nn.RMSNorm((config.n_kv_head or n_head) * head_dim, eps=eps)
            self.temperature = None
        else:
            g0 = math.log2(block_size**2 - block_size) if block_size > 1 else 1.0
            self.temperature = nn.Parameter(torch.full((n_head,), g0))

    @property
    def scale(self) -> float | None:
        """The SDPA scale: None (= 1/sqrt(hs)) for RMS; 1.0 for L2 (the temperature is folded into q)."""
        return None if self.temperature is None else 1.0

    def forward(self, q: Tensor, k: Tensor) -> tuple[Tensor, Tensor]:
        if self.kind == "rms_full":  # over every head's channels at once: (B, h, T, hs) -> (B, T, h hs)
            whole = lambda x, norm: rearrange(
                norm(rearrange(x, "b h t d -> b t (h d)")), "b t (h d) -> b h t d", h=x.shape[1]
            )  # noqa: E731
            return whole(q, self.q_norm), whole(k, self.k_norm)
        if self.temperature is None:
            return self.q_norm(q), self.k_norm(k)
        q = F.normalize(q, dim=-1) * self.temperature.view(1, -1, 1, 1).to(q.dtype)  # (B, nh, T, hs)
        return q, F.normalize(k, dim=-1)


def causal_attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    *,
    bias: Tensor | None = None,
    window: int | None = None,
    dropout_p: float = 0.0,
    scale: float | None = None,
) -> Tensor:
    """Causal attention for q (B, nh, Tq, hs) against k, v (B, nkv, Tk, hs) (the queries are the last Tq
    keys; nkv divides nh) with an optional dense float ``bias`` (nh, Tq, Tk) or (B, nh, Tq, Tk) and a
    sliding ``window``: :func:`posenc.attention.kernel.attend` with the bias as a table."""
    score_bias = None if bias is None else (lambda q_pos, k_pos, qf=None, kf=None: bias[..., q_pos, :][..., k_pos])
    Tq, Tk = q.shape[-2], k.shape[-2]
    inputs = ScoreInputs(
        score_bias=score_bias,
        q_positions=None if bias is None else torch.arange(Tq, device=q.device),
        k_positions=None if bias is None else torch.arange(Tk, device=q.device),
        mask=Mask(window=window),
    )
    return attend(q, k, v, inputs, dropout_p=dropout_p, scale=scale)


class CausalSelfAttention(Attention):
    """Multi-head causal self-attention (MHA; GQA and MQA with ``n_kv_head``) with an injected
    positional encoding.

    ``CausalSelfAttention(config, dims, pe=..., mask=..., dropout=...)`` builds it from its
    ``Config``; ``CausalSelfAttention(n_embd, n_head, ...)`` (:meth:`create`) from these Args:
        n_embd, n_head: model width and number of heads.
        pe: the encoding acting inside attention (``where`` "qk", "scores" or "none"); ``None``
            means :class:`NoPE`. Input-level encodings belong to the model, not here.
        qk_norm: ``None``, ``"rms"``, ``"rms_full"`` or ``"l2"`` (see :class:`QKNorm`);
            ``qk_norm_eps`` is the RMS kinds' epsilon.
        window, chunk: a sliding window / attention chunk in tokens (``None`` = off; see
            :mod:`posenc.attention.mask`).
        dropout: attention-probability and residual dropout.
        bias: biases in the q/k/v and output projections (``qkv_bias`` / ``proj_bias`` override it
            per group: Qwen2 has q/k/v biases only).
        block_size: training length, used only to initialise the L2 QK-norm temperature.
        n_kv_head: key/value heads (grouped-query attention; 1 = multi-query); ``None`` = n_head.
        softcap, sinks, backend: see :class:`~posenc.attention.base.AttentionConfig`.
        options: fields that a subclass's ``Config`` adds (a variant built on this one).
    """

    @spec
    class Config(AttentionConfig):
        """MHA's options: ``n_kv_head`` (None = n_head), ``qk_norm`` (None, "rms", "l2"), biases on
        the q/k/v (``qkv_bias``) and output (``proj_bias``) projections, and ``head_dim`` (None =
        n_embd // n_head; Qwen3 and Gemma set their own: the heads then span n_head * head_dim), and
        ``softmax_scale`` (None = 1/sqrt(head_dim); Gemma: ``query_pre_attn_scalar ** -0.5``), and
        ``qk_norm_eps``, the RMS QK-norms' epsilon (Hugging Face: the family's ``rms_norm_eps``)."""

        n_kv_head: int | None = None
        qk_norm: str | None = None
        qk_norm_eps: float = QK_NORM_EPS
        qkv_bias: bool = True
        proj_bias: bool = True
        head_dim: int | None = None
        softmax_scale: float | None = None

        def __post_init__(self) -> None:
            super().__post_init__()
            check_int("CausalSelfAttention.Config", "n_kv_head", self.n_kv_head, optional=True)
            if self.qk_norm is not None:
                check_choice("CausalSelfAttention.Config", "qk_norm", self.qk_norm, QK_NORM_TYPES)
            check_number("CausalSelfAttention.Config", "qk_norm_eps", self.qk_norm_eps, low=0)
            if self.qk_norm_eps != QK_NORM_EPS and self.qk_norm in (None, "l2"):
                raise ValueError(
                    f"CausalSelfAttention.Config: qk_norm_eps={self.qk_norm_eps!r} needs an RMS QK-norm "
                    f"(qk_norm 'rms' or 'rms_full'), got qk_norm={self.qk_norm!r}"
                )
            check_bool("CausalSelfAttention.Config", "qkv_bias", self.qkv_bias)
            check_bool("CausalSelfAttention.Config", "proj_bias", self.proj_bias)
            check_int("CausalSelfAttention.Config", "head_dim", self.head_dim, optional=True)
            check_number("CausalSelfAttention.Config", "softmax_scale", self.softmax_scale, low=0, optional=True)
            if self.softmax_scale is not None and self.qk_norm == "l2":
                raise ValueError("CausalSelfAttention.Config: the L2 QK-norm learns its own scale; drop softmax_scale")

        def check(self, dims: ModelDims, encoding: EncodingConfig | None = None) -> None:
            if self.head_dim is None and dims.n_embd % dims.n_head:
                raise ValueError(f"n_embd={dims.n_embd} must be divisible by n_head={dims.n_head}")
            n_kv = self.kv_heads(dims)
            if dims.n_head % n_kv:
                raise ValueError(f"n_kv_head={n_kv!r} must divide n_head={dims.n_head}")

        def qk_norm_config(self) -> QKNorm.Config | None:
            """The QK-norm's config (None without one)."""
            if self.qk_norm is None:
                return None
            return QKNorm.Config(kind=self.qk_norm, eps=self.qk_norm_eps, n_kv_head=self.n_kv_head)

        def kv_heads(self, dims: ModelDims) -> int:
            return dims.n_head if self.n_kv_head is None else self.n_kv_head

        def encoding_dims(self, dims: ModelDims) -> ModelDims:
            return dims if self.head_dim is None else dataclasses.replace(dims, head_dim=self.head_dim)

        def cache_bytes_per_token(self, dims: ModelDims, dtype: torch.dtype = torch.float16) -> int:
            """Keys and values of every KV head: ``2 * n_kv_head * hs`` elements."""
            hs = self.encoding_dims(dims).head_dim
            return 2 * self.kv_heads(dims) * hs * torch.empty((), dtype=dtype).element_size()

    @classmethod
    def create(
        cls,
        n_embd: int,
        n_head: int,
        *,
        pe: PositionalEncoding | None = None,
        qk_norm: QKNormType | None = None,
        window: int | None = None,
        chunk: int | None = None,
        dropout: float = 0.0,
        bias: bool = True,
        block_size: int = 1024,
        n_kv_head: int | None = None,
        qkv_bias: bool | None = None,
        proj_bias: bool | None = None,
        softcap: float | None = None,
        sinks: bool = False,
        backend: str = "auto",
        head_dim: int | None = None,
        softmax_scale: float | None = None,
        qk_norm_eps: float = QK_NORM_EPS,
        **options: Any,
    ) -> CausalSelfAttention:
        """The layer from flat keyword arguments (the class's Args): builds the config and the sizes."""
        config = cls.Config(
            n_kv_head=n_kv_head,
            qk_norm=qk_norm,
            qk_norm_eps=qk_norm_eps,
            qkv_bias=bias if qkv_bias is None else qkv_bias,
            proj_bias=bias if proj_bias is None else proj_bias,
            softcap=softcap,
            sinks=sinks,
            backend=backend,
            head_dim=head_dim,
            softmax_scale=softmax_scale,
            **options,  # the fields a subclass's Config adds
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
        config.check(dims)
        n_embd, n_head = dims.n_embd, dims.n_head
        self.n_embd, self.n_head, self.n_kv_head = n_embd, n_head, config.kv_heads(dims)
        self.head_dim = config.encoding_dims(dims).head_dim
        self.c_attn = nn.Linear(n_embd, (n_head + 2 * self.n_kv_head) * self.head_dim, bias=config.qkv_bias)  # q|k|v
        self.c_proj = nn.Linear(n_head * self.head_dim, n_embd, bias=config.proj_bias)
        self._setup(config, pe, mask, dropout, n_head)
        self.qk_norm = None if config.qk_norm is None else config.qk_norm_config().build(config.encoding_dims(dims))

    def init_weights(self, init: WeightInit) -> None:
        """q|k|v N(0, std), the output projection into the residual stream N(0, residual_std); QK-norm
        gains, sinks and the encoding keep their constructors' values."""
        init.linear("c_attn", self.c_attn)
        init.linear("c_proj", self.c_proj, residual=True)

    def forward(
        self,
        x: Tensor,
        positions: Tensor | None = None,
        cache: LayerKVCache | None = None,
        segments: tuple[Tensor, Tensor] | None = None,
    ) -> Tensor:
        """x (B, T, C) -> (B, T, C). ``positions`` (T,) or (B, T) default to past + arange(T).
        ``segments``: (query ids (B, T), key ids (B, past + T)); a query attends only to keys of its id."""
        kv_width = self.n_kv_head * self.head_dim
        q, k, v = self.c_attn(x).split((self.n_head * self.head_dim, kv_width, kv_width), dim=2)
        q = rearrange(q, "b t (nh hs) -> b nh t hs", nh=self.n_head)  # (B, nh, T, hs)
        k, v = (rearrange(t, "b t (nkv hs) -> b nkv t hs", nkv=self.n_kv_head) for t in (k, v))  # (B, nkv, T, hs)
        if self.qk_norm is not None:
            q, k = self.qk_norm(q, k)
        positions, q_pos = self.default_positions(x, positions, 0 if cache is None else cache.length)
        k_pos = q_pos
        if self.pe.length_dependent:
            # the rotation depends on the total length (dynamic NTK, LongRoPE, xPos): the cache keeps
            # un-rotated keys and every step rotates all of them with the current length (the GPT
            # recomputes the cached hidden states when the rotation changes: posenc.model)
            if cache is not None:
                k, v, k_pos = cache.update(k, v, q_pos, segments is not None)  # (B, nkv, S, hs), not rotated
            q = self.pe.rotate_queries(q, positions)
            k = self.pe.rotate_keys(k, None if cache is None else k_pos)
        else:
            q, k = self.pe.rotate(q, k, positions)
            if cache is not None:
                k, v, k_pos = cache.update(k, v, q_pos, segments is not None)  # (B, nkv, S, hs), rotated
        scale = self.config.softmax_scale if self.qk_norm is None or self.qk_norm.scale is None else self.qk_norm.scale
        y = self.attend(q, k, v, q_pos, k_pos, segments, self.features(x, cache), scale)  # (B, nh, T, hs)
        y = rearrange(y, "b nh t hs -> b t (nh hs)")  # (B, T, nh * hs)
        return self.resid_dropout(self.c_proj(y))


class QKNormAttention(CausalSelfAttention):
    """:class:`CausalSelfAttention` with QK-norm on by default (``qk_norm="rms"``; ``"l2"`` for Henry et al.)."""

    @classmethod
    def create(cls, n_embd: int, n_head: int, *, qk_norm: QKNormType = "rms", **kwargs: Any) -> QKNormAttention:
        return super().create(n_embd, n_head, qk_norm=qk_norm, **kwargs)

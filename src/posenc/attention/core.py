"""Causal self-attention that takes its positional encoding as an injected module.

Shapes: B batch, T tokens, C = n_embd channels, nh heads, hs = C // nh head size.

Per layer the order is fixed and pinned by tests/test_attention.py:
    x -> c_attn -> q, k, v -> QK-norm(q, k) -> pe.rotate(q, k) -> [KV cache] -> attention(+ pe.score_bias) -> c_proj
QK-norm acts before RoPE, as in OLMo 2, Qwen3 and Gemma 3, so the rotation sees unit-scale
vectors and the norm never sees position information.

Attention: with no score bias, no window and no document segments, ``causal_attention`` runs
``torch.nn.functional.scaled_dot_product_attention`` with ``is_causal=True`` (flash kernel where
the hardware has one; a (Tq, Tk) boolean mask during a KV-cache step). A score bias, a window or
segments go to :func:`posenc.attention.blockwise.attend`, exact and linear in memory (docs/attention.md).
"""

from __future__ import annotations

import math
from typing import ClassVar, Literal

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn

from posenc.attention.blockwise import attend
from posenc.encodings.base import PositionalEncoding
from posenc.encodings.nope import NoPE

QKNormType = Literal["rms", "l2"]


class QKNorm(nn.Module):
    """Normalise q and k per head before the dot product.

    - ``"rms"``: RMSNorm over the head dimension with a learnable gain (separate for q and k,
      shared by heads), eps 1e-6; attention keeps the 1/sqrt(hs) scale (OLMo 2, Qwen3, Gemma 3).
    - ``"l2"``: unit L2 norm and a learnable per-head temperature g replacing 1/sqrt(hs)
      (Henry et al. 2020, "Query-Key Normalization for Transformers", arXiv:2010.04245), with g
      initialised to log2(L^2 - L) for training length L, as in the paper. Plain 1/sqrt(hs) on unit
      vectors would cap every score at 1/sqrt(hs) and make attention nearly uniform.
    """

    def __init__(self, head_dim: int, n_head: int, kind: QKNormType = "rms", *, block_size: int = 1024) -> None:
        super().__init__()
        if kind not in ("rms", "l2"):
            raise ValueError(f"QK-norm kind must be 'rms' or 'l2', got {kind!r}")
        self.kind = kind
        if kind == "rms":
            self.q_norm = nn.RMSNorm(head_dim, eps=1e-6)
            self.k_norm = nn.RMSNorm(head_dim, eps=1e-6)
            self.temperature = None
        else:
            g0 = math.log2(block_size**2 - block_size) if block_size > 1 else 1.0
            self.temperature = nn.Parameter(torch.full((n_head,), g0))

    @property
    def scale(self) -> float | None:
        """The SDPA scale: None (= 1/sqrt(hs)) for RMS; 1.0 for L2 (the temperature is folded into q)."""
        return None if self.temperature is None else 1.0

    def forward(self, q: Tensor, k: Tensor) -> tuple[Tensor, Tensor]:
        if self.temperature is None:
            return self.q_norm(q), self.k_norm(k)
        q = F.normalize(q, dim=-1) * self.temperature.view(1, -1, 1, 1).to(q.dtype)  # (B, nh, T, hs)
        return q, F.normalize(k, dim=-1)


class LayerKVCache:
    """Keys, values and key positions of the tokens seen so far by one attention layer."""

    def __init__(self) -> None:
        self.k: Tensor | None = None  # (B, nkv, T_past, hs), rotated unless the encoding is length-dependent
        self.v: Tensor | None = None
        self.positions: Tensor | None = None  # (T_past,) or (B, T_past)

    @property
    def length(self) -> int:
        return 0 if self.k is None else self.k.shape[-2]

    def update(self, k: Tensor, v: Tensor, positions: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        if self.k is not None:
            k, v = torch.cat((self.k, k), dim=-2), torch.cat((self.v, v), dim=-2)
            positions = append_positions(self.positions, positions, k.shape[0])
        self.k, self.v, self.positions = k, v, positions
        return k, v, positions


def append_positions(past: Tensor, new: Tensor, rows: int) -> Tensor:
    """Cached key positions followed by the new ones; (T,) next to (B, T) gives both a batch dim."""
    if past.dim() != new.dim():
        past, new = past.expand(rows, -1), new.expand(rows, -1)
    return torch.cat((past, new), dim=-1)


class KVCache:
    """Per-layer caches of one generation; lives outside the modules (no state in ``forward``).

    ``KVCache(n_layer)`` holds a :class:`LayerKVCache` per layer; ``KVCache(layers)`` takes the
    layers' own caches (``attn.new_cache()``: an attention variant decides what it keeps).
    """

    def __init__(self, layers: int | list) -> None:
        self.layers = [LayerKVCache() for _ in range(layers)] if isinstance(layers, int) else list(layers)
        self.segments: Tensor | None = None  # (B, T_past) document ids, when the model packs documents

    @property
    def length(self) -> int:
        """Number of tokens already processed."""
        return self.layers[0].length if self.layers else 0


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
    """Causal SDPA for q (B, nh, Tq, hs) against k, v (B, nkv, Tk, hs); the queries are the last Tq keys
    (nkv divides nh: grouped-query attention).

    ``bias``: additive float scores (nh, Tq, Tk) or (B, nh, Tq, Tk). ``window``: a query attends to
    the ``window`` most recent keys, itself included.
    """
    Tq, Tk = q.shape[-2], k.shape[-2]
    gqa = q.shape[1] != k.shape[1]  # grouped-query attention: k, v carry n_kv_head heads
    if bias is None and window is None and Tq == Tk:
        return F.scaled_dot_product_attention(q, k, v, dropout_p=dropout_p, is_causal=True, scale=scale, enable_gqa=gqa)
    q_idx = torch.arange(Tk - Tq, Tk, device=q.device)[:, None]  # (Tq, 1)
    k_idx = torch.arange(Tk, device=q.device)[None, :]  # (1, Tk)
    allowed = k_idx <= q_idx  # (Tq, Tk)
    if window is not None:
        allowed = allowed & (q_idx - k_idx < window)
    mask = allowed if bias is None else bias.masked_fill(~allowed, float("-inf")).to(q.dtype)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout_p, scale=scale, enable_gqa=gqa)


class CausalSelfAttention(nn.Module):
    """Multi-head causal self-attention with an injected positional encoding.

    Args:
        n_embd, n_head: model width and number of heads.
        pe: the encoding acting inside attention (``where`` "qk", "scores" or "none"); ``None``
            means :class:`NoPE`. Input-level encodings belong to the model, not here.
        qk_norm: ``None``, ``"rms"`` or ``"l2"`` (see :class:`QKNorm`).
        window: sliding-window size in tokens, or ``None`` for full causal attention.
        dropout: attention-probability and residual dropout.
        bias: biases in the q/k/v and output projections (``qkv_bias`` / ``proj_bias`` override it
            per group: Qwen2 has q/k/v biases only).
        block_size: training length, used only to initialise the L2 QK-norm temperature.
        n_kv_head: key/value heads (grouped-query attention; 1 = multi-query); ``None`` = n_head.
    """

    #: GPTConfig fields this variant takes beyond the common arguments (see posenc.attention).
    config_fields: ClassVar[tuple[str, ...]] = ("n_kv_head", "qkv_bias", "proj_bias")
    #: forward takes ``segments`` (packed documents, left padding)
    supports_segments: ClassVar[bool] = True

    def __init__(
        self,
        n_embd: int,
        n_head: int,
        *,
        pe: PositionalEncoding | None = None,
        qk_norm: QKNormType | None = None,
        window: int | None = None,
        dropout: float = 0.0,
        bias: bool = True,
        block_size: int = 1024,
        n_kv_head: int | None = None,
        qkv_bias: bool | None = None,
        proj_bias: bool | None = None,
    ) -> None:
        super().__init__()
        if n_embd % n_head:
            raise ValueError(f"n_embd={n_embd} must be divisible by n_head={n_head}")
        n_kv_head = n_head if n_kv_head is None else n_kv_head
        if not isinstance(n_kv_head, int) or n_kv_head <= 0 or n_head % n_kv_head:
            raise ValueError(f"n_kv_head={n_kv_head!r} must be a positive int dividing n_head={n_head}")
        pe = NoPE() if pe is None else pe
        if pe.where == "input":
            raise ValueError(
                f"{type(pe).__name__} acts at the model input (where='input'); pass it to the model, not to attention"
            )
        if window is not None and (not isinstance(window, int) or window <= 0):
            raise ValueError(f"window must be a positive int or None, got {window!r}")
        self.n_embd, self.n_head, self.n_kv_head, self.head_dim = n_embd, n_head, n_kv_head, n_embd // n_head
        qkv_bias = bias if qkv_bias is None else qkv_bias
        self.c_attn = nn.Linear(n_embd, (n_head + 2 * n_kv_head) * self.head_dim, bias=qkv_bias)  # q | k | v
        self.c_proj = nn.Linear(n_embd, n_embd, bias=bias if proj_bias is None else proj_bias)
        self.pe = pe
        self.qk_norm = None if qk_norm is None else QKNorm(self.head_dim, n_head, qk_norm, block_size=block_size)
        self.window = window
        self.dropout = dropout
        self.resid_dropout = nn.Dropout(dropout)

    def new_cache(self) -> LayerKVCache:
        """An empty cache for this layer (rotated keys and values, with their positions)."""
        return LayerKVCache()

    def forward(
        self,
        x: Tensor,
        positions: Tensor | None = None,
        cache: LayerKVCache | None = None,
        segments: tuple[Tensor, Tensor] | None = None,
    ) -> Tensor:
        """x (B, T, C) -> (B, T, C). ``positions`` (T,) or (B, T) default to past + arange(T).
        ``segments``: (query ids (B, T), key ids (B, past + T)); a query attends only to keys of its id."""
        B, T, C = x.shape
        kv_width = self.n_kv_head * self.head_dim
        q, k, v = self.c_attn(x).split((self.n_embd, kv_width, kv_width), dim=2)
        q = rearrange(q, "b t (nh hs) -> b nh t hs", nh=self.n_head)  # (B, nh, T, hs)
        k, v = (rearrange(t, "b t (nkv hs) -> b nkv t hs", nkv=self.n_kv_head) for t in (k, v))  # (B, nkv, T, hs)
        if self.qk_norm is not None:
            q, k = self.qk_norm(q, k)
        past = 0 if cache is None else cache.length
        if positions is None and past:
            positions = torch.arange(past, past + T, device=x.device)
        q_pos = torch.arange(T, device=x.device) if positions is None else positions
        k_pos = q_pos
        if getattr(self.pe, "length_dependent", False):
            # the rotation depends on the total length (dynamic NTK, LongRoPE, xPos): the cache keeps
            # un-rotated keys and every step rotates all of them with the current length, so cached
            # decoding equals the uncached forward (at the price of re-rotating past + T keys per step)
            if cache is not None:
                k, v, k_pos = cache.update(k, v, q_pos)  # (B, nkv, past + T, hs), not rotated
            q = self.pe.rotate_queries(q, positions)
            k = self.pe.rotate_keys(k, None if cache is None else k_pos)
        else:
            q, k = self.pe.rotate(q, k, positions)
            if cache is not None:
                k, v, k_pos = cache.update(k, v, q_pos)  # (B, nkv, past + T, hs), rotated
        dropout_p = self.dropout if self.training else 0.0
        scale = None if self.qk_norm is None else self.qk_norm.scale
        if self.pe.where == "scores" or self.window is not None or segments is not None:
            # exact, linear in memory: query blocks against the key blocks they can see (attention.md)
            y = attend(
                q,
                k,
                v,
                score_bias=self.pe.score_bias if self.pe.where == "scores" else None,
                q_positions=q_pos,
                k_positions=k_pos,
                window=self.window,
                q_segments=None if segments is None else segments[0],
                k_segments=None if segments is None else segments[1],
                scale=scale,
                dropout_p=dropout_p,
            )
        else:
            y = causal_attention(q, k, v, dropout_p=dropout_p, scale=scale)  # (B, nh, T, hs)
        y = rearrange(y, "b nh t hs -> b t (nh hs)")  # (B, T, C)
        return self.resid_dropout(self.c_proj(y))


class QKNormAttention(CausalSelfAttention):
    """:class:`CausalSelfAttention` with QK-norm on by default (``qk_norm="rms"``; ``"l2"`` for Henry et al.)."""

    def __init__(self, n_embd: int, n_head: int, *, qk_norm: QKNormType = "rms", **kwargs) -> None:
        super().__init__(n_embd, n_head, qk_norm=qk_norm, **kwargs)

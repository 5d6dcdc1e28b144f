"""The sizes of a multi-head latent attention layer (defaults derived from the model width), its
softmax scale (with YaRN's mscale), and the KV-cache bytes per token of MHA, GQA, MQA and MLA.
Used by :mod:`posenc.attention.mla`; see docs/mla.md for the numbers.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from typing import Any, Literal

import torch


@dataclasses.dataclass(frozen=True)
class MLADims:
    """The sizes of one MLA layer (see :func:`mla_dims` for the defaults)."""

    kv_lora_rank: int
    q_lora_rank: int | None
    qk_rope_head_dim: int
    qk_nope_head_dim: int
    v_head_dim: int

    @property
    def qk_head_dim(self) -> int:
        return self.qk_nope_head_dim + self.qk_rope_head_dim


def _check_positive(name: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ValueError(f"{name} must be a positive int, got {name}={value!r}")


def mla_dims(
    n_embd: int,
    n_head: int,
    *,
    kv_lora_rank: int | None = None,
    q_lora_rank: int | None = None,
    qk_rope_head_dim: int | None = None,
    qk_nope_head_dim: int | None = None,
    v_head_dim: int | None = None,
) -> MLADims:
    """Resolve and check MLA sizes. With hs = n_embd // n_head, the defaults are DeepSeek-V2's ratios
    (paper section 2.1.2: d_c = 4 d_h, d_h^R = d_h / 2; DeepSeek-V2-Lite has no query compression):
    ``kv_lora_rank = 4 hs``, ``qk_rope_head_dim = hs / 2`` (rounded down to even, at least 2),
    ``qk_nope_head_dim = v_head_dim = hs``, ``q_lora_rank = None`` (one full-rank q_proj)."""
    _check_positive("n_embd", n_embd)
    _check_positive("n_head", n_head)
    needs_hs = None in (kv_lora_rank, qk_rope_head_dim, qk_nope_head_dim, v_head_dim)
    if needs_hs and n_embd % n_head:
        raise ValueError(
            f"n_embd={n_embd} is not divisible by n_head={n_head}, so the MLA defaults (multiples of the "
            f"head size) are undefined; set kv_lora_rank, qk_rope_head_dim, qk_nope_head_dim and v_head_dim"
        )
    hs = n_embd // n_head
    dims = MLADims(
        kv_lora_rank=4 * hs if kv_lora_rank is None else kv_lora_rank,
        q_lora_rank=q_lora_rank,
        qk_rope_head_dim=max(2, hs // 4 * 2) if qk_rope_head_dim is None else qk_rope_head_dim,
        qk_nope_head_dim=hs if qk_nope_head_dim is None else qk_nope_head_dim,
        v_head_dim=hs if v_head_dim is None else v_head_dim,
    )
    for name in ("kv_lora_rank", "qk_rope_head_dim", "qk_nope_head_dim", "v_head_dim"):
        _check_positive(name, getattr(dims, name))
    if q_lora_rank is not None:
        _check_positive("q_lora_rank", q_lora_rank)
    if dims.qk_rope_head_dim % 2:
        raise ValueError(
            f"qk_rope_head_dim must be even (RoPE rotates pairs), got qk_rope_head_dim={dims.qk_rope_head_dim}"
        )
    return dims


def yarn_mscale(factor: float, mscale: float = 1.0) -> float:
    """YaRN's magnitude correction ``0.1 * mscale * ln(factor) + 1`` (1 for factor <= 1)."""
    return 1.0 if factor <= 1 else 0.1 * mscale * math.log(factor) + 1.0


def mla_softmax_scale(qk_head_dim: int, scaling: Mapping[str, Any] | None = None) -> float:
    """DeepSeek's softmax scale: ``qk_head_dim ** -0.5``, times ``yarn_mscale(factor, mscale_all_dim) ** 2``
    when ``scaling`` (a RoPE ``scaling`` / Hugging Face ``rope_parameters`` dict) is not ``default``
    and sets ``mscale_all_dim`` (Hugging Face's ``yarn_apply_mscale``). A missing ``factor`` is
    ``max_position_embeddings / original_max_position_embeddings``, as the YaRN schedule derives it."""
    scale = qk_head_dim**-0.5
    if not scaling or scaling.get("rope_type", scaling.get("type", "default")) == "default":
        return scale
    mscale_all_dim = scaling.get("mscale_all_dim") or 0
    if mscale_all_dim:
        factor = scaling.get("factor")
        if factor is None:
            factor = scaling["max_position_embeddings"] / scaling["original_max_position_embeddings"]
        scale *= yarn_mscale(factor, mscale_all_dim) ** 2
    return scale


def cache_bytes_per_token(
    attention: Literal["mha", "gqa", "mqa", "mla"],
    n_embd: int,
    n_head: int,
    *,
    n_kv_head: int | None = None,
    dtype: torch.dtype = torch.float16,
    n_layer: int = 1,
    **mla_fields: Any,
) -> int:
    """KV-cache bytes one token adds, summed over ``n_layer`` layers (positions not counted).

    mha: keys and values of every head, ``2 * n_head * hs``; gqa: of ``n_kv_head`` heads; mqa: of one
    head; mla: the latent and the shared rotary key, ``kv_lora_rank + qk_rope_head_dim`` (the sizes
    from ``mla_fields``, defaults as :func:`mla_dims`). Elements times ``dtype``'s size.
    """
    hs = n_embd // n_head
    if attention == "mha":
        elements = 2 * n_head * hs
    elif attention == "gqa":
        if n_kv_head is None or n_head % n_kv_head:
            raise ValueError(f"gqa needs n_kv_head dividing n_head={n_head}, got n_kv_head={n_kv_head!r}")
        elements = 2 * n_kv_head * hs
    elif attention == "mqa":
        elements = 2 * hs
    elif attention == "mla":
        d = mla_dims(n_embd, n_head, **mla_fields)
        elements = d.kv_lora_rank + d.qk_rope_head_dim
    else:
        raise ValueError(f"attention must be one of 'mha', 'gqa', 'mqa', 'mla', got {attention!r}")
    return n_layer * elements * torch.empty((), dtype=dtype).element_size()

"""Which keys a query may see: the one visibility rule of every attention path.

A query at global index i (the queries are the last Tq of Tk keys) sees key j when

- ``j <= i`` (causal, by index);
- ``i - j < window`` (a sliding window: the ``window`` most recent keys, itself included);
- ``i // chunk == j // chunk`` (chunked attention, Llama 4: the keys of its own chunk of ``chunk``
  indices; with packed documents the chunks are counted from each document's first token, as if
  the document were alone);
- ``q_segments[b, i] == k_segments[b, j]`` (packed documents: its own document only);
- ``key_padding_mask[b, j]`` (True = a real token).

:class:`Mask` is the per-layer part (window, chunk) as a config; :func:`sees` is the whole rule on
broadcastable values, :func:`index_rule` its part on indices; :func:`visible` applies it to a
block of queries and keys (the SDPA, dense, blockwise and fused-tile paths) and FlexAttention's
``mask_mod`` to one score; :func:`chunk_starts` gives the document starts a chunked mask counts
from. :meth:`Mask.first_key` is the lowest key a block of queries can see, so kernels skip the
rest. Shapes: B batch, Tq queries, Tk keys.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from posenc.spec import Spec, check_int, spec


@spec
class Mask(Spec):
    """The per-layer visibility beyond causality: a sliding ``window`` and/or ``chunk`` (None = off)."""

    window: int | None = None
    chunk: int | None = None

    def __post_init__(self) -> None:
        check_int("Mask", "window", self.window, optional=True)
        check_int("Mask", "chunk", self.chunk, optional=True)

    @property
    def local(self) -> bool:
        """True when a query sees less than every earlier key."""
        return self.window is not None or self.chunk is not None

    def first_key(self, first_query: int) -> int:
        """The lowest key index visible to any query at index >= ``first_query``."""
        lo = 0
        if self.window is not None:
            lo = max(lo, first_query - self.window + 1)
        if self.chunk is not None:
            lo = max(lo, first_query // self.chunk * self.chunk)
        return lo

    def describe(self) -> str:
        parts = [f"window {self.window}" if self.window else "", f"chunk {self.chunk}" if self.chunk else ""]
        return ", ".join(p for p in parts if p) or "causal"


def index_rule(
    q_idx: Tensor, k_idx: Tensor, mask: Mask, *, itself: bool = True, q_start: Any = 0, k_start: Any = 0
) -> Tensor:
    """Causal + window + chunk on broadcastable global indices (e.g. (bq, 1) and (1, bk)) -> bool;
    ``itself=False`` leaves a query's own key out (stick-breaking attention by default).
    ``q_start``/``k_start``: the index of each token's document start (broadcastable likewise), from
    which chunks are counted."""
    keep = k_idx <= q_idx if itself else k_idx < q_idx
    if mask.window is not None:
        keep = keep & (q_idx - k_idx < mask.window)
    if mask.chunk is not None:
        keep = keep & ((q_idx - q_start) // mask.chunk == (k_idx - k_start) // mask.chunk)
    return keep


def sees(
    q_idx: Tensor,
    k_idx: Tensor,
    mask: Mask,
    *,
    itself: bool = True,
    q_start: Any = 0,
    k_start: Any = 0,
    q_doc: Tensor | None = None,
    k_doc: Tensor | None = None,
    k_real: Tensor | None = None,
) -> Tensor:
    """The whole rule on broadcastable values -> bool: :func:`index_rule` on the global indices
    (chunks counted from ``q_start``/``k_start``), then, with packed documents, ``q_doc == k_doc``
    (the tokens' document ids) and, with padding, ``k_real`` (the key is a real token)."""
    keep = index_rule(q_idx, k_idx, mask, itself=itself, q_start=q_start, k_start=k_start)
    if q_doc is not None:
        keep = keep & (q_doc == k_doc)
    if k_real is not None:
        keep = keep & k_real
    return keep


def document_starts(segments: Tensor) -> Tensor:
    """(B, T) document ids -> (B, T): the index of the first token of each token's document (a
    document is a run of equal ids)."""
    idx = torch.arange(segments.shape[1], device=segments.device).expand_as(segments)
    new = torch.ones_like(segments, dtype=torch.bool)
    new[:, 1:] = segments[:, 1:] != segments[:, :-1]
    return torch.where(new, idx, torch.zeros_like(idx)).cummax(dim=1).values


def chunk_starts(mask: Mask, k_segments: Tensor | None, Tq: int) -> tuple[Tensor | None, Tensor | None]:
    """(queries', keys') document starts (B, Tq), (B, Tk) from which a chunked mask over packed
    documents counts its chunks, as if each document were alone (the queries are the last Tq keys);
    (None, None) without a chunk or documents: chunks then count from index 0."""
    if mask.chunk is None or k_segments is None:
        return None, None
    k_starts = document_starts(k_segments)
    return k_starts[:, k_starts.shape[1] - Tq :], k_starts


def visible(
    q_lo: int,
    q_hi: int,
    k_lo: int,
    k_hi: int,
    mask: Mask,
    *,
    device: torch.device | str,
    q_segments: Tensor | None = None,
    k_segments: Tensor | None = None,
    key_padding_mask: Tensor | None = None,
    itself: bool = True,
    q_starts: Tensor | None = None,
    k_starts: Tensor | None = None,
) -> Tensor:
    """The visibility of queries at global indices [q_lo, q_hi) to keys [k_lo, k_hi): bool (bq, bk), or
    (B, 1, bq, bk) with segments (already sliced to the block: (B, bq) and (B, bk)) or padding (B, bk).
    ``q_starts``/``k_starts`` (sliced likewise; :func:`chunk_starts` of the whole rows): the chunks
    of a chunked mask start at each document's first token."""
    q_idx = torch.arange(q_lo, q_hi, device=device)[:, None]  # (bq, 1)
    k_idx = torch.arange(k_lo, k_hi, device=device)[None, :]  # (1, bk)
    q_rows = lambda t: None if t is None else t[:, :, None]  # noqa: E731  (B, bq) -> (B, bq, 1)
    k_rows = lambda t: None if t is None else t[:, None, :]  # noqa: E731  (B, bk) -> (B, 1, bk)
    starts = {} if q_starts is None else dict(q_start=q_rows(q_starts), k_start=k_rows(k_starts))
    allowed = sees(
        q_idx,
        k_idx,
        mask,
        itself=itself,
        q_doc=q_rows(q_segments),
        k_doc=k_rows(k_segments),
        k_real=k_rows(key_padding_mask),
        **starts,
    )  # (bq, bk) or (B, bq, bk)
    return allowed[:, None] if allowed.dim() == 3 else allowed  # (B, 1, bq, bk)


def as_mask(window: Any = None, chunk: Any = None) -> Mask:
    """A :class:`Mask` from the ``window``/``chunk`` arguments of a kernel or a layer (checked once, here)."""
    return Mask(window=window, chunk=chunk)

"""Packed documents and left padding: several sequences in one row, each attending only to itself.

``document_ids`` (B, T) are non-decreasing integers per row; a token attends only to keys with its
id, and its position restarts at 0 where its document starts. Left padding is the special case
``document_ids = attention_mask`` (0 for the padding, 1 for the real tokens): the real tokens form
one document that starts at position 0, so every row sees exactly what it would see alone.
"""

from __future__ import annotations

import torch
from torch import Tensor


def check_document_ids(ids: object, shape: tuple[int, ...], name: str = "document_ids") -> Tensor:
    """``ids`` as an int64 tensor of ``shape`` (B, T), refused with a ``TypeError``/``ValueError``
    naming ``name`` when it is not one, or when a row decreases."""
    if not isinstance(ids, Tensor):
        raise TypeError(f"{name} must be a (B, T) integer tensor, got {type(ids).__name__}")
    if ids.dtype not in (torch.int64, torch.int32, torch.int16, torch.uint8):
        raise TypeError(f"{name} must hold integers, got dtype {ids.dtype}")
    if tuple(ids.shape) != tuple(shape):
        raise ValueError(f"{name} must have the shape of idx {tuple(shape)}, got {tuple(ids.shape)}")
    ids = ids.long()
    if ids.shape[1] > 1:
        steps = ids[:, 1:] - ids[:, :-1]
        if ids.device.type != "cpu":  # no host sync on an accelerator
            torch._assert_async((steps >= 0).all(), f"{name} must be non-decreasing along each row")
        elif bool((steps < 0).any()):
            row = int((steps < 0).any(dim=1).nonzero()[0])
            raise ValueError(f"{name} must be non-decreasing along each row; row {row} is {ids[row].tolist()}")
    return ids


def positions_in_documents(ids: Tensor) -> Tensor:
    """Position of each token within its document: (B, T) -> (B, T), 0 at every document start."""
    T = ids.shape[1]
    t = torch.arange(T, device=ids.device).expand_as(ids)
    starts = torch.ones_like(ids, dtype=torch.bool)
    starts[:, 1:] = ids[:, 1:] != ids[:, :-1]
    return t - torch.cummax(torch.where(starts, t, torch.zeros_like(t)), dim=1).values


def check_attention_mask(mask: object, shape: tuple[int, ...]) -> Tensor:
    """A left-padding mask (B, T) (True / 1 = a real token) as document ids (0 padding, 1 real)."""
    if not isinstance(mask, Tensor):
        raise TypeError(f"attention_mask must be a (B, T) bool or 0/1 integer tensor, got {type(mask).__name__}")
    if mask.dtype != torch.bool and (mask.is_floating_point() or mask.is_complex()):
        raise TypeError(f"attention_mask must be bool or integer 0/1, got dtype {mask.dtype}")
    if tuple(mask.shape) != tuple(shape):
        raise ValueError(f"attention_mask must have the shape of idx {tuple(shape)}, got {tuple(mask.shape)}")
    ids = mask.long()
    if bool(((ids != 0) & (ids != 1)).any()):
        raise ValueError(f"attention_mask must hold only 0 and 1, got values {sorted(set(ids.unique().tolist()))}")
    empty = (ids.sum(dim=1) == 0).nonzero().flatten().tolist()
    if empty:
        raise ValueError(f"attention_mask rows {empty} are all padding: nothing to generate from")
    return check_document_ids(ids, shape, "attention_mask (left padding: 0s, then 1s)")

"""Training batches from a flat token shard, in an order that is a pure function of the step.

A row is ``block_size + 1`` consecutive tokens starting at an offset drawn from a generator keyed
by ``(seed, step, micro)``: inputs are its first ``block_size`` tokens, targets the last
``block_size`` (the next token of each input position).
"""

from __future__ import annotations

import numpy as np
import torch


def batch_offsets(n_tokens: int, block_size: int, batch_size: int, seed: int, step: int, micro: int = 0) -> np.ndarray:
    """Start offsets of the ``batch_size`` rows of micro-step ``micro`` of optimizer step ``step``.

    Drawn from a generator keyed by (seed, step, micro) alone: the data order needs no saved state,
    a resumed run sees exactly the batches it would have seen, and every rank agrees on the global
    batch (each then takes its own slice of rows).
    """
    if n_tokens < block_size + 1:
        raise ValueError(f"a split of {n_tokens} tokens is shorter than block_size + 1 = {block_size + 1}")
    rng = np.random.default_rng([seed, step, micro])
    return rng.integers(0, n_tokens - block_size, size=batch_size, dtype=np.int64)


def get_batch(tokens: np.ndarray, offsets: np.ndarray, block_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Inputs and next-token targets, (B, T) int64 each, from a flat token array."""
    rows = np.stack([np.asarray(tokens[o : o + block_size + 1], dtype=np.int64) for o in offsets])  # (B, T + 1)
    rows_t = torch.from_numpy(rows)
    return rows_t[:, :-1], rows_t[:, 1:]


def document_ids(x: torch.Tensor, eot: int) -> torch.Tensor:
    """Packed-document ids of input rows (B, T): every document ends with ``eot``, so a token's id
    is the number of ``eot`` tokens before it in its row (the ``eot`` itself closes its document).
    Non-decreasing along T, as ``GPT.forward(document_ids=...)`` requires."""
    ends = (x == eot).long()
    return torch.cumsum(ends, dim=1) - ends

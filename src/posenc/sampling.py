"""Choosing the next token from last-position logits: greedy, or sampling after temperature, top-k
and top-p (nucleus) filtering, applied in that order as Hugging Face's logits warpers apply them."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["check_sampling", "filter_logits", "sample"]


def check_sampling(temperature: float, top_k: int | None, top_p: float | None) -> None:
    """ValueError naming the argument when a sampling setting is out of range."""
    if not temperature >= 0:
        raise ValueError(f"temperature must be >= 0, got {temperature!r}")
    if top_k is not None and (not isinstance(top_k, int) or top_k < 1):
        raise ValueError(f"top_k must be a positive int or None, got {top_k!r}")
    if top_p is not None and not 0 < top_p <= 1:
        raise ValueError(f"top_p must be in (0, 1] or None, got {top_p!r}")


def filter_logits(
    logits: Tensor, temperature: float = 1.0, top_k: int | None = None, top_p: float | None = None
) -> Tensor:
    """float32 logits (B, V) divided by ``temperature`` (> 0), with the tokens outside the ``top_k``
    largest, then outside the smallest set whose probability reaches ``top_p``, set to -inf."""
    logits = logits.float() / temperature
    if top_k is not None:
        kth = torch.topk(logits, min(top_k, logits.size(-1))).values[:, [-1]]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p is not None and top_p < 1:
        ranked, order = torch.sort(logits, dim=-1, descending=True)
        probs = F.softmax(ranked, dim=-1)
        ranked_drop = probs.cumsum(dim=-1) - probs >= top_p  # the mass ranked above a token already reaches top_p
        drop = ranked_drop.scatter(-1, order, ranked_drop)  # back to vocabulary order
        logits = logits.masked_fill(drop, float("-inf"))  # the top token has nothing above it: always kept
    return logits


def sample(
    logits: Tensor,
    temperature: float = 1.0,
    top_k: int | None = None,
    generator: torch.Generator | None = None,
    *,
    top_p: float | None = None,
) -> Tensor:
    """Next token ids (B, 1) from last-position logits (B, V); temperature 0 means argmax."""
    if temperature == 0:
        return logits.argmax(dim=-1, keepdim=True)
    probs = F.softmax(filter_logits(logits, temperature, top_k, top_p), dim=-1)
    return torch.multinomial(probs, num_samples=1, generator=generator)

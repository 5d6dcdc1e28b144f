"""CoPE: contextual position encoding (Golovneva, Wang, Weston & Sukhbaatar 2024, "Contextual
Position Encoding: Learning to Count What's Important", arXiv:2405.18719): positions counted from
the content.

Where it acts: on the attention scores (``where = "scores"``), from q and k (``content_bias``).
Query i gates every visible key t with g_it = sigmoid(q_i . k_t / sqrt(d)); the position of key j
is the number of open gates from j to i, the diagonal included,

    p_ij = sum_{t = j}^{i} g_it,    clamped at npos - 1,

so a position counts, say, the sentence ends a query attends to rather than tokens. The position
logit of (i, j) interpolates the query's logits against learned position vectors e[0..npos-1]
between floor(p_ij) and ceil(p_ij), and the scores are (q_i . k_j + that logit) / sqrt(d).

Conventions, as the paper's code (facebookresearch/RAM, ``projects/cope/src/cope/context_position.py``,
``ContextPosSelfAttn`` with its defaults): the gates use the attention's own keys; ``npos`` defaults
to block_size + 1; the position vectors, one table of (head_dim, npos) per layer shared by its
heads, start at zero (so CoPE starts as NoPE); the position of (i, j) has a gradient through the
interpolation weight, not through floor/ceil. Weight decay: the table is decayed (posenc's rule
for matrices; the reference's AdamW option decays every parameter, its default Adam none).

Cost: a count runs along a query's whole row of visible keys, so CoPE runs in the blockwise
kernel's tiles, which hold a query block's whole row (linear memory in T; backward recomputes each
block); a tile also holds the block's (bq, npos) position logits. Packed documents: the gates are
masked to the query's own document, so a packed row equals its documents alone.

Golden test (tests/test_cope.py): attention against a float64 transcription of the reference's
``forward``, values and the gradients of q, k, v and the position vectors.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from posenc.encodings.base import EncodingConfig, ModelDims, PositionalEncoding, sizes
from posenc.spec import check_int, spec


class ContextualPosition(PositionalEncoding):
    """CoPE: learned position vectors read at gated counts of the keys (module docstring)."""

    where = "scores"
    has_content_bias = True

    @spec
    class Config(EncodingConfig):
        """``npos``: the number of position vectors (None = block_size + 1, every count a context can reach)."""

        npos: int | None = None

        def __post_init__(self) -> None:
            check_int("ContextualPosition.Config", "npos", self.npos, minimum=2, optional=True)

    def __init__(self, config: Config, dims: ModelDims) -> None:
        """``npos`` None: one more than the model's block size (every position a training context has)."""
        super().__init__()
        head_dim, npos = dims.head_dim, dims.block_size + 1 if config.npos is None else config.npos
        check_int("ContextualPosition", "head_dim", head_dim)
        self.config = self.Config(npos=npos)
        self.npos = npos
        self.pos_emb = nn.Parameter(torch.zeros(head_dim, npos))  # e[n] is pos_emb[:, n]; zeros as the reference

    @classmethod
    def create(cls, head_dim: int, npos: int) -> ContextualPosition:
        return cls(cls.Config(npos=npos), sizes(head_dim=head_dim))

    def content_bias(self, q: Tensor, scores: Tensor, visible: Tensor, scale: float) -> Tensor:
        gates = torch.sigmoid(scores) * visible  # (B, nh, bq, span): the keys a query sees
        positions = gates.flip(-1).cumsum(-1).flip(-1).clamp(max=self.npos - 1)  # p_ij: from j to i
        logits = torch.matmul(q.to(scores.dtype), self.pos_emb.to(scores.dtype))  # (B, nh, bq, npos)
        floor = positions.detach().floor().long()
        ceil = positions.detach().ceil().long()
        at = lambda index: logits.gather(-1, index.expand(*logits.shape[:-1], -1))  # noqa: E731
        weight = positions - floor  # the interpolation weight carries the gradient
        return (at(ceil) * weight + at(floor) * (1 - weight)) * scale

    def extra_repr(self) -> str:
        return f"npos={self.npos}"

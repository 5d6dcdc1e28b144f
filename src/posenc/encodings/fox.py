"""Forgetting attention (FoX; Lin, Nikishin, He & Courville, ICLR 2025, "Forgetting Transformer:
Softmax Attention with a Forget Gate", arXiv:2503.02130): positions from the content.

Where it acts: on the attention scores (``where = "scores"``), from the layer's input. Each head
has a forget gate per token, f_t = sigmoid(w_h . x_t + b_h) in (0, 1); the score of query i and
key j gets

    D_ij = sum_{l = j + 1}^{i} log f_l = F_i - F_j,    F_t = sum_{l <= t} log f_l,

so a key fades as the gates between it and the query close, at a rate the content decides (ALiBi
is the special case of a constant gate per head). ``token_features`` returns F (B, nh, T, 1), kept
in the KV cache beside the keys (new tokens continue the cached F), and ``score_bias`` is
F_i - F_j on each tile of the blockwise kernel: two vectors per tile, linear memory. Packed
documents are exact: F runs on across a document boundary, but only differences within a document
are ever used.

``fox_rope`` (:class:`ForgetGateRoPE`) is FoX with RoPE on q and k in the same layer, the paper's
comparison; its options are RoPE's.

Conventions, as the paper's code (zhixuan-lin/forgetting-transformer, ``ForgettingAttentionLayer``
with ``fgate_type="full"``): the gate is one ``nn.Linear(C, nh)`` with a bias, initialised
N(0, 0.02) with a zero bias (the model's initialiser there), so every gate starts near 1/2; log f
is computed in float32 (``logsigmoid`` of the float32 logit; a float64 model stays float64). Weight decay: the gate's matrix is
decayed, its bias is not (posenc's default rule; the paper's code decays by the same rule).

Golden test (tests/test_fox.py): attention against a float64 transcription of flash-linear-
attention's ``naive_forgetting_attn`` (fla/ops/forgetting_attn/naive.py), values and gradients.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from posenc.encodings.base import EncodingConfig, ModelDims, PositionalEncoding, sizes
from posenc.encodings.rope import RotaryEmbedding
from posenc.spec import check_int, spec


class _Gates:
    """The forget gates shared by FoX with and without RoPE (a mixin of a PositionalEncoding)."""

    where = "scores"
    cached_features = 1  # F_t, the running sum of log forget gates, per head
    elementwise_bias = True

    def _init_gate(self, n_embd: int, n_head: int) -> None:
        check_int(type(self).__name__, "n_embd", n_embd)
        check_int(type(self).__name__, "n_head", n_head)
        self.n_head = n_head
        self.gate = nn.Linear(n_embd, n_head)
        nn.init.normal_(self.gate.weight, mean=0.0, std=0.02)
        nn.init.zeros_(self.gate.bias)

    def log_forget(self, x: Tensor) -> Tensor:
        """log f_t per head: (B, T, C) -> (B, nh, T), in float32 at least (float64 stays float64)."""
        logit = self.gate(x)
        return F.logsigmoid(logit.to(torch.promote_types(logit.dtype, torch.float32))).transpose(1, 2)

    def token_features(self, x: Tensor, past: Tensor | None = None) -> Tensor:
        cum = torch.cumsum(self.log_forget(x), dim=-1)[..., None]  # (B, nh, T, 1): F_t
        return cum if past is None else cum + past[:, :, -1:]

    def score_bias(
        self,
        q_positions: Tensor,
        k_positions: Tensor,
        q_features: Tensor | None = None,
        k_features: Tensor | None = None,
    ) -> Tensor:
        return q_features - k_features.transpose(-1, -2)  # (B, nh, Tq, 1) - (B, nh, 1, Tk)

    def elementwise_score_bias(self) -> Callable[..., Tensor]:
        def bias(head, q_position, k_position, q_feature=None, k_feature=None):
            return q_feature - k_feature  # F_i - F_j of the head's own gates

        return bias


class ForgetGate(_Gates, PositionalEncoding):
    """FoX: a content-dependent decay of the scores, F_i - F_j (module docstring)."""

    @spec
    class Config(EncodingConfig):
        """FoX has no options: its gates are learned."""

    def __init__(self, config: Config, dims: ModelDims) -> None:
        super().__init__()
        self.config = config
        self._init_gate(dims.n_embd, dims.n_head)

    @classmethod
    def create(cls, n_embd: int, n_head: int) -> ForgetGate:
        return cls(cls.Config(), sizes(n_head, n_embd=n_embd))

    def extra_repr(self) -> str:
        return f"n_head={self.n_head}"


class ForgetGateRoPE(_Gates, RotaryEmbedding):
    """FoX with RoPE on q and k (the paper's comparison): RoPE's options, and the forget gates."""

    @spec
    class Config(RotaryEmbedding.Config):
        """RoPE's options (see :class:`RotaryEmbedding`)."""

    def __init__(self, config: Config, dims: ModelDims) -> None:
        RotaryEmbedding.__init__(self, config, dims)
        self._init_gate(dims.n_embd, dims.n_head)

    @classmethod
    def create(cls, head_dim: int, n_embd: int, n_head: int, *, cache_len: int = 2048, **rope: Any) -> ForgetGateRoPE:
        """By hand: ``rope`` are RoPE's options (:class:`RotaryEmbedding`)."""
        return cls.build(sizes(n_head, head_dim=head_dim, n_embd=n_embd, block_size=0), cache_len=cache_len, **rope)

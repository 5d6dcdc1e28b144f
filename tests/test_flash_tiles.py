"""The blockwise path's CPU training kernel (posenc.attention.flash_tiles): which calls it serves and
what it saves. Its values and gradients are checked against the float64 reference by
tests/test_blockwise.py and every encoding's tests, which now run through it."""

from __future__ import annotations

import pytest
import torch

from posenc.attention.blockwise import blockwise_attention
from posenc.encodings.alibi import ALiBi
from posenc.encodings.fire import FIRE


def qkv(B, nh, T, hs, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(B, nh, T, hs, generator=g, requires_grad=True) for _ in range(3)]


@pytest.mark.parametrize("enc", [ALiBi(4), FIRE(4)], ids=["alibi", "fire"])
def test_training_runs_fused_tiles_and_saves_no_score_sized_tensor(enc):
    """Under autograd on CPU an encoding's bias goes through FlashTiles, which saves O(T) tensors
    only; FIRE's MLP still gets its gradient (rebuilt tile by tile in backward)."""
    B, nh, T = 1, 4, 256
    q, k, v = qkv(B, nh, T, 16)
    saved: list[int] = []

    def pack(t):
        saved.append(t.numel())
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        y = blockwise_attention(
            q, k, v, score_bias=enc.score_bias, q_positions=torch.arange(T), k_positions=torch.arange(T)
        )
    assert type(y.grad_fn).__name__ == "FlashTilesBackward"
    assert max(saved) < nh * T * T // 4, max(saved)
    y.sum().backward()
    assert all(p.grad is not None for p in enc.parameters())


def test_what_it_does_not_serve_keeps_the_checkpointed_tiles():
    """A caller's own bias function (its parameters unknown), a softcap or no gradients keep the old path."""
    q, k, v = qkv(1, 2, 32, 8)
    alibi = ALiBi(2)
    own = blockwise_attention(q, k, v, score_bias=lambda qp, kp, qf=None, kf=None: alibi.score_bias(qp, kp))
    assert type(own.grad_fn).__name__ != "FlashTilesBackward"
    assert type(blockwise_attention(q, k, v, softcap=5.0).grad_fn).__name__ != "FlashTilesBackward"
    with torch.no_grad():
        assert blockwise_attention(q, k, v, score_bias=alibi.score_bias).grad_fn is None

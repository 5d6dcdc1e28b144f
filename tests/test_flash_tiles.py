"""The blockwise path's CPU training kernel (posenc.attention.flash_tiles): which calls it serves and
what it saves. Its values and gradients are checked against the float64 reference by
tests/test_blockwise.py and every encoding's tests, which now run through it."""

from __future__ import annotations

import math

import pytest
import torch

from posenc.attention.blockwise import blockwise_attention
from posenc.attention.flash_tiles import exp_or_zero_
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


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_exp_or_zero_drops_only_what_would_be_subnormal(dtype):
    """exp where the result is a normal float; exactly 0 from e * tiny down (-inf included), never a
    subnormal."""
    tiny = torch.finfo(dtype).tiny
    cut = math.log(tiny) + 1.0
    x = torch.tensor([0.0, -5.0, cut + 1e-3, cut - 1e-3, math.log(tiny) - 5.0, float("-inf"), 3.0], dtype=dtype)
    got = exp_or_zero_(x.clone())
    want = torch.where(x >= cut, x.exp(), torch.zeros_like(x))
    torch.testing.assert_close(got, want, rtol=0, atol=0)
    assert not ((got != 0) & (got.abs() < tiny)).any()
    assert (x.exp()[x < cut] <= math.e * tiny).all()  # what is dropped is below e * tiny


def test_far_keys_of_a_learned_bias_keep_their_gradients():
    """Scores far below the row's maximum (a FoX-like bias of -60 to -100, where exp is subnormal)
    against the float64 reference: values and gradients of q, k, v and the bias's parameter."""

    class Far(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.tensor(1.0))

        def score_bias(self, q_pos, k_pos, qf=None, kf=None):
            d = (q_pos[:, None] - k_pos[None, :]).clamp_min(0).float()
            return (-self.w * (d * 0.8) ** 1.3).expand(2, -1, -1)  # far keys 60-100 below the near ones

    B, nh, T = 1, 2, 96
    q, k, v = qkv(B, nh, T, 8, seed=3)
    enc = Far()
    out = blockwise_attention(q, k, v, score_bias=enc.score_bias)
    g = torch.randn_like(out)
    grads = torch.autograd.grad(out, [q, k, v, enc.w], g)
    enc64 = Far().double()
    q64, k64, v64 = (t.detach().double().requires_grad_() for t in (q, k, v))
    pos = torch.arange(T)
    s = q64 @ k64.transpose(-1, -2) / math.sqrt(8) + enc64.score_bias(pos, pos).double()
    s = s.masked_fill(pos[:, None] < pos[None, :], float("-inf"))
    ref = torch.softmax(s, -1) @ v64
    want = torch.autograd.grad(ref, [q64, k64, v64, enc64.w], g.double())
    torch.testing.assert_close(out.double(), ref, rtol=1e-5, atol=1e-5)
    for a, b in zip(grads, want, strict=True):
        torch.testing.assert_close(a.double(), b, rtol=1e-4, atol=1e-5)

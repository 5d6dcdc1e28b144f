"""The dense path (posenc.attention.dense): one SDPA call with the bias and the visibility as an
additive mask, checked against the same float64 reference as the blockwise kernel (values and
gradients of q, k, v, the encoding's parameters and the sinks, to 1e-5), and the rule that picks it."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given
from test_blockwise import ENCODINGS, TOL, assert_parity, attention_case, grads, make_encoding, qkv

from posenc import GPT, GPTConfig
from posenc.attention import blockwise, dense, kernel
from posenc.attention.blockwise import blockwise_attention
from posenc.attention.dense import dense_attention
from posenc.attention.kernel import attend, choose_backend
from posenc.encodings.alibi import ALiBi
from posenc.encodings.base import Weighting

F64 = torch.float64


@pytest.mark.parametrize("name", [None, *ENCODINGS])
@given(case=attention_case())
def test_dense_matches_the_reference(name, case):
    enc = make_encoding(name, case["nh"])
    q, k, v = qkv(2, case["nh"], case["n_kv"], case["Tq"], case["Tk"], 8)
    k_pos = torch.arange(case["Tk"]) + case["offset"]
    q_pos = k_pos[case["Tk"] - case["Tq"] :]
    assert_parity(enc, q, k, v, q_pos, k_pos, fn=dense_attention, window=case["window"])


@pytest.mark.parametrize("name", list(ENCODINGS))
def test_dense_per_row_positions_segments_and_padding(name):
    B, nh, T = 3, 4, 29
    enc = make_encoding(name, nh)
    q, k, v = qkv(B, nh, 2, T, T, 8, seed=3)
    pos = torch.stack([torch.arange(T), torch.arange(T) + 11, torch.arange(T)])
    pos[2, 10:] = torch.arange(T - 10)
    segments = torch.zeros(B, T, dtype=torch.long)
    segments[2, 10:] = 1
    padding = torch.ones(B, T, dtype=torch.bool)
    padding[1, :4] = False
    kw = dict(window=5, q_segments=segments, k_segments=segments, key_padding_mask=padding)
    assert_parity(enc, q, k, v, pos, pos, fn=dense_attention, **kw)


def test_rows_with_no_visible_key_are_zero_not_nan():
    q, k, v = qkv(2, 2, 2, 6, 10, 4)
    padding = torch.ones(2, 10, dtype=torch.bool)
    padding[0] = False
    padding[1, :7] = False
    y = dense_attention(q, k, v, key_padding_mask=padding)
    assert torch.isfinite(y).all() and (y[0] == 0).all() and (y[1, :, :3] == 0).all()
    y.sum().backward()
    assert all(torch.isfinite(t.grad).all() for t in (q, k, v))


@pytest.mark.parametrize("window", [None, 3])
def test_sinks_and_chunks_equal_the_blockwise_kernel(window):
    enc = make_encoding("alibi", 4)
    q, k, v = qkv(2, 4, 2, 7, 19, 8, seed=5)
    sinks = torch.randn(4, generator=torch.Generator().manual_seed(2)).mul(2.0).requires_grad_()
    pos = torch.arange(19)
    kw = dict(score_bias=enc.score_bias, q_positions=pos[-7:], k_positions=pos, window=window, sinks=sinks)
    for extra in ({}, {"chunk": 6}):
        got = dense_attention(q, k, v, **kw, **extra)
        want = blockwise_attention(q, k, v, **kw, **extra, block_q=4, block_k=5)
        torch.testing.assert_close(got, want, **TOL)
        up = torch.randn(got.shape, generator=torch.Generator().manual_seed(1))
        for a, b in zip(grads(got, [q, k, v, sinks], up), grads(want, [q, k, v, sinks], up), strict=True):
            torch.testing.assert_close(a, b, **TOL)


def test_the_rule_takes_the_dense_path_only_within_its_budget(monkeypatch):
    """Calls no backward follows (a training call on CPU takes the fused tiles: the test below)."""
    q, k = (t.detach() for t in qkv(2, 4, 4, 16, 16, 8)[:2])
    bias = ALiBi(4).score_bias
    assert choose_backend(q, k) == "sdpa"
    for extra in (dict(score_bias=bias), dict(window=4), dict(chunk=4), dict(sinks=torch.zeros(4))):
        assert choose_backend(q, k, **extra) == "dense"
    assert choose_backend(q, k, key_padding_mask=torch.ones(2, 16, dtype=torch.bool)) == "dense"
    assert choose_backend(q, k, softcap=30.0) == "blockwise"  # the cap acts on the scores before the bias
    sb = Weighting("stickbreaking", attend_current=False, remainder="self")
    assert choose_backend(q, k, weighting=sb) == "blockwise"
    assert choose_backend(q.half(), k.half(), score_bias=bias) == "blockwise"  # float32 scores for half inputs
    monkeypatch.setattr(dense, "DENSE_BUDGET", 2 * 4 * 16 * 16 - 1)  # one element short of the mask
    assert choose_backend(q, k, score_bias=bias) == "blockwise"
    monkeypatch.setattr(dense, "DENSE_BUDGET", 2 * 4 * 16 * 16)
    assert choose_backend(q, k, score_bias=bias) == "dense"
    monkeypatch.setattr(dense, "DENSE_BUDGET", 2**24)
    qg, kg = q.requires_grad_(), k.requires_grad_()  # a backward will run: the fused tiles where they serve
    for extra in (dict(score_bias=bias), dict(window=4), dict(chunk=4)):
        assert choose_backend(qg, kg, **extra) == "blockwise"
    assert choose_backend(q.detach(), k.detach(), learned_bias=True, score_bias=bias) == "blockwise"
    assert choose_backend(qg, kg, sinks=torch.zeros(4)) == "dense"  # the tiles take no sinks
    assert choose_backend(qg, kg, score_bias=bias, dropout_p=0.1) == "dense"  # nor dropout
    assert choose_backend(qg, kg, score_bias=lambda *a: None) == "dense"  # nor a caller's own bias function
    with torch.no_grad():
        assert choose_backend(qg, kg, score_bias=bias) == "dense"


def test_attend_refuses_what_the_dense_path_cannot_do():
    q, k, v = qkv(1, 2, 2, 8, 8, 4)
    with pytest.raises(ValueError, match="backend='dense' takes no softcap"):
        attend(q, k, v, backend="dense", softcap=5.0)
    with pytest.raises(ValueError, match="takes no content bias"):
        attend(q, k, v, backend="dense", content_bias=lambda *a: None)


@pytest.mark.parametrize("pe", ["alibi", "t5", "kerple", "fire", "fox", "fox_rope", "rope_sinks", "rnope_swa_sinks"])
def test_a_model_trains_the_same_on_either_path(pe, monkeypatch):
    """Logits and every parameter's gradient of a small GPT, dense path against blockwise (float64)."""
    window = {} if pe.startswith("rnope") else {"sliding_window": 5}  # rnope's RoPE layers: 32-token windows
    config = GPTConfig.from_preset("tiny", pe=pe, block_size=40, **window)
    torch.manual_seed(0)
    model = GPT(config).to(F64)
    idx = torch.randint(0, config.vocab_size, (2, 40))
    out, calls = {}, []
    monkeypatch.setattr(kernel, "dense_attention", lambda *a, **kw: calls.append(1) or dense_attention(*a, **kw))
    # training on CPU prefers the fused tiles where they serve: turned off here to train on the dense path
    monkeypatch.setattr(kernel, "flash_tiles_take", lambda *a, **kw: False)
    for budget in (dense.DENSE_BUDGET, 0):  # 0: every call over budget, so blockwise
        monkeypatch.setattr(dense, "DENSE_BUDGET", budget)
        model.zero_grad()
        logits, loss = model(idx, idx)
        loss.backward()
        out[budget] = (logits, {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None})
    assert len(calls) == config.n_layer  # every layer took the dense path once, then none did
    (la, ga), (lb, gb) = out.values()
    torch.testing.assert_close(la, lb, rtol=1e-10, atol=1e-10)
    assert ga.keys() == gb.keys()
    for n in ga:
        torch.testing.assert_close(ga[n], gb[n], rtol=1e-9, atol=1e-10, msg=n)


@pytest.mark.parametrize("pe", ["alibi", "t5", "fox", "rope_sinks"])
def test_training_on_cpu_takes_the_fused_tiles_within_the_budget(pe, monkeypatch):
    """A training step on CPU takes the blockwise path's fused tiles wherever they compute the call
    (a float mask that takes a gradient sends SDPA to its math kernel: docs/attention.md measures
    both); evaluation without gradients, and what the tiles cannot compute (sinks), stay dense."""
    config = GPTConfig.from_preset("tiny", pe=pe, block_size=40)
    model = GPT(config)
    idx = torch.randint(0, config.vocab_size, (2, 40))
    paths: list[str] = []
    monkeypatch.setattr(kernel, "dense_attention", lambda *a, **kw: paths.append("dense") or dense_attention(*a, **kw))
    monkeypatch.setattr(
        kernel, "blockwise_attention", lambda *a, **kw: paths.append("blockwise") or blockwise_attention(*a, **kw)
    )
    fused = blockwise.flash_tiles_attention
    monkeypatch.setattr(blockwise, "flash_tiles_attention", lambda *a, **kw: paths.append("tiles") or fused(*a, **kw))
    model(idx, idx)[1].backward()
    assert paths == (["dense"] if pe == "rope_sinks" else ["blockwise", "tiles"]) * config.n_layer
    paths.clear()
    with torch.no_grad():
        model(idx)
    assert paths == ["dense"] * config.n_layer

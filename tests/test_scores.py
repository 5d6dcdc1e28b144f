"""The kernel's one input object (posenc.attention.scores.ScoreInputs): attend and its four paths
take it, its keyword form is the same call, and the visibility rule is mask.py's on every path."""

from __future__ import annotations

import inspect

import pytest
import torch

from posenc.attention import blockwise, dense, flex, kernel
from posenc.attention.mask import Mask, chunk_starts, visible
from posenc.attention.scores import ScoreInputs
from posenc.encodings.alibi import ALiBi


def qkv(B, nh, n_kv, Tq, Tk, hs, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(B, n, t, hs, generator=g) for n, t in ((nh, Tq), (n_kv, Tk), (n_kv, Tk)))


def test_attend_has_at_most_8_parameters_and_every_path_takes_the_one_input():
    assert len(inspect.signature(kernel.attend).parameters) <= 8
    paths = (
        kernel.attend,
        kernel._sdpa,
        dense.dense_attention,
        blockwise.blockwise_attention,
        flex.flex_attention_path,
    )
    for path in paths:
        assert list(inspect.signature(path).parameters)[:4] == ["q", "k", "v", "inputs"], path.__name__
    for rule in (kernel.choose_backend, kernel.flex_case):
        assert list(inspect.signature(rule).parameters)[:3] == ["q", "k", "inputs"], rule.__name__


@pytest.mark.parametrize("backend", ["dense", "blockwise"])
def test_the_object_and_its_keywords_are_the_same_call(backend):
    q, k, v = qkv(2, 4, 2, 6, 10, 8)
    alibi = ALiBi(4)
    seg = torch.tensor([[0] * 5 + [1] * 5, [0] * 10])
    sinks = torch.tensor([0.5, -1.0, 0.0, 1.0])
    fields = dict(score_bias=alibi.score_bias, q_segments=seg[:, 4:], k_segments=seg, sinks=sinks)
    inputs = ScoreInputs(mask=Mask(window=4, chunk=3), **fields)
    got = kernel.attend(q, k, v, inputs, backend=backend)
    torch.testing.assert_close(got, kernel.attend(q, k, v, window=4, chunk=3, backend=backend, **fields))
    assert kernel.choose_backend(q, k, inputs) == kernel.choose_backend(q, k, window=4, chunk=3, **fields) == "dense"


def test_inputs_refuse_mixed_unknown_or_bad_fields():
    q, k, v = qkv(1, 2, 2, 4, 4, 8)
    with pytest.raises(TypeError, match="not both"):
        kernel.attend(q, k, v, ScoreInputs(), window=2)
    with pytest.raises(TypeError, match=r"unknown attention inputs \['windw'\]"):
        kernel.attend(q, k, v, windw=2)
    with pytest.raises(TypeError, match="must be a ScoreInputs"):
        kernel.attend(q, k, v, {"window": 2})
    with pytest.raises(ValueError, match="softcap must be a number > 0"):
        ScoreInputs(softcap=0.0)
    with pytest.raises(ValueError, match=r"sinks must be one logit per query head \(2,\)"):
        blockwise.blockwise_attention(q, k, v, ScoreInputs(sinks=torch.zeros(3)))


def test_the_dense_path_refuses_what_it_cannot_compute_when_called_directly():
    """Called directly with the object, the dense path refuses a softcap rather than drop it."""
    q, k, v = qkv(1, 2, 2, 4, 4, 8)
    with pytest.raises(ValueError, match="takes no softcap"):
        dense.dense_attention(q, k, v, ScoreInputs(softcap=5.0))
    with pytest.raises(ValueError, match="takes no content bias"):
        dense.dense_attention(q, k, v, ScoreInputs(content_bias=lambda *a: None))


def test_flex_block_mask_is_the_rule_of_mask_py():
    """FlexAttention's mask_mod asks mask.py: chunks counted from each document's start, documents,
    padding and a KV-cache offset, equal to ``visible`` over the whole grid."""
    Tq, Tk, mask = 12, 20, Mask(window=9, chunk=4)
    seg = torch.tensor([[0] * 7 + [1] * 13, [0] * 3 + [1] * 10 + [2] * 7])
    pad = torch.ones(2, Tk, dtype=torch.bool)
    pad[1, :2] = False
    block = flex.flex_block_mask(
        Tq, Tk, device="cpu", window=9, chunk=4, q_segments=seg[:, -Tq:], k_segments=seg, key_padding_mask=pad
    )
    q_starts, k_starts = chunk_starts(mask, seg, Tq)
    want = visible(
        Tk - Tq, Tk, 0, Tk, mask, device="cpu", q_segments=seg[:, -Tq:], k_segments=seg, key_padding_mask=pad,
        q_starts=q_starts, k_starts=k_starts,
    )  # fmt: skip
    b, q_idx, k_idx = torch.arange(2)[:, None, None], torch.arange(Tq)[None, :, None], torch.arange(Tk)[None, None, :]
    got = block.mask_mod(b, torch.zeros((), dtype=torch.long), q_idx, k_idx)  # (B, Tq, Tk): every score
    assert torch.equal(got, want[:, 0])
    assert got.any() and not got.all()

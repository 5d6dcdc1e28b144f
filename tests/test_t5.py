"""T5 relative position bias (posenc.encodings.t5): buckets against T5's own rule, the bias against
x-transformers, translation invariance, KV cache, per-row positions and float32 math.
"""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from posenc.encodings import ENCODINGS
from posenc.encodings.base import ModelDims
from posenc.encodings.t5 import T5RelativeBias, t5_causal_buckets


def reference_relative_position_bucket(relative_position: int, bidirectional=True, num_buckets=32, max_distance=128):
    """T5's ``_relative_position_bucket`` (mesh-tensorflow / the T5 code), for one memory_position -
    query_position, in plain Python floats."""
    ret = 0
    n = -relative_position
    if bidirectional:
        num_buckets //= 2
        ret += (n < 0) * num_buckets
        n = abs(n)
    else:
        n = max(n, 0)
    max_exact = num_buckets // 2
    if n < max_exact:
        return ret + n
    val_if_large = max_exact + int(
        math.log(n / max_exact) / math.log(max_distance / max_exact) * (num_buckets - max_exact)
    )
    return ret + min(val_if_large, num_buckets - 1)


@pytest.mark.parametrize("num_buckets, max_distance", [(32, 128), (16, 64), (8, 20)])
def test_buckets_match_t5_rule(num_buckets, max_distance):
    distance = torch.arange(-40, 3000)  # i - j
    got = t5_causal_buckets(distance, num_buckets, max_distance)
    want = [reference_relative_position_bucket(-d, False, num_buckets, max_distance) for d in distance.tolist()]
    assert got.tolist() == want


def test_bucket_examples():
    b = t5_causal_buckets(torch.tensor([-5, 0, 1, 15, 16, 20, 127, 128, 10_000]))
    # exact buckets below 16; 16..127 spread logarithmically over 16..31; 128 and beyond share 31
    assert b.tolist() == [0, 0, 1, 15, 16, 17, 31, 31, 31]


@pytest.mark.parametrize("head_dim", [32, 64])
def test_matches_x_transformers_relative_position_bias_at_its_own_scale(head_dim):
    """x-transformers' attention builds ``RelativePositionBias(scale=dim_head ** 0.5)``; so does a
    posenc model (``build`` from the model's sizes)."""
    import x_transformers.x_transformers as xt  # a dev dependency: the golden reference must run

    nh, Tq, Tk = 4, 7, 300
    ours = T5RelativeBias.build(ModelDims(n_embd=nh * head_dim, n_head=nh, block_size=64), init_std=1.0)
    assert ours.scale == head_dim**0.5
    ref = xt.RelativePositionBias(scale=head_dim**0.5, causal=True, num_buckets=32, max_distance=128, heads=nh)
    with torch.no_grad():
        ref.relative_attention_bias.weight.copy_(ours.relative_attention_bias.weight)
    want = ref(Tq, Tk)  # (nh, Tq, Tk): the queries are the last Tq of Tk positions
    got = ours.score_bias(torch.arange(Tk - Tq, Tk), torch.arange(Tk))
    torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-6)


def test_in_a_gpt_the_bias_starts_small_and_the_table_is_decayed():
    """The table starts N(0, 0.02), so at hs=32 the initial bias has std 0.02 * sqrt(32) = 0.11
    (x-transformers' N(0, 1) table would give 5.7); it is decayed like GPT-NeoX's."""
    from posenc import GPT, GPTConfig

    torch.manual_seed(0)
    model = GPT(GPTConfig.from_preset("cpu-small", pe="t5"))
    enc = model.blocks[0].attn.pe
    bias = enc.score_bias(torch.arange(128), torch.arange(128))
    assert enc.scale == 32**0.5 and 0.05 < bias.std() < 0.2
    decayed = {id(p) for p in model.configure_optimizers(0.1, 1e-3).param_groups[0]["params"]}
    assert id(enc.relative_attention_bias.weight) in decayed


def test_bias_reads_the_table():
    enc = T5RelativeBias(3, init_std=1.0)
    pos = torch.arange(200)
    bias = enc.score_bias(pos, pos)  # (nh, T, T)
    buckets = t5_causal_buckets(pos[:, None] - pos[None, :])
    torch.testing.assert_close(bias, enc.relative_attention_bias.weight[buckets].permute(2, 0, 1))
    assert bias.shape == (3, 200, 200) and bias.dtype == torch.float32


@given(T=st.integers(1, 40), offset=st.integers(0, 10_000), nh=st.integers(1, 4))
def test_translation_invariant_at_any_offset(T, offset, nh):
    enc = T5RelativeBias(nh, init_std=1.0)
    pos = torch.arange(T)
    torch.testing.assert_close(enc.score_bias(pos + offset, pos + offset), enc.score_bias(pos, pos), rtol=0, atol=0)


@given(Tk=st.integers(1, 300), data=st.data())
def test_kv_cache_rows_are_rows_of_the_full_bias(Tk, data):
    Tq = data.draw(st.integers(1, Tk))
    offset = data.draw(st.integers(0, 50))
    enc = T5RelativeBias(2, init_std=1.0)
    k_pos = torch.arange(Tk) + offset
    full = enc.score_bias(k_pos, k_pos)
    torch.testing.assert_close(enc.score_bias(k_pos[Tk - Tq :], k_pos), full[:, Tk - Tq :], rtol=0, atol=0)


def test_per_row_positions():
    enc = T5RelativeBias(2, init_std=1.0)
    pos = torch.stack([torch.arange(50), torch.arange(50) + 17, torch.arange(50) * 3])
    bias = enc.score_bias(pos, pos)  # (B, nh, T, T)
    assert bias.shape == (3, 2, 50, 50)
    for b in range(3):
        torch.testing.assert_close(bias[b], enc.score_bias(pos[b], pos[b]), rtol=0, atol=0)


def test_float32_math_under_a_low_precision_model():
    enc = T5RelativeBias(2, init_std=1.0).to(torch.bfloat16)
    pos = torch.arange(20)
    bias = enc.score_bias(pos, pos)
    assert bias.dtype == torch.float32
    torch.testing.assert_close(
        bias, enc.relative_attention_bias.weight.float()[t5_causal_buckets(pos[:, None] - pos)].permute(2, 0, 1)
    )


def test_gradient_reaches_the_table():
    enc = T5RelativeBias(2)
    pos = torch.arange(40)
    enc.score_bias(pos, pos).sum().backward()
    assert enc.relative_attention_bias.weight.grad.abs().sum() > 0


def test_build_and_registry():
    code, cls = ENCODINGS["t5"]
    assert (code, cls) == ("T", T5RelativeBias) and cls.where == "scores"
    enc = cls.build(ModelDims(n_embd=64, n_head=4, block_size=32, n_layer=2), num_buckets=16, max_distance=64)
    assert enc.relative_attention_bias.weight.shape == (16, 4) and enc.max_distance == 64


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(n_head=0), "n_head"),
        (dict(n_head=2, num_buckets=1), "num_buckets"),
        (dict(n_head=2, num_buckets=32, max_distance=16), "max_distance"),
    ],
)
def test_invalid_options_raise(kwargs, match):
    with pytest.raises(ValueError, match=match):
        T5RelativeBias(**kwargs)

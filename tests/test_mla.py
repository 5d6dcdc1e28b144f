"""Multi-head latent attention (posenc/attention/mla.py).

Shapes: B batch, T tokens, C = n_embd, nh heads, L = kv_lora_rank, r = qk_rope_head_dim.

Golden test: Hugging Face's ``DeepseekV3Attention`` with ``DeepseekV3RotaryEmbedding`` on the
reference side, the same weights loaded by ``load_hf_attention_weights`` and posenc's
``RotaryEmbedding`` on ours; fp32, atol 1e-5 (the two agree to ~3e-8 in practice).
Equivalences (absorbed decode == naive forward, cached == full, shifted positions) run in float64
to 1e-10, and the absorbed form also in float32 to 1e-5.
"""

from __future__ import annotations

import math
import re
from pathlib import Path

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from posenc import AbsolutePE, ALiBi, RotaryEmbedding
from posenc.attention import ATTENTIONS, MultiHeadLatentAttention
from posenc.attention.mla import (
    MLACache,
    MLADims,
    cache_bytes_per_token,
    mla_dims,
    mla_softmax_scale,
    yarn_mscale,
)
from posenc.encodings.base import ModelDims
from posenc.hf.deepseek import load_hf_attention_weights, mla_from_hf_config

C, NH = 32, 4
DIMS = dict(kv_lora_rank=24, qk_rope_head_dim=6, qk_nope_head_dim=10, v_head_dim=12)
F64 = dict(rtol=0.0, atol=1e-10)
F32 = dict(rtol=1e-5, atol=1e-5)
DOCS = Path(__file__).resolve().parents[1] / "docs" / "mla.md"


def make_mla(pe=None, *, dtype=torch.float64, seed=0, **kwargs) -> MultiHeadLatentAttention:
    torch.manual_seed(seed)
    fields = DIMS | kwargs
    if pe == "rope":
        pe = RotaryEmbedding(fields["qk_rope_head_dim"], cache_len=64)
    attn = MultiHeadLatentAttention(C, NH, pe=pe, **fields)
    with torch.no_grad():  # non-trivial norm gains, so a wrong norm placement shows
        for p in attn.parameters():
            if p.dim() == 1:
                p.uniform_(0.5, 1.5)
    return attn.to(dtype).eval()


def inputs(B=2, T=12, *, dtype=torch.float64, seed=1) -> torch.Tensor:
    return torch.randn(B, T, C, generator=torch.Generator().manual_seed(seed), dtype=dtype)


def absorbed(attn: MultiHeadLatentAttention, x: torch.Tensor, positions=None) -> torch.Tensor:
    """The whole sequence through the absorbed (cached) path: one prefill into an empty cache."""
    return attn(x, positions, cache=attn.new_cache())


def decode(attn: MultiHeadLatentAttention, x: torch.Tensor, chunks: list[int]) -> torch.Tensor:
    cache, out, t = attn.new_cache(), [], 0
    for n in chunks:
        out.append(attn(x[:, t : t + n], cache=cache))
        t += n
    assert t == x.shape[1] and cache.length == t
    return torch.cat(out, dim=1)


ENCODINGS = {
    "rope": lambda: "rope",
    "nope": lambda: None,
    "alibi": lambda: ALiBi(NH),
    "rope-interleaved": lambda: RotaryEmbedding(DIMS["qk_rope_head_dim"], layout="interleaved"),
}


# ---------------------------------------------------------------------------------------------
# construction


def test_registered_and_defaults():
    assert ATTENTIONS["mla"] is MultiHeadLatentAttention
    d = mla_dims(256, 4)  # owt-16m: hs = 64
    assert d == MLADims(kv_lora_rank=256, q_lora_rank=None, qk_rope_head_dim=32, qk_nope_head_dim=64, v_head_dim=64)
    assert d.qk_head_dim == 96
    assert mla_dims(12, 2).qk_rope_head_dim == 2  # hs = 6: hs/2 = 3 rounded down to even
    assert mla_dims(4, 4).qk_rope_head_dim == 2  # never below one pair
    attn = MultiHeadLatentAttention(256, 4, pe=RotaryEmbedding(32))
    assert attn.kv_b_proj.weight.shape == (4 * (64 + 64), 256)
    assert attn.softmax_scale == pytest.approx(96**-0.5)


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        (dict(kv_lora_rank=0), "kv_lora_rank"),
        (dict(q_lora_rank=-3), "q_lora_rank"),
        (dict(qk_rope_head_dim=5), "qk_rope_head_dim"),
        (dict(qk_nope_head_dim=2.5), "qk_nope_head_dim"),
        (dict(v_head_dim=True), "v_head_dim"),
    ],
)
def test_bad_dims_name_the_field(kwargs, field):
    with pytest.raises(ValueError, match=field):
        MultiHeadLatentAttention(C, NH, **kwargs)


def test_indivisible_width_needs_explicit_dims():
    with pytest.raises(ValueError, match="not divisible"):
        MultiHeadLatentAttention(30, 4)
    MultiHeadLatentAttention(30, 4, **DIMS)  # every size given: fine


def test_refusals():
    r = DIMS["qk_rope_head_dim"]
    with pytest.raises(ValueError, match="where='input'"):
        MultiHeadLatentAttention(C, NH, pe=AbsolutePE(64, C), **DIMS)
    with pytest.raises(ValueError, match=f"qk_rope_head_dim={r}"):
        MultiHeadLatentAttention(C, NH, pe=RotaryEmbedding(C // NH), **DIMS)
    with pytest.raises(ValueError, match="QK-norm"):
        MultiHeadLatentAttention(C, NH, pe=RotaryEmbedding(r), qk_norm="rms", **DIMS)
    with pytest.raises(ValueError, match="layout='half'"):
        MultiHeadLatentAttention(C, NH, pe=RotaryEmbedding(r, layout="interleaved"), rope_interleave=True, **DIMS)
    with pytest.raises(ValueError, match="window"):
        MultiHeadLatentAttention(C, NH, window=0, **DIMS)
    with pytest.raises(ValueError, match="softmax_scale"):
        MultiHeadLatentAttention(C, NH, softmax_scale=-1.0, **DIMS)


def test_encoding_dims_is_the_rotary_part():
    dims = ModelDims(n_embd=256, n_head=4, block_size=128)
    assert MultiHeadLatentAttention.Config().encoding_dims(dims).head_dim == 32
    assert MultiHeadLatentAttention.Config(qk_rope_head_dim=8).encoding_dims(dims).head_dim == 8


def test_softmax_scale():
    assert mla_softmax_scale(96) == 96**-0.5
    assert mla_softmax_scale(96, {"rope_type": "default"}) == 96**-0.5
    yarn = {
        "rope_type": "yarn",
        "factor": 40.0,
        "original_max_position_embeddings": 4096,
        "mscale": 1.0,
        "mscale_all_dim": 1.0,
    }
    m = 0.1 * math.log(40.0) + 1.0  # DeepSeek-V3's yarn_get_mscale(40, 1)
    assert mla_softmax_scale(192, yarn) == pytest.approx(192**-0.5 * m * m, rel=1e-15)
    assert yarn_mscale(1.0, 1.0) == 1.0
    # without mscale_all_dim the YaRN correction lives in cos/sin only (the RoPE's attention factor)
    assert mla_softmax_scale(192, {k: v for k, v in yarn.items() if k != "mscale_all_dim"}) == 192**-0.5
    derived = yarn | {"factor": None, "max_position_embeddings": 4096 * 40}
    assert mla_softmax_scale(192, derived) == pytest.approx(mla_softmax_scale(192, yarn), rel=1e-15)
    r = DIMS["qk_rope_head_dim"]
    rope = RotaryEmbedding(r, scaling=yarn)
    assert make_mla(rope).softmax_scale == pytest.approx(mla_softmax_scale(16, yarn))
    assert make_mla(rope, softmax_scale=0.5).softmax_scale == 0.5


def test_softmax_scale_matches_hugging_face():
    mod = pytest.importorskip("transformers.models.deepseek_v3.modeling_deepseek_v3")
    for params in (
        {"rope_type": "default"},
        {"rope_type": "yarn", "factor": 40.0, "mscale": 1.0, "mscale_all_dim": 1.0},
        {"rope_type": "yarn", "factor": 8.0, "mscale": 0.707, "mscale_all_dim": 0.707},
        {"rope_type": "yarn", "factor": 8.0, "mscale": 1.0},
    ):
        assert mla_softmax_scale(192, params) == pytest.approx(mod.yarn_apply_mscale(params, 192**-0.5), rel=1e-12)


# ---------------------------------------------------------------------------------------------
# KV-cache size


def test_cache_bytes_per_token_hand_count():
    # owt-16m: n_embd 256, 4 heads of 64; per layer, per token
    fp16, fp32 = torch.float16, torch.float32
    assert cache_bytes_per_token("mha", 256, 4, dtype=fp16) == 2 * 4 * 64 * 2 == 1024
    assert cache_bytes_per_token("gqa", 256, 4, n_kv_head=2, dtype=fp16) == 2 * 2 * 64 * 2 == 512
    assert cache_bytes_per_token("mqa", 256, 4, dtype=fp16) == 2 * 1 * 64 * 2 == 256
    assert cache_bytes_per_token("mla", 256, 4, dtype=fp16) == (256 + 32) * 2 == 576
    assert cache_bytes_per_token("mha", 256, 4, dtype=fp32) == 2048
    assert cache_bytes_per_token("mla", 256, 4, dtype=fp32, n_layer=4) == 4 * (256 + 32) * 4 == 4608
    assert cache_bytes_per_token("mla", 256, 4, dtype=fp16, kv_lora_rank=128, qk_rope_head_dim=16) == 288
    with pytest.raises(ValueError, match="n_kv_head"):
        cache_bytes_per_token("gqa", 256, 4, n_kv_head=3)
    with pytest.raises(ValueError, match="attention"):
        cache_bytes_per_token("mamba", 256, 4)  # type: ignore[arg-type]


def test_cache_holds_only_latent_and_shared_key():
    attn = make_mla("rope", dtype=torch.float32)
    cache = attn.new_cache()
    assert isinstance(cache, MLACache) and cache.length == 0 and cache.nbytes == 0
    x = inputs(B=3, T=7, dtype=torch.float32)
    attn(x, cache=cache)
    L, r = DIMS["kv_lora_rank"], DIMS["qk_rope_head_dim"]
    assert cache.length == 7
    assert cache.kv.shape == (3, 7, L + r)
    assert cache.latent.shape == (3, 7, L) and cache.k_pe.shape == (3, 7, r)
    tensors = {k for k, v in vars(cache).items() if isinstance(v, torch.Tensor)}
    assert tensors == {"kv", "positions"}
    # the cached latent is the normalised one, the shared key the rotated one
    latent, k_pe = attn.kv_a_proj_with_mqa(x).split([L, r], dim=-1)
    torch.testing.assert_close(cache.latent, attn.kv_a_layernorm(latent))
    _, k_rot = attn.pe.rotate(k_pe[:, None], k_pe[:, None])
    torch.testing.assert_close(cache.k_pe, k_rot[:, 0])
    per_token = cache_bytes_per_token("mla", C, NH, dtype=torch.float32, **DIMS)
    assert cache.nbytes == 3 * 7 * per_token


def test_docs_table_is_the_function():
    text = DOCS.read_text()
    for attention, kv in (("MHA", {}), ("GQA", {"n_kv_head": 2}), ("MQA", {}), ("MLA", {})):
        row = re.search(rf"^\| {attention}\b.*$", text, re.MULTILINE)
        assert row is not None, f"no {attention} row in {DOCS}"
        numbers = [int(n) for n in re.findall(r"\b\d+\b", row.group(0).split("|", 3)[3])]
        fp16 = cache_bytes_per_token(attention.lower(), 256, 4, dtype=torch.float16, **kv)
        fp32 = cache_bytes_per_token(attention.lower(), 256, 4, dtype=torch.float32, **kv)
        assert numbers[:2] == [fp16, fp32], row.group(0)


# ---------------------------------------------------------------------------------------------
# absorbed decode == naive forward; caching


@pytest.mark.parametrize("encoding", sorted(ENCODINGS))
@pytest.mark.parametrize("q_lora_rank", [None, 20])
def test_absorbed_equals_naive_float64(encoding, q_lora_rank):
    attn = make_mla(ENCODINGS[encoding](), q_lora_rank=q_lora_rank)
    x = inputs()
    torch.testing.assert_close(absorbed(attn, x), attn(x), **F64)


def test_absorbed_equals_naive_float32():
    attn = make_mla("rope", dtype=torch.float32, q_lora_rank=20, rope_interleave=True)
    x = inputs(T=20, dtype=torch.float32)
    torch.testing.assert_close(absorbed(attn, x), attn(x), **F32)


@pytest.mark.parametrize("encoding", sorted(ENCODINGS))
@pytest.mark.parametrize("window", [None, 4])
def test_cached_decoding_equals_full(encoding, window):
    attn = make_mla(ENCODINGS[encoding](), window=window)
    x = inputs(T=11)
    full = attn(x)
    torch.testing.assert_close(decode(attn, x, [1] * 11), full, **F64)  # token by token
    torch.testing.assert_close(decode(attn, x, [5, 1, 1, 4]), full, **F64)  # chunked prefill + decode


def test_window_limits_what_a_query_sees():
    attn = make_mla("rope", window=3)
    x = inputs(T=8)
    y = attn(x)
    x2 = x.clone()
    x2[:, :4] += 1.0  # tokens 0..3 changed: outside the windows of tokens 6 (sees 4..6) and 7 (5..7)
    y2 = attn(x2)
    torch.testing.assert_close(y2[:, 6:], y[:, 6:], **F64)
    assert not torch.allclose(y2[:, 5], y[:, 5])  # token 5 sees token 3


def test_per_row_positions_cached():
    attn = make_mla(ALiBi(NH))
    x = inputs(B=2, T=6)
    positions = torch.tensor([[0, 1, 2, 3, 4, 5], [3, 4, 5, 6, 7, 8]])
    full = attn(x, positions)
    cache = attn.new_cache()
    parts = [attn(x[:, :4], positions[:, :4], cache), attn(x[:, 4:], positions[:, 4:], cache)]
    torch.testing.assert_close(torch.cat(parts, dim=1), full, **F64)
    # the shifted row of a relative encoding sees the same scores
    torch.testing.assert_close(full[1], attn(x[1:], torch.arange(6))[0], **F64)


def test_length_dependent_rope_caches_unrotated_keys():
    r = DIMS["qk_rope_head_dim"]
    pe = RotaryEmbedding(r, scaling={"rope_type": "dynamic", "factor": 2.0, "max_position_embeddings": 4})
    attn = make_mla(pe)
    x = inputs(T=10)  # past max_position_embeddings: the frequencies change with every new token
    steps = decode(attn, x, [3] + [1] * 7)
    # a step sees the rotation of its own total length: it equals the full forward of the prefix
    for t in range(3, 10):
        torch.testing.assert_close(steps[:, t], attn(x[:, : t + 1])[:, t], **F64)
    torch.testing.assert_close(steps[:, :3], attn(x[:, :3]), **F64)
    cache = attn.new_cache()
    attn(x, cache=cache)
    raw = attn.kv_a_proj_with_mqa(x)[..., DIMS["kv_lora_rank"] :]
    torch.testing.assert_close(cache.k_pe, raw, **F64)


def test_rope_interleave_is_a_channel_permutation():
    """rope_interleave=True (de-interleave, then half layout, as HF) and an interleaved-layout RoPE
    on the same weights rotate the same pairs, so attention is identical."""
    r = DIMS["qk_rope_head_dim"]
    a = make_mla(RotaryEmbedding(r, layout="half"), rope_interleave=True)
    b = make_mla(RotaryEmbedding(r, layout="interleaved"), rope_interleave=False)
    b.load_state_dict(a.state_dict())
    x = inputs()
    torch.testing.assert_close(a(x), b(x), rtol=0.0, atol=1e-6)  # float32 tables, float64 activations
    c = make_mla(RotaryEmbedding(r, layout="half"), rope_interleave=False)
    c.load_state_dict(a.state_dict())
    assert not torch.allclose(a(x), c(x))


@given(offset=st.integers(0, 5000), T=st.integers(1, 8), seed=st.integers(0, 2**16))
def test_rope_offset_invariance(offset, T, seed):
    attn = make_mla("rope", seed=seed % 4)
    x = inputs(B=1, T=T, seed=seed)
    base = attn(x, torch.arange(T))
    torch.testing.assert_close(attn(x, torch.arange(T) + offset), base, rtol=0.0, atol=1e-5)
    torch.testing.assert_close(absorbed(attn, x, torch.arange(T) + offset), base, rtol=0.0, atol=1e-5)


def test_gradients_reach_every_parameter():
    attn = make_mla("rope", q_lora_rank=20, dtype=torch.float32).train()
    attn(inputs(dtype=torch.float32)).square().sum().backward()
    for name, p in attn.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


# ---------------------------------------------------------------------------------------------
# Hugging Face parity

YARN = {
    "rope_type": "yarn",
    "rope_theta": 10000.0,
    "factor": 4.0,
    "original_max_position_embeddings": 16,
    "mscale": 0.9,
    "mscale_all_dim": 0.8,
    "beta_fast": 32.0,
    "beta_slow": 1.0,
}
DEFAULT = {"rope_type": "default", "rope_theta": 10000.0}


def hf_pair(*, q_lora_rank, rope_interleave, rope_parameters, attention_bias=False):
    transformers = pytest.importorskip("transformers")
    from transformers.models.deepseek_v3.modeling_deepseek_v3 import DeepseekV3Attention, DeepseekV3RotaryEmbedding

    config = transformers.DeepseekV3Config(
        vocab_size=32,
        hidden_size=C,
        intermediate_size=64,
        moe_intermediate_size=16,
        num_hidden_layers=1,
        num_attention_heads=NH,
        num_key_value_heads=NH,
        q_lora_rank=q_lora_rank,
        rope_interleave=rope_interleave,
        max_position_embeddings=64,
        rope_parameters=dict(rope_parameters),
        first_k_dense_replace=1,
        n_routed_experts=4,
        num_experts_per_tok=2,
        n_group=1,
        topk_group=1,
        attention_bias=attention_bias,
        **DIMS,
    )
    config._attn_implementation = "eager"
    torch.manual_seed(0)
    hf = DeepseekV3Attention(config, layer_idx=0).eval()
    with torch.no_grad():
        for name, p in hf.named_parameters():
            p.copy_(torch.randn(p.shape) * 0.2 + (1.0 if name.endswith("layernorm.weight") else 0.0))
    ours = mla_from_hf_config(config).eval()
    load_hf_attention_weights(ours, hf.state_dict())
    return hf, DeepseekV3RotaryEmbedding(config), ours


def hf_forward(hf, rotary, x):
    B, T, _ = x.shape
    cos, sin = rotary(x, torch.arange(T)[None].expand(B, -1))
    mask = torch.full((T, T), float("-inf")).triu(1)[None, None]  # (1, 1, T, T) additive causal mask
    return hf(x, (cos, sin), mask)[0]


@pytest.mark.parametrize("rope", ["default", "yarn"])
@pytest.mark.parametrize("q_lora_rank", [None, 20])
@pytest.mark.parametrize("rope_interleave", [False, True])
def test_matches_hugging_face(rope, q_lora_rank, rope_interleave):
    hf, rotary, ours = hf_pair(
        q_lora_rank=q_lora_rank, rope_interleave=rope_interleave, rope_parameters=YARN if rope == "yarn" else DEFAULT
    )
    assert ours.softmax_scale == pytest.approx(hf.scaling, rel=1e-12)
    if rope == "yarn":
        assert ours.pe.attention_factor == pytest.approx(rotary.attention_scaling, rel=1e-6)
    x = inputs(T=40, dtype=torch.float32)  # past original_max_position_embeddings: YaRN's ramp matters
    with torch.no_grad():
        ref = hf_forward(hf, rotary, x)
        torch.testing.assert_close(ours(x), ref, **F32)
        torch.testing.assert_close(decode(ours, x, [9] + [1] * 31), ref, **F32)


def test_matches_hugging_face_with_bias():
    hf, rotary, ours = hf_pair(q_lora_rank=20, rope_interleave=True, rope_parameters=DEFAULT, attention_bias=True)
    assert ours.c_proj.bias is not None and ours.kv_b_proj.bias is None
    x = inputs(T=10, dtype=torch.float32)
    with torch.no_grad():
        torch.testing.assert_close(ours(x), hf_forward(hf, rotary, x), **F32)


def test_load_hf_weights_checks():
    hf, _, ours = hf_pair(q_lora_rank=None, rope_interleave=False, rope_parameters=DEFAULT)
    state = hf.state_dict()
    nested = {f"model.layers.0.self_attn.{k}": v for k, v in state.items()} | {"model.norm.weight": torch.ones(C)}
    fresh = make_mla(None, dtype=torch.float32)
    load_hf_attention_weights(fresh, nested, prefix="model.layers.0.self_attn.")
    torch.testing.assert_close(fresh.c_proj.weight, state["o_proj.weight"], rtol=0, atol=0)
    with pytest.raises(ValueError, match="missing \\['kv_b_proj.weight'\\]"):
        load_hf_attention_weights(ours, {k: v for k, v in state.items() if k != "kv_b_proj.weight"})
    with pytest.raises(ValueError, match="q_a_proj"):
        load_hf_attention_weights(make_mla(None, q_lora_rank=20, dtype=torch.float32), state)
    with pytest.raises(ValueError, match="shape"):
        load_hf_attention_weights(ours, state | {"kv_b_proj.weight": torch.zeros(3, 3)})


# ---------------------------------------------------------------------------------------------
# in a model


def _tiny_model(**fields):
    from posenc.config import GPTConfig
    from posenc.model import GPT

    config = GPTConfig(
        n_layer=2,
        n_head=NH,
        n_embd=C,
        block_size=16,
        vocab_size=16,
        dropout=0.0,
        bias=False,
        attention="mla",
        pe="rope",
        **fields,
    )
    torch.manual_seed(0)
    return GPT(config)


def test_gpt_with_mla_caches_like_full():
    model = _tiny_model(kv_lora_rank=16, qk_rope_head_dim=4).double().eval()
    attn = model.blocks[0].attn
    assert isinstance(attn, MultiHeadLatentAttention) and attn.pe.head_dim == 4 and attn.kv_lora_rank == 16
    idx = torch.randint(0, 16, (2, 12), generator=torch.Generator().manual_seed(0))
    full, _ = model(idx)
    cache = model.new_cache()
    steps = [model(idx[:, :5], cache=cache)[0]] + [model(idx[:, t : t + 1], cache=cache)[0] for t in range(5, 12)]
    torch.testing.assert_close(torch.cat(steps, dim=1)[:, -7:], full[:, -7:], **F64)


def test_training_smoke():
    """Loss falls on random sequences with a pattern: every odd token repeats the one before it."""
    model = _tiny_model(q_lora_rank=16)
    gen = torch.Generator().manual_seed(0)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(30):
        first = torch.randint(0, 16, (16, 8), generator=gen)
        idx = torch.stack((first, first), dim=-1).flatten(1)  # (16, 16): a a b b c c ...
        _, loss = model(idx[:, :-1], targets=idx[:, 1:])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    # ~2.4 -> ~1.9 here (the copy half of the targets is learnable; the other half stays at ln 16)
    assert sum(losses[-5:]) / 5 < sum(losses[:5]) / 5 - 0.25, losses

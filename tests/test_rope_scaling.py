"""RoPE schedules (posenc.encodings.rope_scaling) and the long-context options of RotaryEmbedding.

References, each independent of the code under test:
- ``transformers.modeling_rope_utils.ROPE_INIT_FUNCTIONS`` (float32) on the configs of released
  models built as transformers config objects: frequencies and attention factor within 1e-6
  relative; Hugging Face's own rotary module for the cos/sin tables, attention factor included.
- a float64 rotation written pair by pair from the module's float64 frequencies, at positions up to
  1e6: the module's float32 rotation of float32 inputs must be within 1e-5 (max abs error, unit-scale
  inputs). A rotation by float32 angles (what Hugging Face does) misses that bound by orders of
  magnitude; the control test checks it, so the bound has power.
- rotary-embedding-torch's ``use_xpos`` for xPos, and the p-RoPE formula written out for p-RoPE.
Pure-math properties use float64 inputs; tolerances are stated where they are used.
"""

from __future__ import annotations

import math

import pytest
import rotary_embedding_torch
import torch
import transformers
from hypothesis import given
from hypothesis import strategies as st
from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

from posenc.encodings.rope import RotaryEmbedding, apply_rotary
from posenc.encodings.rope_scaling import (
    ROPE_SCALINGS,
    validate_scaling,
)

F64 = torch.float64

# Phi-3.5-mini-instruct's rope_scaling (48 = head_dim 96 / 2 factors each)
PHI35_LONG = [
    1.0800000429153442,
    1.1100000143051147,
    1.1399999856948853,
    1.340000033378601,
    1.5899999141693115,
    1.600000023841858,
    1.6200000047683716,
    2.620000123977661,
    3.2300000190734863,
    3.2300000190734863,
    4.789999961853027,
    7.400000095367432,
    7.700000286102295,
    9.09000015258789,
    12.199999809265137,
    17.670000076293945,
    24.46000099182129,
    28.57000160217285,
    30.420001983642578,
    30.840002059936523,
    32.590003967285156,
    32.93000411987305,
    42.320003509521484,
    44.96000289916992,
    50.340003967285156,
    50.45000457763672,
    57.55000305175781,
    57.93000411987305,
    58.21000289916992,
    60.1400032043457,
    62.61000442504883,
    62.62000274658203,
    62.71000289916992,
    63.1400032043457,
    63.1400032043457,
    63.77000427246094,
    63.93000411987305,
    63.96000289916992,
    63.970001220703125,
    64.02999877929688,
    64.06999969482422,
    64.08000183105469,
    64.12000274658203,
    64.41000366210938,
    64.4800033569336,
    64.51000213623047,
    64.52999877929688,
    64.83999633789062,
]
PHI35_SHORT = [
    1.0,
    1.0199999809265137,
    1.0299999713897705,
    1.0299999713897705,
    1.0499999523162842,
    1.0499999523162842,
    1.0499999523162842,
    1.0499999523162842,
    1.0499999523162842,
    1.0699999332427979,
    1.0999999046325684,
    1.1099998950958252,
    1.1599998474121094,
    1.1599998474121094,
    1.1699998378753662,
    1.2899998426437378,
    1.339999794960022,
    1.679999828338623,
    1.7899998426437378,
    1.8199998140335083,
    1.8499997854232788,
    1.8799997568130493,
    1.9099997282028198,
    1.9399996995925903,
    1.9899996519088745,
    2.0199997425079346,
    2.0199997425079346,
    2.0199997425079346,
    2.0199997425079346,
    2.0199997425079346,
    2.0199997425079346,
    2.0299997329711914,
    2.0299997329711914,
    2.0299997329711914,
    2.0299997329711914,
    2.0299997329711914,
    2.0299997329711914,
    2.0299997329711914,
    2.0299997329711914,
    2.0299997329711914,
    2.0799996852874756,
    2.0899996757507324,
    2.189999580383301,
    2.2199995517730713,
    2.5899994373321533,
    2.729999542236328,
    2.749999523162842,
    2.8399994373321533,
]


def hf_configs() -> dict[str, tuple[object, str | None]]:
    """name -> (transformers config of a released model, layer_type); sizes from their config.json."""
    tf = transformers
    return {
        "llama3.1-8b": (
            tf.LlamaConfig(
                hidden_size=4096,
                num_attention_heads=32,
                num_key_value_heads=8,
                max_position_embeddings=131072,
                rope_theta=500000.0,
                rope_scaling={
                    "factor": 8.0,
                    "low_freq_factor": 1.0,
                    "high_freq_factor": 4.0,
                    "original_max_position_embeddings": 8192,
                    "rope_type": "llama3",
                },
            ),
            None,
        ),
        "llama4-scout": (  # a step between the bands: high_freq_factor == low_freq_factor
            tf.Llama4TextConfig(
                hidden_size=5120,
                num_attention_heads=40,
                num_key_value_heads=8,
                head_dim=128,
                max_position_embeddings=10485760,
                rope_theta=500000.0,
                rope_scaling={
                    "factor": 16.0,
                    "high_freq_factor": 1.0,
                    "low_freq_factor": 1.0,
                    "original_max_position_embeddings": 8192,
                    "rope_type": "llama3",
                },
            ),
            None,
        ),
        "qwen2.5-7b-yarn": (
            tf.Qwen2Config(
                hidden_size=3584,
                num_attention_heads=28,
                num_key_value_heads=4,
                max_position_embeddings=131072,
                rope_theta=1000000.0,
                rope_scaling={
                    "factor": 4.0,
                    "original_max_position_embeddings": 32768,
                    "type": "yarn",
                },
            ),
            None,
        ),
        "deepseek-v3": (
            tf.DeepseekV3Config(
                max_position_embeddings=163840,
                rope_theta=10000.0,
                qk_rope_head_dim=64,
                rope_scaling={
                    "beta_fast": 32,
                    "beta_slow": 1,
                    "factor": 40,
                    "mscale": 1.0,
                    "mscale_all_dim": 1.0,
                    "original_max_position_embeddings": 4096,
                    "type": "yarn",
                },
            ),
            None,
        ),
        "gpt-oss-20b": (
            tf.GptOssConfig(
                head_dim=64,
                max_position_embeddings=131072,
                rope_theta=150000.0,
                rope_scaling={
                    "beta_fast": 32.0,
                    "beta_slow": 1.0,
                    "factor": 32.0,
                    "original_max_position_embeddings": 4096,
                    "rope_type": "yarn",
                    "truncate": False,
                },
            ),
            None,
        ),
        "phi3.5-mini": (
            tf.Phi3Config(
                hidden_size=3072,
                num_attention_heads=32,
                max_position_embeddings=131072,
                original_max_position_embeddings=4096,
                rope_theta=10000.0,
                rope_scaling={
                    "long_factor": PHI35_LONG,
                    "short_factor": PHI35_SHORT,
                    "type": "longrope",
                },
            ),
            None,
        ),
        "gemma3-4b-global": (
            tf.Gemma3TextConfig(
                head_dim=256,
                max_position_embeddings=131072,
                rope_parameters={
                    "full_attention": {
                        "rope_type": "linear",
                        "factor": 8.0,
                        "rope_theta": 1000000.0,
                    },
                    "sliding_attention": {
                        "rope_type": "default",
                        "rope_theta": 10000.0,
                    },
                },
            ),
            "full_attention",
        ),
        "gemma3-4b-local": (tf.Gemma3TextConfig(head_dim=256), "sliding_attention"),
        "gemma4-global": (
            tf.Gemma4TextConfig(),
            "full_attention",
        ),  # proportional, p = 0.25
        "llama-dynamic": (
            tf.LlamaConfig(
                hidden_size=2048,
                num_attention_heads=16,
                max_position_embeddings=4096,
                rope_scaling={"rope_type": "dynamic", "factor": 2.0},
                rope_theta=10000.0,
            ),
            None,
        ),
    }


HF_CASES = list(hf_configs())
SEQ_LENS = [None, 1, 4096, 4097, 8192, 32769, 200_000, 1_000_001]


def hf_inv_freq(config, layer_type, seq_len):
    params = config.rope_parameters[layer_type] if layer_type else config.rope_parameters
    rope_type = params["rope_type"]
    if rope_type == "default":
        head_dim = config.head_dim
        base = params["rope_theta"]
        return 1.0 / (base ** (torch.arange(0, head_dim, 2, dtype=torch.float) / head_dim)), 1.0
    kwargs = {"layer_type": layer_type} if layer_type else {}
    return ROPE_INIT_FUNCTIONS[rope_type](config, None, seq_len=seq_len, **kwargs)


def test_every_hugging_face_type_is_covered():
    # the installed transformers has every type posenc implements, so none is tested by formula alone
    assert set(ROPE_SCALINGS) - {"default"} <= set(ROPE_INIT_FUNCTIONS)
    types = {
        hf_configs()[n][0].rope_parameters.get(hf_configs()[n][1], hf_configs()[n][0].rope_parameters)["rope_type"]
        for n in HF_CASES
    }
    assert types == set(ROPE_SCALINGS)


@pytest.mark.parametrize("name", HF_CASES)
@pytest.mark.parametrize("seq_len", SEQ_LENS)
def test_frequencies_and_attention_factor_match_hugging_face(name, seq_len):
    config, layer_type = hf_configs()[name]
    rope = RotaryEmbedding.from_hf_config(config, layer_type, cache_len=0)
    hf, hf_factor = hf_inv_freq(config, layer_type, seq_len)
    ours = rope.frequencies(seq_len)
    assert ours.dtype == F64 and ours.shape == hf.shape
    torch.testing.assert_close(ours, hf.double(), rtol=1e-6, atol=0)
    assert rope.attention_factor == pytest.approx(float(hf_factor), rel=1e-6)
    # the same from the config.json-style dict
    again = RotaryEmbedding.from_hf_config(config.to_dict(), layer_type, cache_len=0)
    if name != "gemma4-global":  # its per-layer head_dim lives on the config object only
        torch.testing.assert_close(again.frequencies(seq_len), ours, rtol=0, atol=0)


def test_length_dependent_schedules_really_change_with_the_length():
    for name, short_len in (("phi3.5-mini", 4096), ("llama-dynamic", 4096)):
        rope = RotaryEmbedding.from_hf_config(hf_configs()[name][0], cache_len=0)
        assert rope.length_dependent
        assert torch.equal(rope.frequencies(short_len), rope.frequencies(None))
        assert not torch.equal(rope.frequencies(short_len + 1), rope.frequencies(None))
        assert (rope.frequencies(2 * short_len) - rope.frequencies(None)).abs().max() > 1e-3
    static = RotaryEmbedding.from_hf_config(hf_configs()["llama3.1-8b"][0], cache_len=0)
    assert not static.length_dependent


def test_phi3_v4_config_json_reads_top_level_original_length():
    # Phi-3's config.json keeps original_max_position_embeddings next to rope_scaling, not in it
    raw = {
        "hidden_size": 3072,
        "num_attention_heads": 32,
        "max_position_embeddings": 131072,
        "original_max_position_embeddings": 4096,
        "rope_theta": 10000.0,
        "rope_scaling": {
            "long_factor": PHI35_LONG,
            "short_factor": PHI35_SHORT,
            "type": "longrope",
        },
    }
    rope = RotaryEmbedding.from_hf_config(raw, cache_len=0)
    config = hf_configs()["phi3.5-mini"][0]
    for seq_len in (None, 4097):
        hf, factor = ROPE_INIT_FUNCTIONS["longrope"](config, None, seq_len=seq_len)
        torch.testing.assert_close(rope.frequencies(seq_len), hf.double(), rtol=1e-6, atol=0)
        assert rope.attention_factor == pytest.approx(factor, rel=1e-6) and factor > 1.1


def test_qwen2_vl_v4_config_json_reads_the_legacy_mrope_type():
    # Qwen2-VL's and Qwen2.5-VL's config.json name M-RoPE as a type; Hugging Face reads it as "default"
    raw = {
        "hidden_size": 3584,
        "num_attention_heads": 28,
        "max_position_embeddings": 32768,
        "rope_theta": 1000000.0,
        "rope_scaling": {"type": "mrope", "mrope_section": [16, 24, 24]},
    }
    v5 = raw | {"rope_scaling": {"rope_type": "default", "mrope_section": [16, 24, 24]}}
    for config in (raw, transformers.Qwen2VLConfig(**raw).text_config):  # as saved, and as transformers reads it
        rope = RotaryEmbedding.from_hf_config(config, cache_len=0)
        expected = RotaryEmbedding.from_hf_config(v5, cache_len=0)
        assert rope.rope_type == "default" and rope.config.mrope_section == (16, 24, 24)
        torch.testing.assert_close(rope.frequencies(None), expected.frequencies(None), rtol=0, atol=0)


def test_per_layer_configs_need_a_layer_type():
    config, _ = hf_configs()["gemma3-4b-global"]
    with pytest.raises(ValueError, match="sliding_attention"):
        RotaryEmbedding.from_hf_config(config)
    with pytest.raises(ValueError, match="'chunked'"):
        RotaryEmbedding.from_hf_config(config, "chunked")


@pytest.mark.parametrize("name", ["qwen2.5-7b-yarn", "phi3.5-mini", "llama3.1-8b", "gemma4-global"])
def test_tables_match_hugging_face_rotary_module_with_attention_factor(name):
    from transformers.models.llama.modeling_llama import LlamaRotaryEmbedding

    config, layer_type = hf_configs()[name]
    positions = torch.arange(0, 4000, 7)[None]  # (1, T): small enough for float32 angles
    rope = RotaryEmbedding.from_hf_config(config, layer_type, cache_len=0)
    if layer_type is None:
        hf_cos, hf_sin = LlamaRotaryEmbedding(config)(torch.zeros(1), positions)
    else:  # Hugging Face's module for one layer type: frequencies from ROPE_INIT_FUNCTIONS, same formula
        inv, factor = hf_inv_freq(config, layer_type, None)
        angles = torch.cat((positions[0, :, None].float() * inv,) * 2, dim=-1)
        hf_cos, hf_sin = angles.cos()[None] * factor, angles.sin()[None] * factor
    cos, sin = rope.cos_sin(positions, 0, positions.device)
    # float32 angles at positions < 4000 are within 4000 * 2**-24 rad
    torch.testing.assert_close(cos, hf_cos, rtol=0, atol=5e-4)
    torch.testing.assert_close(sin, hf_sin, rtol=0, atol=5e-4)
    if rope.attention_factor != 1.0:
        assert float(cos[0, 0, 0]) == pytest.approx(rope.attention_factor, rel=1e-6)


# ---------------------------------------------------------------------------------------------
# the rotation at positions up to 1e6


def pairs(rotary_dim: int, layout: str) -> list[tuple[int, int]]:
    h = rotary_dim // 2
    return [(i, i + h) for i in range(h)] if layout == "half" else [(2 * i, 2 * i + 1) for i in range(h)]


def rotate64(
    x: torch.Tensor,
    positions: torch.Tensor,
    inv_freq: torch.Tensor,
    factor: float,
    layout: str,
) -> torch.Tensor:
    """Pair i at position m: [[cos, -sin], [sin, cos]](m w_i) * factor, all float64. x: (..., T, hs)."""
    x = x.double()
    out = x.clone()
    angles = positions.double()[:, None] * inv_freq.double()  # (T, rd/2)
    cos, sin = angles.cos() * factor, angles.sin() * factor
    for i, (a, b) in enumerate(pairs(2 * inv_freq.numel(), layout)):
        out[..., a] = x[..., a] * cos[:, i] - x[..., b] * sin[:, i]
        out[..., b] = x[..., a] * sin[:, i] + x[..., b] * cos[:, i]
    return out


PRECISION = {  # name -> (head_dim, rope_base, scaling): every schedule, small heads
    "default": (32, 10000.0, None),
    "linear": (32, 1e6, {"rope_type": "linear", "factor": 8.0}),
    "dynamic": (
        32,
        10000.0,
        {"rope_type": "dynamic", "factor": 4.0, "max_position_embeddings": 4096},
    ),
    "yarn": (
        32,
        150000.0,
        {
            "rope_type": "yarn",
            "factor": 32.0,
            "original_max_position_embeddings": 4096,
            "truncate": False,
        },
    ),
    "yarn-mscale": (
        32,
        10000.0,
        {
            "rope_type": "yarn",
            "factor": 40.0,
            "original_max_position_embeddings": 4096,
            "mscale": 1.0,
            "mscale_all_dim": 0.707,
        },
    ),
    "longrope": (
        32,
        10000.0,
        {
            "rope_type": "longrope",
            "original_max_position_embeddings": 4096,
            "short_factor": PHI35_SHORT[::3],
            "long_factor": PHI35_LONG[::3],
            "factor": 32.0,
        },
    ),
    "llama3": (
        32,
        500000.0,
        {
            "rope_type": "llama3",
            "factor": 8.0,
            "low_freq_factor": 1.0,
            "high_freq_factor": 4.0,
            "original_max_position_embeddings": 8192,
        },
    ),
    "proportional": (
        32,
        1e6,
        {"rope_type": "proportional", "partial_rotary_factor": 0.25},
    ),
}
MAX_POS = 1_000_000
BOUND = 1e-5
far_positions = torch.cat(
    (
        torch.arange(0, 16),
        torch.randint(0, MAX_POS, (96,), generator=torch.Generator().manual_seed(0)),
        torch.tensor([999, 9_999, 99_999, MAX_POS - 1, MAX_POS]),
    )
)


def unit_inputs(T: int, head_dim: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(2, 2, T, head_dim, generator=torch.Generator().manual_seed(seed))  # (B, nh, T, hs) float32


def max_error(
    rope: RotaryEmbedding,
    x: torch.Tensor,
    out: torch.Tensor,
    positions: torch.Tensor,
    seq_len: int,
) -> float:
    ref = rotate64(x, positions, rope.frequencies(seq_len), rope.attention_factor, rope.layout)
    return float((out.double() - ref).abs().max())


MODES = {
    "plain": lambda rope: rope,
    "module-to-bf16": lambda rope: rope.to(torch.bfloat16),
    "autocast-bf16": "autocast",
}


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("layout", ["half", "interleaved"])
@pytest.mark.parametrize("name", PRECISION)
def test_rotation_within_1e_5_of_float64_up_to_a_million(name, layout, mode):
    head_dim, base, scaling = PRECISION[name]
    rope = RotaryEmbedding(head_dim, base=base, layout=layout, scaling=scaling, cache_len=64)
    if MODES[mode] != "autocast":
        rope = MODES[mode](rope)
    q, k = (
        unit_inputs(len(far_positions), head_dim, 1),
        unit_inputs(len(far_positions), head_dim, 2),
    )
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=mode == "autocast"):
        rq, rk = rope(q, k, far_positions)
    assert rq.dtype == torch.float32
    seq_len = MAX_POS + 1
    assert max_error(rope, q, rq, far_positions, seq_len) <= BOUND
    assert max_error(rope, k, rk, far_positions, seq_len) <= BOUND


@pytest.mark.parametrize("name", PRECISION)
def test_cached_tables_within_1e_5_of_float64_up_to_a_million(name):
    # a table covering every position up to 1e6 and a sequence that long: the cached path end to end
    _, base, scaling = PRECISION[name]
    if scaling is not None and scaling["rope_type"] == "longrope":
        scaling = {
            **scaling,
            "short_factor": scaling["short_factor"][:4],
            "long_factor": scaling["long_factor"][:4],
        }
    head_dim = 8
    rope = RotaryEmbedding(head_dim, base=base, scaling=scaling, cache_len=MAX_POS + 1).to(torch.bfloat16)
    assert rope.cos_cached.dtype == torch.float32
    x = torch.randn(1, 1, MAX_POS + 1, head_dim, generator=torch.Generator().manual_seed(3))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = rope.rotate_queries(x)
    rows = far_positions
    # a length-dependent schedule at T = 1e6 + 1 is past its short regime: computed, not cached
    assert max_error(rope, x[..., rows, :], out[..., rows, :], rows, MAX_POS + 1) <= BOUND


def test_control_float32_angles_miss_the_bound():
    # Hugging Face's recipe (float32 frequencies times float32 positions) at the same positions
    head_dim, base, scaling = PRECISION["llama3"]
    rope = RotaryEmbedding(head_dim, base=base, scaling=scaling, cache_len=0)
    x = unit_inputs(len(far_positions), head_dim)
    angles = far_positions.float()[:, None] * rope.inv_freq  # (T, rd/2) float32
    cos, sin = torch.cat((angles.cos(),) * 2, -1), torch.cat((angles.sin(),) * 2, -1)
    sloppy = apply_rotary(x, cos, sin, "half")
    assert max_error(rope, x, sloppy, far_positions, MAX_POS + 1) > 100 * BOUND


# ---------------------------------------------------------------------------------------------
# properties


STATIC = {n: v for n, v in PRECISION.items() if v[2] is None or ROPE_SCALINGS[v[2]["rope_type"]].length_key is None}
positions_st = st.integers(0, MAX_POS)


@given(
    name=st.sampled_from(sorted(STATIC)),
    layout=st.sampled_from(["half", "interleaved"]),
    m=positions_st,
    n=positions_st,
    s=st.integers(0, MAX_POS),
    seed=st.integers(0, 2**32 - 1),
)
def test_dot_product_depends_only_on_relative_position(name, layout, m, n, s, seed):
    head_dim, base, scaling = STATIC[name]
    rope = RotaryEmbedding(head_dim, base=base, layout=layout, scaling=scaling, cache_len=0)
    g = torch.Generator().manual_seed(seed)
    q, k = torch.randn(2, 1, 1, 1, head_dim, dtype=F64, generator=g)

    def dot(a: int, b: int) -> float:
        return float((rope.rotate_queries(q, torch.tensor([a])) * rope.rotate_keys(k, torch.tensor([b]))).sum())

    # each float32 table entry is within ~3e-7 of exact at any position (angles reduced in float64)
    tol = 4 * 1e-6 * rope.attention_factor**2 * float(q.norm() * k.norm())
    assert abs(dot(m, n) - dot(m + s, n + s)) <= tol


FACTOR_ONE = {  # rope_type -> a dict with scaling factor 1 (dynamic is excluded: at factor 1 its
    # base still grows with seq_len / max_position_embeddings, as in Hugging Face)
    "linear": {"rope_type": "linear", "factor": 1.0},
    "yarn": {
        "rope_type": "yarn",
        "factor": 1.0,
        "original_max_position_embeddings": 4096,
    },
    "llama3": {
        "rope_type": "llama3",
        "factor": 1.0,
        "low_freq_factor": 1.0,
        "high_freq_factor": 4.0,
        "original_max_position_embeddings": 8192,
    },
    "longrope": {
        "rope_type": "longrope",
        "factor": 1.0,
        "original_max_position_embeddings": 4096,
        "short_factor": [1.0] * 8,
        "long_factor": [1.0] * 8,
    },
    "proportional": {
        "rope_type": "proportional",
        "factor": 1.0,
        "partial_rotary_factor": 1.0,
    },
}


@given(
    rope_type=st.sampled_from(sorted(FACTOR_ONE)),
    base=st.sampled_from([100.0, 10000.0, 1e6]),
    start=st.integers(0, MAX_POS),
    seq_len=st.sampled_from([None, 100, 5000, 2 * MAX_POS]),
    seed=st.integers(0, 2**32 - 1),
)
def test_scaling_factor_one_is_no_scaling(rope_type, base, start, seq_len, seed):
    plain = RotaryEmbedding(16, base=base, cache_len=0)
    scaled = RotaryEmbedding(16, base=base, scaling=FACTOR_ONE[rope_type], cache_len=0)
    assert scaled.attention_factor == 1.0
    torch.testing.assert_close(scaled.frequencies(seq_len), plain.frequencies(), rtol=1e-15, atol=0)
    x = torch.randn(1, 2, 4, 16, dtype=F64, generator=torch.Generator().manual_seed(seed))
    pos = torch.arange(start, start + 4)
    a = scaled(x, x, pos, seq_len=seq_len if seq_len and seq_len > start + 4 else None)[0]
    torch.testing.assert_close(a, plain(x, x, pos)[0], rtol=0, atol=1e-6)


def test_a_real_factor_is_not_the_identity():
    # the property above has power: factor 8 moves the frequencies and the rotation
    plain = RotaryEmbedding(16, cache_len=0)
    for rope_type, params in FACTOR_ONE.items():
        params = {**params, "factor": 8.0}
        if rope_type == "longrope":
            params["long_factor"] = params["short_factor"] = [2.0] * 8
        if rope_type == "proportional":
            params["partial_rotary_factor"] = 0.5
        scaled = RotaryEmbedding(16, scaling=params, cache_len=0)
        assert ((scaled.frequencies() - plain.frequencies()).abs() / plain.frequencies()).max() > 0.4, rope_type


# ---------------------------------------------------------------------------------------------
# length-dependent schedules: cached decoding equals the uncached forward


LENGTH_CASES = {
    "longrope": {
        "rope_type": "longrope",
        "original_max_position_embeddings": 12,
        "short_factor": [1.0, 1.5, 2.0, 4.0],
        "long_factor": [1.0, 3.0, 9.0, 27.0],
        "factor": 4.0,
    },
    "dynamic": {"rope_type": "dynamic", "factor": 4.0, "max_position_embeddings": 12},
    "xpos": None,
}


@pytest.mark.parametrize("name", LENGTH_CASES)
@pytest.mark.parametrize("layout", ["half", "interleaved"])
def test_rerotated_cache_equals_uncached_forward(name, layout):
    rope = RotaryEmbedding(
        8,
        layout=layout,
        scaling=LENGTH_CASES[name],
        xpos=name == "xpos",
        xpos_scale_base=8.0,
        cache_len=16,
    )
    assert rope.length_dependent
    q, k = unit_inputs(24, 8, 1).double(), unit_inputs(24, 8, 2).double()
    stale = []
    for S in range(1, 25):  # decode step S: one new query, all S raw keys re-rotated with seq_len=S
        full_q, full_k = rope(q[..., :S, :], k[..., :S, :])
        step_q = rope.rotate_queries(q[..., S - 1 : S, :], torch.tensor([S - 1]), seq_len=S)
        step_k = rope.rotate_keys(k[..., :S, :], torch.arange(S), seq_len=S)
        torch.testing.assert_close(
            step_q @ step_k.transpose(-1, -2),
            full_q[..., -1:, :] @ full_k.transpose(-1, -2),
            rtol=0,
            atol=1e-12,
        )
        # keys rotated once at their own step (a cache of rotated keys) give other scores
        old = torch.cat(
            [rope.rotate_keys(k[..., j : j + 1, :], torch.tensor([j]), seq_len=j + 1) for j in range(S)],
            -2,
        )
        stale.append(float((step_q @ old.transpose(-1, -2) - step_q @ step_k.transpose(-1, -2)).abs().max()))
    if name != "xpos":  # xPos's centre shift cancels in q.k; the schedules' frequency change does not
        assert max(stale) > 1e-3


def test_seq_len_defaults_to_largest_position_plus_one_and_refuses_less():
    rope = RotaryEmbedding(8, scaling=LENGTH_CASES["dynamic"], cache_len=4)
    x = unit_inputs(3, 8).double()
    pos = torch.tensor([[0, 1, 2], [30, 31, 32]])
    torch.testing.assert_close(rope(x, x, pos)[0], rope(x, x, pos, seq_len=33)[0], rtol=0, atol=0)
    assert (rope(x, x, pos, seq_len=100)[0] - rope(x, x, pos)[0]).abs().max() > 1e-3
    with pytest.raises(ValueError, match="seq_len=20"):
        rope(x, x, pos, seq_len=20)


def test_static_schedules_ignore_seq_len():
    rope = RotaryEmbedding(8, scaling=PRECISION["llama3"][2], cache_len=4)
    x = unit_inputs(3, 8)
    assert torch.equal(rope(x, x)[0], rope(x, x, seq_len=10**6)[0])


# ---------------------------------------------------------------------------------------------
# xPos and p-RoPE


@pytest.mark.parametrize(
    "head_dim,rotary_dim,scale_base,T",
    [(16, 16, 512.0, 64), (12, 8, 16.0, 37), (8, 8, 4.0, 10)],
)
def test_xpos_matches_rotary_embedding_torch(head_dim, rotary_dim, scale_base, T):
    reference = rotary_embedding_torch.RotaryEmbedding(dim=rotary_dim, use_xpos=True, xpos_scale_base=scale_base)
    q, k = unit_inputs(T, head_dim, 1), unit_inputs(T, head_dim, 2)
    ref_q, ref_k = reference.rotate_queries_and_keys(q, k)
    rope = RotaryEmbedding(
        head_dim,
        layout="interleaved",
        rotary_dim=rotary_dim,
        xpos=True,
        xpos_scale_base=scale_base,
        cache_len=T,
    )
    rq, rk = rope(q, k)
    torch.testing.assert_close(rq, ref_q, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(rk, ref_k, rtol=1e-5, atol=1e-5)
    plain_q = RotaryEmbedding(head_dim, layout="interleaved", rotary_dim=rotary_dim, cache_len=T)(q, k)[0]
    assert (plain_q - ref_q).abs().max() > 1e-2  # xPos really scales


def p_rope_reference(x: torch.Tensor, positions: torch.Tensor, p: float, base: float, rotary_dim: int) -> torch.Tensor:
    """Barbero et al. 2024: g_i = base^(-2i/d) for i < floor(p d / 2), else 0; half layout, python floats."""
    out = x.double().clone()
    kept = math.floor(p * rotary_dim / 2)
    for i, (a, b) in enumerate(pairs(rotary_dim, "half")):
        g = base ** (-2.0 * i / rotary_dim) if i < kept else 0.0
        for t, m in enumerate(positions.tolist()):
            c, s = math.cos(m * g), math.sin(m * g)
            xa, xb = x[..., t, a].double(), x[..., t, b].double()
            out[..., t, a], out[..., t, b] = xa * c - xb * s, xa * s + xb * c
    return out


@pytest.mark.parametrize("p", [0.25, 0.5, 0.75, 1.0])
def test_p_rope_matches_formula_and_proportional(p):
    x = unit_inputs(6, 16).double()
    pos = torch.tensor([0, 5, 77, 4096, 123_456, MAX_POS])
    rope = RotaryEmbedding(16, base=10000.0, p_rope=p, cache_len=0)
    out = rope(x, x, pos)[0]
    torch.testing.assert_close(out, p_rope_reference(x, pos, p, 10000.0, 16), rtol=0, atol=1e-6)
    kept = int(p * 16 // 2)
    dropped = [c for i, pair in enumerate(pairs(16, "half")) if i >= kept for c in pair]
    assert torch.equal(out[..., dropped], x[..., dropped])  # the dropped pairs carry no position
    proportional = RotaryEmbedding(
        16,
        scaling={"rope_type": "proportional", "partial_rotary_factor": p},
        cache_len=0,
    )
    assert torch.equal(proportional.frequencies(), rope.frequencies())
    if p < 1:
        assert not torch.allclose(out, RotaryEmbedding(16, cache_len=0)(x, x, pos)[0], atol=1e-2)


# ---------------------------------------------------------------------------------------------
# validation


BAD_SCALINGS = [  # (dict, key named in the error, value named in the error)
    (
        {
            "rope_type": "yarn",
            "factor": 4.0,
            "original_max_position_embeddings": 4096,
            "beta_fsat": 32,
        },
        "beta_fsat",
        "32",
    ),
    ({"rope_type": "ntk-by-parts", "factor": 2.0}, "rope_type", "'ntk-by-parts'"),
    ({"rope_type": "linear"}, "factor", "'linear'"),
    ({"type": "yarn", "factor": 4.0}, "original_max_position_embeddings", "4.0"),
    ({"rope_type": "linear", "factor": 0.5}, "factor", "0.5"),
    ({"rope_type": "linear", "factor": "8"}, "factor", "'8'"),
    ({"rope_type": "linear", "factor": True}, "factor", "True"),
    (
        {"rope_type": "dynamic", "factor": float("nan"), "max_position_embeddings": 10},
        "factor",
        "nan",
    ),
    ({"rope_type": "dynamic", "factor": 2.0}, "max_position_embeddings", "2.0"),
    (
        {
            "rope_type": "yarn",
            "factor": 4.0,
            "original_max_position_embeddings": 4096,
            "beta_fast": 1,
            "beta_slow": 32,
        },
        "beta_fast",
        "1",
    ),
    (
        {
            "rope_type": "yarn",
            "factor": 4.0,
            "original_max_position_embeddings": 4096.0,
        },
        "original_max_position_embeddings",
        "4096.0",
    ),
    (
        {
            "rope_type": "yarn",
            "factor": 4.0,
            "original_max_position_embeddings": 4096,
            "truncate": "no",
        },
        "truncate",
        "'no'",
    ),
    (
        {
            "rope_type": "yarn",
            "factor": 4.0,
            "original_max_position_embeddings": 4096,
            "attention_factor": -1.0,
        },
        "attention_factor",
        "-1.0",
    ),
    (
        {"rope_type": "yarn", "factor": None, "original_max_position_embeddings": 4096},
        "max_position_embeddings",
        "None",
    ),
    (
        {
            "rope_type": "llama3",
            "factor": 8.0,
            "low_freq_factor": 4.0,
            "high_freq_factor": 1.0,
            "original_max_position_embeddings": 8192,
        },
        "high_freq_factor",
        "1.0",
    ),
    (
        {
            "rope_type": "llama3",
            "factor": 8.0,
            "low_freq_factor": 1.0,
            "high_freq_factor": 4.0,
            "original_max_position_embeddings": 8192,
            "max_position_embeddings": 4096,
        },
        "original_max_position_embeddings",
        "8192",
    ),
    (
        {
            "rope_type": "longrope",
            "original_max_position_embeddings": 4096,
            "short_factor": "1,2",
            "long_factor": [1.0],
        },
        "short_factor",
        "'1,2'",
    ),
    (
        {
            "rope_type": "longrope",
            "original_max_position_embeddings": 4096,
            "short_factor": [1.0],
            "long_factor": [-2.0],
        },
        "long_factor",
        "-2.0",
    ),
    (
        {
            "rope_type": "longrope",
            "original_max_position_embeddings": 4096,
            "short_factor": [1.0, 1.0],
            "long_factor": [1.0],
        },
        "long_factor",
        "[1.0]",
    ),
    ({"rope_type": "yarn", "type": "linear", "factor": 2.0}, "type", "'linear'"),
    (
        {"rope_type": "linear", "factor": 2.0, "partial_rotary_factor": 1.5},
        "partial_rotary_factor",
        "1.5",
    ),
    ({"rope_type": "default", "rope_theta": -1.0}, "rope_theta", "-1.0"),
    (
        {"rope_type": "default", "mrope_section": [16, 24, 24]},
        "mrope_section",
        "[16, 24, 24]",
    ),
]


@pytest.mark.parametrize(
    "params,key,value",
    BAD_SCALINGS,
    ids=[f"{i}-{c[1]}" for i, c in enumerate(BAD_SCALINGS)],
)
def test_bad_scaling_dicts_raise_naming_key_and_value(params, key, value):
    with pytest.raises(ValueError) as err:
        validate_scaling(params)
    assert key in str(err.value) and value in str(err.value), str(err.value)
    with pytest.raises(ValueError):  # and the module refuses it at construction
        RotaryEmbedding(8, scaling=params)


def test_good_dicts_normalise_with_hugging_face_defaults():
    out = validate_scaling({"type": "yarn", "factor": 4.0, "original_max_position_embeddings": 32768})
    assert out == {
        "rope_type": "yarn",
        "factor": 4.0,
        "original_max_position_embeddings": 32768,
        "attention_factor": None,
        "beta_fast": 32.0,
        "beta_slow": 1.0,
        "mscale": None,
        "mscale_all_dim": None,
        "truncate": True,
    }
    assert validate_scaling(None) == {"rope_type": "default"}


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (
            {"scaling": {"rope_type": "default", "rope_theta": 500000.0}},
            "rope_theta=500000.0",
        ),
        (
            {
                "rotary_dim": 8,
                "scaling": {"rope_type": "default", "partial_rotary_factor": 0.25},
            },
            "rotary_dim=8",
        ),
        ({"p_rope": 0.0}, "p_rope=0.0"),
        ({"p_rope": 1.5}, "p_rope=1.5"),
        (
            {
                "p_rope": 0.5,
                "scaling": {"rope_type": "proportional", "partial_rotary_factor": 0.5},
            },
            "p_rope=0.5",
        ),
        ({"xpos": True, "xpos_scale_base": 0}, "xpos_scale_base=0"),
        (
            {
                "scaling": {
                    "rope_type": "longrope",
                    "original_max_position_embeddings": 64,
                    "short_factor": [1.0] * 3,
                    "long_factor": [1.0] * 3,
                }
            },
            "short_factor",
        ),
        (
            {
                "scaling": {
                    "rope_type": "dynamic",
                    "factor": 2.0,
                    "max_position_embeddings": 64,
                },
                "rotary_dim": 2,
            },
            "rotary_dim",
        ),
    ],
)
def test_module_refuses_inconsistent_options(kwargs, match):
    with pytest.raises(ValueError, match=match):
        RotaryEmbedding(16, **kwargs)


def test_wrong_types_raise_type_error():
    with pytest.raises(TypeError, match="xpos=1"):
        RotaryEmbedding(16, xpos=1)
    with pytest.raises(TypeError, match="'linear'"):
        validate_scaling("linear")


def test_partial_rotary_factor_sets_rotary_dim_and_build_forwards_options():
    from posenc.encodings.base import ModelDims

    rope = RotaryEmbedding(16, scaling={"rope_type": "linear", "factor": 2.0, "partial_rotary_factor": 0.5})
    assert rope.rotary_dim == 8
    built = RotaryEmbedding.build(
        ModelDims(n_embd=64, n_head=4, block_size=32),
        base=500000.0,
        layout="interleaved",
        rotary_dim=8,
        scaling=PRECISION["llama3"][2],
        p_rope=0.5,
    )
    assert (built.rotary_dim, built.cache_len, built.rope_type, built.p_rope) == (
        8,
        32,
        "llama3",
        0.5,
    )
    assert built.state_dict() == {}


# ---------------------------------------------------------------------------------------------
# compile


class _Attn(torch.nn.Module):
    def __init__(self, rope: RotaryEmbedding) -> None:
        super().__init__()
        self.rope = rope

    def forward(self, q, k, positions=None, seq_len=None):
        q, k = self.rope(q, k, positions, seq_len=seq_len)
        return (q @ k.transpose(-1, -2)).softmax(-1)


@pytest.mark.parametrize(
    "name,with_positions",
    [
        ("default", False),
        ("default", True),
        ("llama3", True),
        ("dynamic", False),
        ("longrope", True),
    ],
)
def test_no_graph_break_when_T_changes(name, with_positions):
    torch._dynamo.reset()
    head_dim, base, scaling = PRECISION[name]
    model = _Attn(RotaryEmbedding(head_dim, base=base, scaling=scaling, cache_len=64))
    compiled = torch.compile(model, backend="aot_eager", fullgraph=True, dynamic=True)
    for T in (5, 70):  # inside and beyond the cache
        q, k = unit_inputs(T, head_dim, 1), unit_inputs(T, head_dim, 2)
        positions = torch.arange(4090, 4090 + T) if with_positions else None
        explanation = torch._dynamo.explain(model)(q, k, positions)
        assert explanation.graph_break_count == 0, explanation.break_reasons
        torch.testing.assert_close(compiled(q, k, positions), model(q, k, positions), rtol=1e-5, atol=1e-6)

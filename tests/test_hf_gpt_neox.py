"""GPT.from_hf for GPT-NeoX / Pythia against Hugging Face's own GPTNeoXForCausalLM (a tiny random
config, no download): partial rotary (Pythia's 0.25), the parallel residual and the sequential one,
the exact and the tanh GELU, the fused per-head qkv projection with and without its bias, and tied
or separate output embeddings. Every parameter is moved off its initial value; logits agree to 2e-4
in float32 past the context, and greedy cached generation equals HF's."""

from __future__ import annotations

import pytest
import torch
from _hf_helpers import assert_greedy_generation_equal, assert_logits_match, perturbed

from posenc import GPT

transformers = pytest.importorskip("transformers")

BASE = dict(
    vocab_size=101,
    hidden_size=32,
    intermediate_size=80,
    num_hidden_layers=3,
    num_attention_heads=4,
    max_position_embeddings=32,
    rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "partial_rotary_factor": 0.25},
)
CASES = {
    "pythia": {},
    "sequential residual": {"use_parallel_residual": False},
    "tanh gelu, no attention bias": {"hidden_act": "gelu_new", "attention_bias": False},
    "full rotary, tied": {
        "rope_parameters": {"rope_type": "default", "rope_theta": 500.0, "partial_rotary_factor": 1.0},
        "tie_word_embeddings": True,
    },
    "linear scaling": {
        "rope_parameters": {
            "rope_type": "linear",
            "factor": 2.0,
            "rope_theta": 10000.0,
            "partial_rotary_factor": 0.5,
        }
    },
}


def hf_neox(**overrides):
    torch.manual_seed(0)
    model = transformers.GPTNeoXForCausalLM(transformers.GPTNeoXConfig(**(BASE | overrides))).eval()
    return perturbed(model)


@pytest.mark.parametrize("case", sorted(CASES))
def test_gpt_neox_logits_match(case) -> None:
    hf = hf_neox(**CASES[case])
    ours = GPT.from_hf(hf).eval()
    parallel = CASES[case].get("use_parallel_residual", True)
    assert all(layer.block.parallel == parallel for layer in ours.config.layers)
    assert type(ours.config).from_dict(ours.config.to_dict()) == ours.config  # the block layout is saved
    assert_logits_match(ours, hf, 101, 48)  # past the context (32)


@pytest.mark.parametrize("case", ["pythia", "sequential residual"])
def test_gpt_neox_greedy_generation_equals_hf(case) -> None:
    hf = hf_neox(**CASES[case])
    assert_greedy_generation_equal(GPT.from_hf(hf).eval(), hf, 101)


def test_an_activation_posenc_does_not_have_is_refused() -> None:
    with pytest.raises(ValueError, match="hidden_act"):
        GPT.from_hf(hf_neox(hidden_act="relu"))

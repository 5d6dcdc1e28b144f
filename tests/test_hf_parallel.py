"""GPT.from_hf for GPT-J and Phi against Hugging Face's own models (tiny random configs, no
download): parallel blocks with one LayerNorm, GPT-J's interleaved partial rotary and Phi's half
layout with GQA, tanh GELU MLPs, a bias on the output head. Every parameter is moved off its
initial value; logits agree to 2e-4 in float32 (past the context for Phi; GPT-J's own table ends
at its context), and greedy cached generation
equals HF's."""

from __future__ import annotations

import pytest
import torch
from _hf_helpers import assert_greedy_generation_equal, assert_logits_match, perturbed

from posenc import GPT

transformers = pytest.importorskip("transformers")

FAMILIES = {
    "gptj": lambda **o: transformers.GPTJForCausalLM(
        transformers.GPTJConfig(
            **(dict(vocab_size=101, n_embd=32, n_layer=3, n_head=4, rotary_dim=4, n_positions=64, n_inner=72) | o)
        )
    ),
    "gptj full rotary": lambda **o: FAMILIES["gptj"](rotary_dim=8, **o),
    "phi": lambda **o: transformers.PhiForCausalLM(
        transformers.PhiConfig(
            **(
                dict(
                    vocab_size=101,
                    hidden_size=32,
                    intermediate_size=72,
                    num_hidden_layers=3,
                    num_attention_heads=4,
                    num_key_value_heads=2,
                    max_position_embeddings=32,
                    rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "partial_rotary_factor": 0.5},
                )
                | o
            )
        )
    ),
}


def hf_model(name: str, **overrides):
    torch.manual_seed(0)
    return perturbed(FAMILIES[name](**overrides))


@pytest.mark.parametrize("name", sorted(FAMILIES))
def test_logits_match(name) -> None:
    hf = hf_model(name)
    ours = GPT.from_hf(hf).eval()
    assert all(layer.block.parallel for layer in ours.config.layers) and ours.config.head.bias
    assert type(ours.config).from_dict(ours.config.to_dict()) == ours.config
    assert_logits_match(ours, hf, 101, 48)


@pytest.mark.parametrize("name", ["gptj", "phi"])
def test_greedy_generation_equals_hf(name) -> None:
    hf = hf_model(name)
    assert_greedy_generation_equal(GPT.from_hf(hf).eval(), hf, 101)


def test_phi_qk_layernorm_is_refused() -> None:
    with pytest.raises(ValueError, match="qk_layernorm"):
        GPT.from_hf(hf_model("phi", qk_layernorm=True))

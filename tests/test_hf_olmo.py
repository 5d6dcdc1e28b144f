"""GPT.from_hf for OLMo 2 and OLMo 3 against Hugging Face's own models (tiny random configs, no
download): norms after each sublayer instead of before it, RMS QK-norm over the whole q and k
projections, GQA, and OLMo 3's sliding windows on 3 of every 4 layers with RoPE parameters per
layer type. Every parameter is moved off its initial value (the norm gains start at 1, which would
hide a swapped norm); logits agree to 2e-4 in float32 past the window and the context, and greedy
cached generation equals HF's."""

from __future__ import annotations

import pytest
import torch
from _hf_helpers import assert_greedy_generation_equal, assert_logits_match, assert_qk_norm_eps_carried, perturbed

from posenc import GPT

transformers = pytest.importorskip("transformers")

SIZES = dict(
    vocab_size=101,
    hidden_size=32,
    intermediate_size=48,
    num_hidden_layers=4,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=32,
    rms_norm_eps=1e-6,
    pad_token_id=0,
)
FAMILIES = {
    "olmo2": lambda **o: transformers.Olmo2ForCausalLM(transformers.Olmo2Config(**(SIZES | o))),
    "olmo3": lambda **o: transformers.Olmo3ForCausalLM(
        transformers.Olmo3Config(
            **(
                SIZES
                | dict(
                    sliding_window=6,
                    rope_parameters={
                        "sliding_attention": {"rope_type": "default", "rope_theta": 1e4},
                        "full_attention": {"rope_type": "default", "rope_theta": 5e5},
                    },
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
    block = ours.config.layers[0].block
    assert (block.pre_norm, block.post_norm) == (False, True)
    if name == "olmo3":
        assert ours.config.layer_codes == ("r", "r", "r", "R")
        assert [layer.pe.base for layer in ours.config.layers] == [1e4, 1e4, 1e4, 5e5]
    assert type(ours.config).from_dict(ours.config.to_dict()) == ours.config
    assert_logits_match(ours, hf, 101, 48)


@pytest.mark.parametrize("name", sorted(FAMILIES))
def test_greedy_generation_equals_hf(name) -> None:
    hf = hf_model(name)
    assert_greedy_generation_equal(GPT.from_hf(hf).eval(), hf, 101)


@pytest.mark.parametrize("name", sorted(FAMILIES))
def test_the_qk_norm_takes_the_familys_eps(name) -> None:
    assert_qk_norm_eps_carried(hf_model(name, rms_norm_eps=0.1), 101)

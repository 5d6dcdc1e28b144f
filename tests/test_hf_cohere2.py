"""GPT.from_hf for Cohere 2 against Hugging Face's own Cohere2ForCausalLM (a tiny random config, no
download): sliding-window RoPE layers in the interleaved layout beside global NoPE layers, parallel
blocks reading one bias-free LayerNorm, SwiGLU, GQA and the logit scale. Every parameter is moved
off its initial value; logits agree to 2e-4 in float32 past the window and the context, and greedy
cached generation equals HF's."""

from __future__ import annotations

import pytest
import torch
from _hf_helpers import assert_greedy_generation_equal, assert_logits_match, perturbed

from posenc import GPT

transformers = pytest.importorskip("transformers")


def hf_cohere2(**overrides):
    config = transformers.Cohere2Config(
        **(
            dict(
                vocab_size=101,
                hidden_size=32,
                intermediate_size=48,
                num_hidden_layers=4,
                num_attention_heads=4,
                num_key_value_heads=2,
                max_position_embeddings=32,
                sliding_window=6,
                layer_types=["sliding_attention"] * 3 + ["full_attention"],
                logit_scale=0.25,
            )
            | overrides
        )
    )
    torch.manual_seed(0)
    return perturbed(transformers.Cohere2ForCausalLM(config))


def test_logits_match() -> None:
    hf = hf_cohere2()
    ours = GPT.from_hf(hf).eval()
    assert ours.config.layer_codes == ("r", "r", "r", "N") and ours.config.head.logit_scale == 0.25
    assert type(ours.config).from_dict(ours.config.to_dict()) == ours.config
    assert_logits_match(ours, hf, 101, 48)  # past the window (6) and the context (32)


def test_greedy_generation_equals_hf() -> None:
    hf = hf_cohere2()
    assert_greedy_generation_equal(GPT.from_hf(hf).eval(), hf, 101)

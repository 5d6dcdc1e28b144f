"""GPT.from_hf for BLOOM and MPT, the ALiBi families, against Hugging Face's own models (tiny random
configs, no download): BLOOM's embedding LayerNorm and head-grouped fused qkv, MPT's bias-free
blocks and exact GELU, with head counts that are and are not powers of two
(where the slope order matters). Every parameter is moved off its initial value; logits agree to
2e-4 in float32, and greedy cached generation equals HF's."""

from __future__ import annotations

import pytest
import torch
from _hf_helpers import assert_greedy_generation_equal, assert_logits_match, perturbed

from posenc import GPT

transformers = pytest.importorskip("transformers")


def bloom(**o):
    config = transformers.BloomConfig(**(dict(vocab_size=101, hidden_size=48, n_layer=3, n_head=4) | o))
    return transformers.BloomForCausalLM(config)


def mpt(bias_max: int = 8, **o):
    config = transformers.MptConfig(
        **(dict(vocab_size=101, d_model=48, n_layers=3, n_heads=4, max_seq_len=64) | o),
        attn_config={"alibi_bias_max": bias_max},
    )
    return transformers.MptForCausalLM(config)


CASES = {
    "bloom": lambda: bloom(),
    "bloom 6 heads": lambda: bloom(n_head=6),
    "mpt": lambda: mpt(),
    "mpt 6 heads": lambda: mpt(n_heads=6),
}


def hf_model(case: str):
    torch.manual_seed(0)
    return perturbed(CASES[case]())


@pytest.mark.parametrize("case", sorted(CASES))
def test_logits_match(case) -> None:
    hf = hf_model(case)
    ours = GPT.from_hf(hf).eval()
    assert ours.config.layers[0].encoding == "alibi"
    assert type(ours.config).from_dict(ours.config.to_dict()) == ours.config
    assert_logits_match(ours, hf, 101, 40)


@pytest.mark.parametrize("case", ["bloom", "mpt"])
def test_greedy_generation_equals_hf(case) -> None:
    hf = hf_model(case)
    assert_greedy_generation_equal(GPT.from_hf(hf).eval(), hf, 101)


def test_options_posenc_does_not_build_are_refused() -> None:
    with pytest.raises(ValueError, match="clip_qkv"):
        GPT.from_hf(
            transformers.MptForCausalLM(
                transformers.MptConfig(vocab_size=50, d_model=32, n_layers=1, n_heads=4, attn_config={"clip_qkv": 6.0})
            )
        )
    with pytest.raises(ValueError, match="alibi_bias_max"):  # Hugging Face ignores it, MosaicML reads it
        GPT.from_hf(mpt(bias_max=16))
    with pytest.raises(ValueError, match="apply_residual_connection_post_layernorm"):
        GPT.from_hf(bloom(apply_residual_connection_post_layernorm=True))

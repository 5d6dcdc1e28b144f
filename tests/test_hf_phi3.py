"""GPT.from_hf for Phi-3 against Hugging Face's own Phi3ForCausalLM (tiny random configs, no
download): fused qkv and gate/up projections, GQA, a sliding window, and LongRoPE with short and long
factors, at lengths past the original context (where the long factors take over) and past the
window. Every parameter is moved off its initial value; logits agree to 2e-4 in float32. Cached
decoding that crosses the original context equals a fresh forward over the same tokens at every
step (the stale-cache bug of Hugging Face's PR 33129)."""

from __future__ import annotations

import pytest
import torch
from _hf_helpers import assert_greedy_generation_equal, assert_logits_match, perturbed

from posenc import GPT

transformers = pytest.importorskip("transformers")

HEAD_DIM = 8
LONGROPE = {
    "rope_type": "longrope",
    "rope_theta": 10000.0,
    "short_factor": [1.0, 1.1, 1.3, 1.6],
    "long_factor": [1.5, 2.5, 4.0, 6.0],
}
CASES = {
    "longrope": dict(rope_parameters=LONGROPE, original_max_position_embeddings=16, max_position_embeddings=64),
    "plain, window": dict(sliding_window=6),
}


def hf_phi3(case: str):
    config = transformers.Phi3Config(
        vocab_size=101,
        hidden_size=32,
        intermediate_size=48,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        pad_token_id=0,
        **({"max_position_embeddings": 32} | CASES[case]),
    )
    torch.manual_seed(0)
    return perturbed(transformers.Phi3ForCausalLM(config))


@pytest.mark.parametrize("case", sorted(CASES))
def test_logits_match(case) -> None:
    hf = hf_phi3(case)
    ours = GPT.from_hf(hf).eval()
    assert_logits_match(ours, hf, 101, 12)  # short: LongRoPE's short factors
    assert_logits_match(ours, hf, 101, 40)  # past the original context (16) and the window (6)


def test_greedy_generation_equals_hf_within_the_original_context() -> None:
    hf = hf_phi3("longrope")
    assert_greedy_generation_equal(GPT.from_hf(hf).eval(), hf, 101, new=8)  # 5 + 8 < 16


def test_cached_decoding_across_the_original_context_equals_a_fresh_forward() -> None:
    ours = GPT.from_hf(hf_phi3("longrope")).eval()
    idx = torch.randint(0, 101, (1, 30), generator=torch.Generator().manual_seed(4))
    cache = ours.new_cache()
    with torch.no_grad():
        ours(idx[:, :10], cache=cache)
        for t in range(10, 30):  # crosses 16, where the long factors replace the short ones
            step = ours(idx[:, t : t + 1], cache=cache)[0][:, -1]
            fresh = ours(idx[:, : t + 1])[0][:, -1]
            torch.testing.assert_close(step, fresh, rtol=0, atol=1e-5)

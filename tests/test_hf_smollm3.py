"""GPT.from_hf for SmolLM3 against Hugging Face's own SmolLM3ForCausalLM (a tiny random config, no
download): RoPE layers with NoPE every 4th layer (and any other ``no_rope_layers``), optionally a
sliding window on the NoPE layers. Every parameter is moved off its initial value (norm gains start
at 1, which would hide a swapped norm), and the logits must agree to 2e-4 in float32 at lengths
past the window and the configured context; greedy generation with the KV cache must equal HF's."""

from __future__ import annotations

import pytest
import torch
from _hf_helpers import assert_greedy_generation_equal, assert_logits_match, perturbed

from posenc import GPT

transformers = pytest.importorskip("transformers")

BASE = dict(
    vocab_size=101,
    hidden_size=32,
    intermediate_size=72,
    num_hidden_layers=4,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=32,
    pad_token_id=0,
    bos_token_id=1,
    eos_token_id=2,
)
CASES = {
    "every 4th NoPE": {},
    "own pattern": {"no_rope_layers": [0, 1, 0, 1]},
    "windowed NoPE": {"use_sliding_window": True, "sliding_window": 6},
    "biases": {"attention_bias": True, "mlp_bias": True},
}


def hf_smollm3(**overrides):
    torch.manual_seed(0)
    model = transformers.SmolLM3ForCausalLM(transformers.SmolLM3Config(**(BASE | overrides))).eval()
    return perturbed(model)


@pytest.mark.parametrize("case", sorted(CASES))
def test_smollm3_logits_and_layers_match(case) -> None:
    hf = hf_smollm3(**CASES[case])
    ours = GPT.from_hf(hf).eval()
    c = hf.config
    assert ours.config.layer_codes == tuple(
        ("R" if use else "N").lower() if kind == "sliding_attention" and c.use_sliding_window else ("R" if use else "N")
        for use, kind in zip(c.no_rope_layers, c.layer_types, strict=True)
    )
    assert_logits_match(ours, hf, 101, 48)  # past the context (32) and every window


@pytest.mark.parametrize("case", ["every 4th NoPE", "windowed NoPE"])
def test_smollm3_greedy_generation_equals_hf(case) -> None:
    hf = hf_smollm3(**CASES[case])
    ours = GPT.from_hf(hf).eval()
    assert_greedy_generation_equal(ours, hf, 101)

"""GPT.from_hf for EXAONE 4 against Hugging Face's own Exaone4ForCausalLM (tiny random configs, no
download): sliding-window RoPE layers beside global NoPE layers, per-head RMS QK-norm, norms after
each sublayer, GQA; and without a sliding window, RoPE on every layer. Every parameter is moved off
its initial value; logits agree to 2e-4 in float32 past the window and the context, and greedy
cached generation equals HF's."""

from __future__ import annotations

import pytest
import torch
from _hf_helpers import assert_greedy_generation_equal, assert_logits_match, assert_qk_norm_eps_carried, perturbed

from posenc import GPT

transformers = pytest.importorskip("transformers")

CASES = {
    "hybrid": dict(sliding_window=6, layer_types=["sliding_attention"] * 3 + ["full_attention"]),
    "no window": dict(sliding_window=None, layer_types=["full_attention"] * 4),
}


def hf_exaone4(case: str, **overrides):
    config = transformers.Exaone4Config(
        **(
            dict(
                vocab_size=101,
                hidden_size=32,
                intermediate_size=48,
                num_hidden_layers=4,
                num_attention_heads=4,
                num_key_value_heads=2,
                max_position_embeddings=32,
                rms_norm_eps=1e-6,
            )
            | CASES[case]
            | overrides
        )
    )
    torch.manual_seed(0)
    return perturbed(transformers.Exaone4ForCausalLM(config))


@pytest.mark.parametrize("case", sorted(CASES))
def test_logits_match(case) -> None:
    hf = hf_exaone4(case)
    ours = GPT.from_hf(hf).eval()
    assert ours.config.layer_codes == (("r", "r", "r", "N") if case == "hybrid" else ("R",) * 4)
    assert_logits_match(ours, hf, 101, 48)


def test_greedy_generation_equals_hf() -> None:
    hf = hf_exaone4("hybrid")
    assert_greedy_generation_equal(GPT.from_hf(hf).eval(), hf, 101)


def test_the_qk_norm_takes_the_familys_eps() -> None:
    assert_qk_norm_eps_carried(hf_exaone4("hybrid", rms_norm_eps=0.1), 101)

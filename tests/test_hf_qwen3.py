"""GPT.from_hf for Qwen3 against Hugging Face's own Qwen3ForCausalLM (a tiny random config, no
download): per-head RMS QK-norm before RoPE, a head_dim apart from hidden_size / heads, GQA, and
sliding windows on the layers ``layer_types`` marks. Every parameter is moved off its initial value
(the QK-norm gains start at 1, which would hide a swapped q/k norm); logits agree to 2e-4 in float32
at lengths past the window and the context, and greedy cached generation equals HF's."""

from __future__ import annotations

import pytest
import torch
from _hf_helpers import assert_greedy_generation_equal, assert_logits_match, assert_qk_norm_eps_carried, perturbed

from posenc import GPT

transformers = pytest.importorskip("transformers")

BASE = dict(
    vocab_size=101,
    hidden_size=32,
    intermediate_size=72,
    num_hidden_layers=3,
    num_attention_heads=4,
    num_key_value_heads=2,
    head_dim=16,  # 4 heads of 16 = 64 != hidden_size 32, as Qwen3-0.6B's 16 x 128 != 1024
    max_position_embeddings=32,
    pad_token_id=0,
)
CASES = {
    "own head_dim": {},
    "width's head_dim": {"head_dim": 8},
    "windows": {"use_sliding_window": True, "sliding_window": 6, "max_window_layers": 1},
    "yarn": {
        "rope_parameters": {
            "rope_type": "yarn",
            "factor": 4.0,
            "original_max_position_embeddings": 8,
            "rope_theta": 1e6,
        }
    },
}


def hf_qwen3(**overrides):
    torch.manual_seed(0)
    model = transformers.Qwen3ForCausalLM(transformers.Qwen3Config(**(BASE | overrides))).eval()
    return perturbed(model)


@pytest.mark.parametrize("case", sorted(CASES))
def test_qwen3_logits_match(case) -> None:
    hf = hf_qwen3(**CASES[case])
    ours = GPT.from_hf(hf).eval()
    attn = ours.blocks[0].attn
    assert attn.head_dim == hf.config.head_dim and attn.qk_norm is not None
    windows = [b.attn.window for b in ours.blocks]
    assert windows == ([None, 6, 6] if case == "windows" else [None] * 3)
    assert type(ours.config).from_dict(ours.config.to_dict()) == ours.config  # the head size is saved
    assert_logits_match(ours, hf, 101, 48)  # past the context (32) and every window


@pytest.mark.parametrize("case", ["own head_dim", "windows"])
def test_qwen3_greedy_generation_equals_hf(case) -> None:
    hf = hf_qwen3(**CASES[case])
    ours = GPT.from_hf(hf).eval()
    assert_greedy_generation_equal(ours, hf, 101)


def test_the_qk_norm_takes_the_familys_eps() -> None:
    assert_qk_norm_eps_carried(hf_qwen3(rms_norm_eps=0.1), 101)

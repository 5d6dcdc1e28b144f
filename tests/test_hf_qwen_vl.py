"""GPT.from_hf for the text models of Qwen2-VL, Qwen2.5-VL and Qwen3-VL against Hugging Face's own
``...ForConditionalGeneration`` (tiny random configs, no download): M-RoPE chunked (Qwen2-VL,
Qwen2.5-VL) and interleaved (Qwen3-VL, with per-head QK-norm). Given the same token ids and 3-axis
position ids (image-like: repeated and jumping), logits agree to 2e-4 in float32; every parameter
is moved off its initial value first. The vision tower is not imported."""

from __future__ import annotations

import pytest
import torch
from _hf_helpers import perturbed

from posenc import GPT

transformers = pytest.importorskip("transformers")

TEXT = dict(
    vocab_size=101,
    hidden_size=64,
    intermediate_size=96,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=64,
)
VISION = dict(depth=1, hidden_size=32, embed_dim=32, num_heads=2, out_hidden_size=64, intermediate_size=32)
FAMILIES = {
    "qwen2_vl": ("Qwen2VLConfig", "Qwen2VLForConditionalGeneration", dict(mrope_section=[2, 3, 3]), {}),
    "qwen2_5_vl": ("Qwen2_5_VLConfig", "Qwen2_5_VLForConditionalGeneration", dict(mrope_section=[2, 3, 3]), {}),
    "qwen3_vl": (
        "Qwen3VLConfig",
        "Qwen3VLForConditionalGeneration",
        dict(mrope_section=[4, 2, 2], mrope_interleaved=True),
        dict(head_dim=16, rms_norm_eps=1e-6),
    ),
}


def hf_model(family: str):
    config_cls, model_cls, mrope, extra = FAMILIES[family]
    rope = {"rope_type": "default", "rope_theta": 1e4, **mrope}
    text = TEXT | extra | {"rope_parameters": rope}
    vision = {k: v for k, v in VISION.items() if k in getattr(transformers, config_cls)().vision_config.to_dict()}
    config = getattr(transformers, config_cls)(text_config=text, vision_config=vision)
    torch.manual_seed(0)
    return perturbed(getattr(transformers, model_cls)(config))


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_text_model_logits_match_with_three_axis_positions(family) -> None:
    hf = hf_model(family)
    ours = GPT.from_hf(hf).eval()
    assert ours.blocks[0].attn.pe.position_axes == 3
    g = torch.Generator().manual_seed(1)
    idx = torch.randint(0, 101, (2, 40), generator=g)
    t = torch.arange(40).expand(2, -1)
    positions = torch.stack((t, t // 3 + 5 * (t % 3), t % 7))  # ids that differ per axis
    with torch.no_grad():
        expected = hf(input_ids=idx, position_ids=positions).logits
        torch.testing.assert_close(ours(idx, positions=positions)[0], expected, rtol=0, atol=2e-4)
        # text only: one id per token on every axis, as Hugging Face builds for plain text
        torch.testing.assert_close(ours(idx)[0], hf(input_ids=idx).logits, rtol=0, atol=2e-4)

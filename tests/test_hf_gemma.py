"""GPT.from_hf for Gemma 2 and Gemma 3 against Hugging Face's own models (tiny random configs, no
download): (1 + w) RMSNorms, scaled embeddings, norms before and after each sublayer, GeGLU, a
head_dim and softmax scale of their own, sliding windows by ``layer_types``; Gemma 2's attention and
final logit softcapping; Gemma 3's per-head QK-norm and RoPE per layer type (local base, global base
with linear scaling). Every parameter is moved off its initial value (Gemma's gains start at 0:
``1 + w`` = 1 would hide a missing +1); logits agree to 2e-4 in float32 past the window and the
context, and greedy cached generation equals HF's."""

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
    head_dim=16,
    query_pre_attn_scalar=12,
    max_position_embeddings=32,
    sliding_window=6,
    pad_token_id=0,
)
FAMILIES = {
    "gemma2": lambda **o: transformers.Gemma2ForCausalLM(
        transformers.Gemma2Config(**(SIZES | dict(attn_logit_softcapping=20.0, final_logit_softcapping=15.0) | o))
    ),
    "gemma3": lambda **o: transformers.Gemma3ForCausalLM(
        transformers.Gemma3TextConfig(
            **(
                SIZES
                | dict(
                    layer_types=["sliding_attention"] * 3 + ["full_attention"],
                    rope_parameters={
                        "sliding_attention": {"rope_type": "default", "rope_theta": 1e4},
                        "full_attention": {"rope_type": "linear", "factor": 2.0, "rope_theta": 1e6},
                    },
                )
                | o
            )
        )
    ),
}


def hf_model(name: str, **overrides):
    torch.manual_seed(0)
    return perturbed(FAMILIES[name](**overrides), scale=0.2)


@pytest.mark.parametrize("name", sorted(FAMILIES))
def test_logits_match(name) -> None:
    hf = hf_model(name)
    ours = GPT.from_hf(hf).eval()
    if name == "gemma3":
        assert ours.config.layer_codes == ("r", "r", "r", "R")
        assert [layer.pe.base for layer in ours.config.layers] == [1e4, 1e4, 1e4, 1e6]
    assert type(ours.config).from_dict(ours.config.to_dict()) == ours.config
    assert_logits_match(ours, hf, 101, 48)


@pytest.mark.parametrize("name", sorted(FAMILIES))
def test_greedy_generation_equals_hf(name) -> None:
    hf = hf_model(name)
    assert_greedy_generation_equal(GPT.from_hf(hf).eval(), hf, 101)


@pytest.mark.parametrize("name", sorted(FAMILIES))
def test_an_untied_head_is_read_not_replaced_by_the_embedding(name) -> None:
    hf = hf_model(name, tie_word_embeddings=False)
    assert hf.lm_head.weight is not hf.model.embed_tokens.weight
    ours = GPT.from_hf(hf).eval()
    assert ours.lm_head.weight is not ours.wte.weight
    assert_logits_match(ours, hf, 101, 48)


def test_gemma3s_qk_norm_takes_the_familys_eps() -> None:
    assert_qk_norm_eps_carried(hf_model("gemma3", rms_norm_eps=0.1), 101)


def test_gemma3_with_vision_refuses_a_final_softcap_its_language_model_does_not_apply() -> None:
    text = SIZES | dict(final_logit_softcapping=30.0)
    vision = dict(hidden_size=32, intermediate_size=48, num_attention_heads=2, num_hidden_layers=1, image_size=28)
    config = transformers.Gemma3Config(text_config=text, vision_config=vision, mm_tokens_per_image=4)
    with pytest.raises(ValueError, match=r"'text_config.final_logit_softcapping': 30.0"):
        GPT.from_hf(transformers.Gemma3ForConditionalGeneration(config))


def test_bidirectional_attention_is_refused() -> None:
    with pytest.raises(ValueError, match="use_bidirectional_attention"):
        GPT.from_hf(hf_model("gemma3", use_bidirectional_attention=True))

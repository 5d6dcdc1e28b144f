"""GPT.from_hf for Llama 4 text models (dense) against Hugging Face's own Llama4ForCausalLM (tiny
random configs, no download): iRoPE (interleaved RoPE on three layers of four, NoPE on the fourth),
chunked attention on the RoPE layers, the weightless QK-norm after RoPE, and the NoPE layers' query
temperature, at lengths past the chunk, the temperature's floor and the context. Every parameter is
moved off its initial value; logits agree to 2e-4 in float32, and greedy cached generation equals
HF's. Mixture-of-experts layers are refused."""

from __future__ import annotations

import pytest
import torch
from _hf_helpers import assert_greedy_generation_equal, assert_logits_match, perturbed

from posenc import GPT

transformers = pytest.importorskip("transformers")


def hf_llama4(**overrides):
    config = transformers.Llama4TextConfig(
        **(
            dict(
                vocab_size=101,
                hidden_size=32,
                intermediate_size=40,
                intermediate_size_mlp=48,
                num_hidden_layers=4,
                num_attention_heads=4,
                num_key_value_heads=2,
                head_dim=8,
                max_position_embeddings=32,
                moe_layers=[],
                attention_chunk_size=8,
                floor_scale=4,
                attn_scale=0.5,
                rope_parameters={"rope_type": "default", "rope_theta": 500.0},
                pad_token_id=0,
            )
            | overrides
        )
    )
    torch.manual_seed(0)
    return perturbed(transformers.Llama4ForCausalLM(config))


CASES = {"irope": {}, "no qk-norm, no temperature": dict(use_qk_norm=False, attn_temperature_tuning=False)}


@pytest.mark.parametrize("case", sorted(CASES))
def test_logits_match(case) -> None:
    hf = hf_llama4(**CASES[case])
    ours = GPT.from_hf(hf).eval()
    assert ours.config.layer_codes == ("R", "R", "R", "N")
    assert [layer.mask.chunk for layer in ours.config.layers] == [8, 8, 8, None]
    assert type(ours.config).from_dict(ours.config.to_dict()) == ours.config
    assert_logits_match(ours, hf, 101, 48)  # past the chunk (8), the floor (4) and the context (32)


def test_the_nope_temperature_matters_here() -> None:
    """The control: without its temperature the imported model no longer matches."""
    hf = hf_llama4()
    ours = GPT.from_hf(hf).eval()
    plain = ours.config.map_layers(lambda i, layer: layer.replace(pe="nope") if layer.encoding == "nope" else layer)
    other = GPT(plain).eval()
    other.load_state_dict(ours.state_dict())
    idx = torch.randint(0, 101, (1, 40), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert (other(idx)[0] - hf(idx).logits).abs().max() > 1e-3


def test_greedy_generation_equals_hf() -> None:
    hf = hf_llama4()
    assert_greedy_generation_equal(GPT.from_hf(hf).eval(), hf, 101)


def test_mixture_of_experts_layers_are_refused() -> None:
    with pytest.raises(ValueError, match="mixture-of-experts"):
        GPT.from_hf(hf_llama4(moe_layers=[1]))

"""GPT.from_hf on the config.json of released models that posenc once refused or imported wrongly:
each released config is kept field for field except its sizes (hidden and head widths, depth,
vocabulary, vision tower; lengths over 8192 down to 8192; per-layer lists cut to the kept layers;
token ids into the reduced vocabulary), built by transformers as ``from_pretrained`` builds it (in float32), given
random weights moved off their initial values, imported, and its logits checked against Hugging
Face's to 2e-4 in float32. The full-size RoPE frequencies of these configs are checked in
tests/test_rope_scaling.py.

- Qwen2-VL-7B-Instruct, Qwen2.5-VL-7B-Instruct: the v4 ``"rope_scaling": {"type": "mrope", ...}``.
- Llama-4-Scout-17B-16E-Instruct (its text model, dense here: posenc refuses its 16 experts): the
  ``llama3`` scaling with ``high_freq_factor == low_freq_factor == 1.0``, checked at positions near
  8192 where the scaled low frequencies show.
- SmolLM3-3B: ``pretraining_tp: 2``, which Hugging Face ignores outside BLOOM.
- GPT-NeoX-20B: ``hidden_act: gelu_fast`` (the tanh GELU).
- Gemma 3 4B (``gemma3``, ``Gemma3ForConditionalGeneration``, text + vision): its text model.
"""

from __future__ import annotations

import pytest
import torch
from _hf_helpers import assert_logits_match, perturbed

from posenc import GPT

transformers = pytest.importorskip("transformers")

QWEN2_VL_7B = {
    "architectures": ["Qwen2VLForConditionalGeneration"],
    "attention_dropout": 0.0,
    "bos_token_id": 151643,
    "eos_token_id": 151645,
    "vision_start_token_id": 151652,
    "vision_end_token_id": 151653,
    "vision_token_id": 151654,
    "image_token_id": 151655,
    "video_token_id": 151656,
    "hidden_act": "silu",
    "hidden_size": 3584,
    "initializer_range": 0.02,
    "intermediate_size": 18944,
    "max_position_embeddings": 32768,
    "max_window_layers": 28,
    "model_type": "qwen2_vl",
    "num_attention_heads": 28,
    "num_hidden_layers": 28,
    "num_key_value_heads": 4,
    "rms_norm_eps": 1e-06,
    "rope_theta": 1000000.0,
    "sliding_window": 32768,
    "tie_word_embeddings": False,
    "torch_dtype": "bfloat16",
    "use_cache": True,
    "use_sliding_window": False,
    "vision_config": {
        "depth": 32,
        "embed_dim": 1280,
        "mlp_ratio": 4,
        "num_heads": 16,
        "in_chans": 3,
        "hidden_size": 1536,
        "patch_size": 14,
        "spatial_merge_size": 2,
        "spatial_patch_size": 14,
        "temporal_patch_size": 2,
    },
    "rope_scaling": {"type": "mrope", "mrope_section": [16, 24, 24]},
    "vocab_size": 152064,
}
QWEN2_5_VL_7B = QWEN2_VL_7B | {
    "architectures": ["Qwen2_5_VLForConditionalGeneration"],
    "model_type": "qwen2_5_vl",
    "max_position_embeddings": 128000,
    "vision_config": {
        "depth": 32,
        "hidden_act": "silu",
        "hidden_size": 1280,
        "intermediate_size": 3420,
        "num_heads": 16,
        "in_chans": 3,
        "out_hidden_size": 3584,
        "patch_size": 14,
        "spatial_merge_size": 2,
        "spatial_patch_size": 14,
        "window_size": 112,
        "fullatt_block_indexes": [7, 15, 23, 31],
        "tokens_per_second": 2,
        "temporal_patch_size": 2,
    },
}
LLAMA4_SCOUT_TEXT = {
    "attention_bias": False,
    "attention_chunk_size": 8192,
    "attention_dropout": 0.0,
    "attn_scale": 0.1,
    "attn_temperature_tuning": True,
    "bos_token_id": 200000,
    "eos_token_id": [200001, 200007, 200008],
    "floor_scale": 8192,
    "head_dim": 128,
    "hidden_act": "silu",
    "hidden_size": 5120,
    "initializer_range": 0.02,
    "interleave_moe_layer_step": 1,
    "intermediate_size": 8192,
    "intermediate_size_mlp": 16384,
    "max_position_embeddings": 10485760,
    "model_type": "llama4_text",
    "num_attention_heads": 40,
    "num_experts_per_tok": 1,
    "num_hidden_layers": 48,
    "num_key_value_heads": 8,
    "num_local_experts": 16,
    "pad_token_id": 200018,
    "rms_norm_eps": 1e-05,
    "rope_scaling": {
        "factor": 16.0,
        "high_freq_factor": 1.0,
        "low_freq_factor": 1.0,
        "original_max_position_embeddings": 8192,
        "rope_type": "llama3",
    },
    "rope_theta": 500000.0,
    "use_qk_norm": True,
    "vocab_size": 202048,
}
SMOLLM3_3B = {
    "architectures": ["SmolLM3ForCausalLM"],
    "attention_bias": False,
    "attention_dropout": 0.0,
    "bos_token_id": None,
    "eos_token_id": 128012,
    "hidden_act": "silu",
    "hidden_size": 2048,
    "initializer_range": 0.02,
    "intermediate_size": 11008,
    "max_position_embeddings": 65536,
    "max_window_layers": 28,
    "mlp_bias": False,
    "model_type": "smollm3",
    "no_rope_layer_interval": 4,
    "no_rope_layers": [1, 1, 1, 0] * 9,
    "num_attention_heads": 16,
    "num_hidden_layers": 36,
    "num_key_value_heads": 4,
    "pad_token_id": 128004,
    "pretraining_tp": 2,
    "rms_norm_eps": 1e-06,
    "rope_scaling": None,
    "rope_theta": 5000000.0,
    "sliding_window": None,
    "use_cache": False,
    "use_sliding_window": False,
    "vocab_size": 128256,
}
GPT_NEOX_20B = {
    "architectures": ["GPTNeoXForCausalLM"],
    "bos_token_id": 0,
    "eos_token_id": 0,
    "hidden_act": "gelu_fast",
    "hidden_size": 6144,
    "initializer_range": 0.02,
    "intermediate_size": 24576,
    "layer_norm_eps": 1e-05,
    "max_position_embeddings": 2048,
    "model_type": "gpt_neox",
    "num_attention_heads": 64,
    "num_hidden_layers": 44,
    "rotary_emb_base": 10000,
    "rotary_pct": 0.25,
    "tie_word_embeddings": False,
    "use_cache": True,
    "use_parallel_residual": True,
    "vocab_size": 50432,
}
GEMMA3_4B = {
    "architectures": ["Gemma3ForConditionalGeneration"],
    "boi_token_index": 255999,
    "eoi_token_index": 256000,
    "eos_token_id": [1, 106],
    "image_token_index": 262144,
    "initializer_range": 0.02,
    "mm_tokens_per_image": 256,
    "model_type": "gemma3",
    "text_config": {
        "hidden_size": 2560,
        "intermediate_size": 10240,
        "model_type": "gemma3_text",
        "num_hidden_layers": 34,
        "rope_scaling": {"factor": 8.0, "rope_type": "linear"},
        "sliding_window": 1024,
    },
    "torch_dtype": "bfloat16",
    "vision_config": {
        "hidden_size": 1152,
        "image_size": 896,
        "intermediate_size": 4304,
        "model_type": "siglip_vision_model",
        "num_attention_heads": 16,
        "num_hidden_layers": 27,
        "patch_size": 14,
        "vision_use_head": False,
    },
}

TEXT = dict(hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2)
TOKENS = dict(vocab_size=101, bos_token_id=None, eos_token_id=None, pad_token_id=None)
#: name -> (released config.json, its reduced sizes, the Auto class that from_pretrained would use)
RELEASED = {
    "Qwen2-VL-7B-Instruct": (
        QWEN2_VL_7B,
        TEXT
        | TOKENS
        | dict(max_position_embeddings=8192, sliding_window=8192, max_window_layers=2)
        | dict(rope_scaling={"type": "mrope", "mrope_section": [2, 3, 3]})  # 16:24:24 at head_dim 16
        | dict(vision_config=dict(depth=1, embed_dim=32, num_heads=2, hidden_size=64)),
        "AutoModelForImageTextToText",
    ),
    "Qwen2.5-VL-7B-Instruct": (
        QWEN2_5_VL_7B,
        TEXT
        | TOKENS
        | dict(max_position_embeddings=8192, sliding_window=8192, max_window_layers=2)
        | dict(rope_scaling={"type": "mrope", "mrope_section": [2, 3, 3]})
        | dict(
            vision_config=dict(
                depth=1,
                hidden_size=32,
                intermediate_size=48,
                num_heads=2,
                out_hidden_size=64,
                fullatt_block_indexes=[0],
            )
        ),
        "AutoModelForImageTextToText",
    ),
    "Llama-4-Scout-17B-16E-Instruct (text, dense)": (
        LLAMA4_SCOUT_TEXT,
        TEXT
        | TOKENS
        | dict(num_hidden_layers=4, head_dim=16, intermediate_size=64, intermediate_size_mlp=96)
        | dict(max_position_embeddings=8192, moe_layers=[]),
        "AutoModelForCausalLM",
    ),
    "SmolLM3-3B": (
        SMOLLM3_3B,
        TEXT | TOKENS | dict(num_hidden_layers=4, no_rope_layers=[1, 1, 1, 0], max_position_embeddings=8192),
        "AutoModelForCausalLM",
    ),
    "GPT-NeoX-20B": (GPT_NEOX_20B, TEXT | TOKENS | dict(intermediate_size=256), "AutoModelForCausalLM"),
    "Gemma-3-4B-it": (
        GEMMA3_4B,
        TOKENS
        | dict(image_token_index=100, boi_token_index=98, eoi_token_index=99, mm_tokens_per_image=4)
        | dict(
            text_config=TEXT
            | TOKENS
            | dict(num_hidden_layers=6, head_dim=16, query_pre_attn_scalar=16, sliding_window=8)
            | dict(max_position_embeddings=8192)
        )
        | dict(
            vision_config=dict(
                hidden_size=32, intermediate_size=48, num_attention_heads=2, num_hidden_layers=1, image_size=28
            )
        ),
        "AutoModelForCausalLM",
    ),
}


def reduced(released: dict, sizes: dict) -> dict:
    """``released`` with ``sizes`` put in, nested configs merged key by key."""
    out = dict(released)
    for key, value in sizes.items():
        out[key] = reduced(out.get(key) or {}, value) if isinstance(value, dict) and key.endswith("_config") else value
    return out


def hf_released(name: str):
    released, sizes, auto = RELEASED[name]
    fields = reduced(released, sizes)
    config = transformers.AutoConfig.for_model(fields.pop("model_type"), **fields)
    torch.manual_seed(0)
    return perturbed(getattr(transformers, auto).from_config(config, dtype=torch.float32))


@pytest.mark.parametrize("name", sorted(RELEASED))
def test_released_config_imports_and_matches(name) -> None:
    hf = hf_released(name)
    ours = GPT.from_hf(hf).eval()
    assert_logits_match(ours, hf, 101, 48)


def test_scouts_step_between_the_bands_is_imported_and_matches_near_its_context() -> None:
    hf = hf_released("Llama-4-Scout-17B-16E-Instruct (text, dense)")
    ours = GPT.from_hf(hf).eval()
    scaling = ours.config.layers[0].pe.scaling
    assert (scaling["rope_type"], scaling["low_freq_factor"], scaling["high_freq_factor"]) == ("llama3", 1.0, 1.0)
    idx = torch.randint(0, 101, (1, 24), generator=torch.Generator().manual_seed(1))
    positions = torch.arange(8160, 8184)[None]  # where the low frequencies, divided by 16, have turned
    with torch.no_grad():
        expected = hf(idx, position_ids=positions).logits
        torch.testing.assert_close(ours(idx, positions=positions)[0], expected, rtol=0, atol=2e-4)

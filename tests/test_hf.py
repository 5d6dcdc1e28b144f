"""GPT.from_hf against Hugging Face's GPT2LMHeadModel: an independent implementation of the same
architecture (absolute learned positions, tanh GELU, Conv1D weights stored (in, out)).

The reference is built from a small random GPT2Config; nothing is downloaded. Both models run in
float32, so logits must agree to 1e-5.
"""

from __future__ import annotations

import pytest
import torch

from posenc import GPT, AbsolutePE, MultiHeadLatentAttention

transformers = pytest.importorskip("transformers")

TOL = dict(rtol=0.0, atol=1e-5)


@pytest.fixture(scope="module")
def hf_model():
    torch.manual_seed(0)
    config = transformers.GPT2Config(
        vocab_size=97,
        n_positions=24,
        n_embd=32,
        n_layer=3,
        n_head=4,
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
        initializer_range=0.2,
        bos_token_id=0,
        eos_token_id=0,
    )
    model = transformers.GPT2LMHeadModel(config).eval()
    with torch.no_grad():  # HF zero-initialises biases and sets unit LayerNorms: perturb them so each is tested
        for name, p in model.named_parameters():
            if name.endswith("bias") or ".ln_" in name:
                p.add_(0.1 * torch.randn_like(p))
    return model


def idx(B: int = 2, T: int = 24) -> torch.Tensor:
    return torch.randint(0, 97, (B, T), generator=torch.Generator().manual_seed(1))


def hf_logits(model, tokens: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(tokens).logits


def test_from_hf_model_reproduces_logits(hf_model) -> None:
    ours = GPT.from_hf(hf_model).eval()
    assert isinstance(ours.wpe, AbsolutePE)
    c = ours.config
    assert (c.vocab_size, c.block_size, c.n_embd, c.n_layer, c.n_head, c.input_encoding) == (
        97,
        24,
        32,
        3,
        4,
        "absolute",
    )
    tokens = idx()
    with torch.no_grad():
        logits, _ = ours(tokens)
    expected = hf_logits(hf_model, tokens)
    assert expected.abs().max() > 1e-2  # non-trivial logits, so 1e-5 is a real bound
    torch.testing.assert_close(logits, expected, **TOL)


def test_from_hf_state_dict_reproduces_logits(hf_model) -> None:
    ours = GPT.from_hf(hf_model.state_dict(), n_head=4).eval()
    tokens = idx(3, 10)
    with torch.no_grad():
        logits, _ = ours(tokens)
    torch.testing.assert_close(logits, hf_logits(hf_model, tokens), **TOL)


def test_wrong_n_head_gives_other_logits(hf_model) -> None:
    # control: the head count is not recoverable from the weights and does change the result
    ours = GPT.from_hf(hf_model.state_dict(), n_head=2).eval()
    tokens = idx(1, 12)
    with torch.no_grad():
        logits, _ = ours(tokens)
    assert (logits - hf_logits(hf_model, tokens)).abs().max() > 1e-3


def test_from_hf_loss_matches_hf_loss(hf_model) -> None:
    ours = GPT.from_hf(hf_model).eval()
    tokens = idx(2, 16)
    with torch.no_grad():
        # HF shifts labels inside the model; ours takes already-shifted targets
        expected = hf_model(tokens, labels=tokens).loss
        _, loss = ours(tokens[:, :-1], tokens[:, 1:])
    torch.testing.assert_close(loss, expected, **TOL)


def test_state_dict_without_n_head_is_refused(hf_model) -> None:
    with pytest.raises(ValueError, match="n_head"):
        GPT.from_hf(hf_model.state_dict())


def test_non_gpt2_state_dict_is_refused() -> None:
    with pytest.raises(ValueError, match="wpe.weight"):
        GPT.from_hf({"transformer.wte.weight": torch.zeros(10, 8)}, n_head=2)


def test_an_untied_gpt2_head_is_read(hf_model) -> None:
    config = hf_model.config.to_dict() | {"tie_word_embeddings": False}
    torch.manual_seed(0)
    untied = transformers.GPT2LMHeadModel(transformers.GPT2Config(**config)).eval()
    assert untied.lm_head.weight is not untied.transformer.wte.weight
    ours = GPT.from_hf(untied).eval()
    assert ours.lm_head.weight is not ours.wte.weight
    torch.testing.assert_close(ours(idx())[0], hf_logits(untied, idx()), **TOL)


# -- what from_hf accepts ---------------------------------------------------------------------------


def test_a_hub_name_is_not_fetched_and_the_message_says_how_to_pass_a_model() -> None:
    with pytest.raises(ValueError) as e:
        GPT.from_hf("EleutherAI/pythia-70m")
    message = str(e.value)
    assert "'EleutherAI/pythia-70m' is not a local folder" in message and "does not download" in message
    assert "GPT.from_hf(AutoModelForCausalLM.from_pretrained('EleutherAI/pythia-70m'))" in message


def test_a_folder_without_config_json_is_refused(tmp_path) -> None:
    (tmp_path / "notes.txt").write_text("no model here")
    for path in (tmp_path, tmp_path / "notes.txt"):
        with pytest.raises(ValueError, match="not a folder with a config.json"):
            GPT.from_hf(path)


def test_a_local_folder_loads_without_the_network(hf_model, tmp_path) -> None:
    hf_model.save_pretrained(tmp_path / "gpt2")
    for path in (tmp_path / "gpt2", str(tmp_path / "gpt2")):
        ours = GPT.from_hf(path).eval()
        torch.testing.assert_close(ours(idx())[0], hf_logits(hf_model, idx()), **TOL)


def test_a_local_vision_language_folder_loads_its_text_model(tmp_path) -> None:
    # Qwen2-VL has no AutoModelForCausalLM class: the folder loads with AutoModelForImageTextToText
    text = dict(LLAMA_BASE, rope_parameters={"rope_type": "default", "mrope_section": [1, 1, 2]})
    config = transformers.Qwen2VLConfig(
        text_config=text, vision_config=dict(depth=1, embed_dim=16, num_heads=2, hidden_size=32)
    )
    torch.manual_seed(0)
    hf = transformers.Qwen2VLForConditionalGeneration(config).eval()
    hf.save_pretrained(tmp_path)
    tokens = torch.randint(0, 101, (1, 12), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        torch.testing.assert_close(GPT.from_hf(tmp_path).eval()(tokens)[0], hf(tokens).logits, rtol=0, atol=2e-4)


def test_a_base_model_without_its_head_is_refused_as_such() -> None:
    config = transformers.LlamaConfig(**LLAMA_BASE)
    with pytest.raises(ValueError, match="LlamaModel is a base model without a language-model head"):
        GPT.from_hf(transformers.LlamaModel(config))


def test_a_model_with_another_tasks_head_is_refused_not_imported_without_it(hf_model) -> None:
    classifier = transformers.GPT2ForSequenceClassification(hf_model.config)
    with pytest.raises(
        ValueError, match=r"GPT2ForSequenceClassification is not a causal language model: its head \['score'\]"
    ):
        GPT.from_hf(classifier)


def test_from_hf_of_something_else_is_a_type_error() -> None:
    with pytest.raises(TypeError, match="got a int"):
        GPT.from_hf(3)


def test_unsupported_activation_is_refused() -> None:
    config = transformers.GPT2Config(
        vocab_size=10,
        n_positions=8,
        n_embd=8,
        n_layer=1,
        n_head=2,
        activation_function="relu",
        bos_token_id=0,
        eos_token_id=0,
    )
    with pytest.raises(ValueError, match="'relu'"):
        GPT.from_hf(transformers.GPT2LMHeadModel(config))


@pytest.mark.parametrize(
    "option, value",
    [
        ("scale_attn_by_inverse_layer_idx", True),
        ("scale_attn_weights", False),
        ("layer_norm_epsilon", 1e-2),
        ("n_inner", 64),
    ],
)
def test_architecture_options_it_does_not_implement_are_refused(option: str, value) -> None:
    # each of these changes Hugging Face's logits; loading them silently would not reproduce the model
    config = transformers.GPT2Config(
        vocab_size=10, n_positions=8, n_embd=8, n_layer=1, n_head=2, bos_token_id=0, eos_token_id=0, **{option: value}
    )
    with pytest.raises(ValueError, match=f"'{option}': {value}"):
        GPT.from_hf(transformers.GPT2LMHeadModel(config))


def test_reorder_and_upcast_attn_is_accepted_and_matches(hf_model) -> None:
    # only a precision option: in float32 it gives the same logits, so it is not refused
    config = hf_model.config.to_dict() | {"reorder_and_upcast_attn": True}
    other = transformers.GPT2LMHeadModel(transformers.GPT2Config(**config)).eval()
    other.load_state_dict(hf_model.state_dict())
    ours = GPT.from_hf(other).eval()
    tokens = idx(1, 12)
    with torch.no_grad():
        logits, _ = ours(tokens)
    torch.testing.assert_close(logits, hf_logits(other, tokens), **TOL)


# -- Llama family: Llama, Qwen2, Mistral -----------------------------------------------------------

LLAMA_BASE = dict(
    vocab_size=101,
    hidden_size=32,
    intermediate_size=72,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=32,
)
SCHEDULES = {
    "default": None,
    "llama3": {
        "rope_type": "llama3",
        "factor": 8.0,
        "low_freq_factor": 1.0,
        "high_freq_factor": 4.0,
        "original_max_position_embeddings": 8,
        "rope_theta": 500000.0,
    },
    "yarn": {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 8, "rope_theta": 10000.0},
}
FAMILIES = {
    "llama": (transformers.LlamaConfig, transformers.LlamaForCausalLM, {}),
    "qwen2": (transformers.Qwen2Config, transformers.Qwen2ForCausalLM, {}),
    "mistral": (transformers.MistralConfig, transformers.MistralForCausalLM, {"sliding_window": 7}),
}


def hf_causal_lm(family: str, **overrides):
    config_cls, model_cls, extra = FAMILIES[family]
    torch.manual_seed(0)
    return model_cls(config_cls(**(LLAMA_BASE | extra | overrides))).eval()


@pytest.mark.parametrize("family", sorted(FAMILIES))
@pytest.mark.parametrize("kv_heads", [4, 2, 1])
@pytest.mark.parametrize("schedule", sorted(SCHEDULES))
def test_llama_family_logits_match_past_the_original_context(family, kv_heads, schedule) -> None:
    overrides = {"num_key_value_heads": kv_heads}
    if SCHEDULES[schedule] is not None:
        overrides["rope_parameters"] = SCHEDULES[schedule]
    hf = hf_causal_lm(family, **overrides)
    ours = GPT.from_hf(hf).eval()
    layer = ours.config.layers[0]
    assert layer.attention.kv_heads(ours.config.dims) == kv_heads
    assert (layer.block.norm.kind, layer.block.mlp.kind) == ("rmsnorm", "swiglu")
    idx = torch.randint(0, 101, (2, 48), generator=torch.Generator().manual_seed(1))  # 48 > max_position_embeddings
    with torch.no_grad():
        expected = hf(idx).logits
        got, _ = ours(idx)
    torch.testing.assert_close(got, expected, rtol=0, atol=2e-4)


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_llama_family_greedy_generation_equals_hf(family) -> None:
    hf = hf_causal_lm(family, rope_parameters=SCHEDULES["yarn"])
    ours = GPT.from_hf(hf).eval()
    prompt = torch.randint(0, 101, (1, 5), generator=torch.Generator().manual_seed(2))
    expected = hf.generate(prompt, max_new_tokens=20, do_sample=False, pad_token_id=0)
    assert torch.equal(ours.generate(prompt, 20, temperature=0), expected)


def test_qwen2_has_qkv_biases_only_and_mistral_its_window() -> None:
    qwen = GPT.from_hf(hf_causal_lm("qwen2"))
    attn = qwen.blocks[0].attn
    assert attn.c_attn.bias is not None and attn.c_proj.bias is None and qwen.blocks[0].mlp.c_proj.bias is None
    mistral = GPT.from_hf(hf_causal_lm("mistral"))
    assert [b.attn.window for b in mistral.blocks] == [7, 7]
    tied = GPT.from_hf(hf_causal_lm("llama", tie_word_embeddings=True))
    assert tied.lm_head.weight is tied.wte.weight


@pytest.mark.parametrize(
    "family, overrides, field",
    [
        ("llama", {"hidden_act": "gelu"}, "hidden_act"),
        ("llama", {"head_dim": 16}, "head_dim"),
        ("qwen2", {"use_sliding_window": True, "sliding_window": 8}, "use_sliding_window"),
    ],
)
def test_llama_family_configs_it_cannot_reproduce_are_refused(family, overrides, field) -> None:
    with pytest.raises(ValueError, match=field):
        GPT.from_hf(hf_causal_lm(family, **overrides))


def test_pretraining_tp_is_ignored_as_hugging_face_ignores_it() -> None:
    # the tensor-parallel degree of pretraining: Hugging Face reads it in BLOOM only (SmolLM3-3B sets 2)
    hf = hf_causal_lm("llama", pretraining_tp=2)
    tokens = torch.randint(0, 101, (2, 24), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        torch.testing.assert_close(GPT.from_hf(hf).eval()(tokens)[0], hf(tokens).logits, rtol=0, atol=2e-4)


def test_an_unsupported_model_type_is_refused() -> None:
    torch.manual_seed(0)
    config = transformers.Starcoder2Config(
        vocab_size=50, hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=4
    )
    hf = transformers.Starcoder2ForCausalLM(config)
    with pytest.raises(ValueError, match="model_type='starcoder2'"):
        GPT.from_hf(hf)


def test_a_mixture_of_experts_model_is_refused_as_one() -> None:
    torch.manual_seed(0)
    config = transformers.MixtralConfig(
        vocab_size=50,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=1,
        num_attention_heads=4,
        num_key_value_heads=2,
        num_local_experts=2,
    )
    with pytest.raises(ValueError, match="mixture-of-experts"):
        GPT.from_hf(transformers.MixtralForCausalLM(config))


# -- DeepSeek-V3 (dense layers, multi-head latent attention) ---------------------------------------

DEEPSEEK_BASE = dict(
    vocab_size=101,
    hidden_size=32,
    intermediate_size=72,
    moe_intermediate_size=16,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=4,
    kv_lora_rank=16,
    q_lora_rank=None,
    qk_rope_head_dim=8,
    qk_nope_head_dim=8,
    v_head_dim=8,
    first_k_dense_replace=2,
    n_routed_experts=4,
    n_shared_experts=1,
    num_experts_per_tok=2,
    n_group=1,
    topk_group=1,
    max_position_embeddings=32,
)
DEEPSEEK_CASES = {
    "default": {},
    "q_lora": {"q_lora_rank": 12},
    "interleave": {"rope_interleave": True},
    "yarn": {
        "rope_parameters": {
            "rope_type": "yarn",
            "factor": 4.0,
            "original_max_position_embeddings": 8,
            "rope_theta": 10000.0,
            "mscale": 1.0,
            "mscale_all_dim": 1.0,
        }
    },
    "yarn_q_lora": {
        "q_lora_rank": 12,
        "rope_parameters": {
            "rope_type": "yarn",
            "factor": 4.0,
            "mscale": 0.707,
            "original_max_position_embeddings": 8,
            "mscale_all_dim": 0.707,
        },
    },
}


def hf_deepseek(**overrides):
    torch.manual_seed(0)
    return transformers.DeepseekV3ForCausalLM(transformers.DeepseekV3Config(**(DEEPSEEK_BASE | overrides))).eval()


@pytest.mark.parametrize("case", sorted(DEEPSEEK_CASES))
def test_deepseek_v3_logits_and_greedy_generation_match(case) -> None:
    hf = hf_deepseek(**DEEPSEEK_CASES[case])
    ours = GPT.from_hf(hf).eval()
    assert (
        isinstance(ours.blocks[0].attn, MultiHeadLatentAttention) and ours.config.layers[0].attention.kv_lora_rank == 16
    )
    idx = torch.randint(0, 101, (2, 48), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = hf(idx).logits
        got, _ = ours(idx)
    torch.testing.assert_close(got, expected, rtol=0, atol=2e-4)
    prompt = idx[:1, :5]
    assert torch.equal(
        ours.generate(prompt, 16, temperature=0),
        hf.generate(prompt, max_new_tokens=16, do_sample=False, pad_token_id=0),
    )


def test_deepseek_v3_whose_head_dim_is_its_rotary_width_imports() -> None:
    # real DeepSeek-V3 configs: head_dim = qk_rope_head_dim (64), not hidden_size // heads (56)
    hf = hf_deepseek(hidden_size=48, qk_rope_head_dim=4, qk_nope_head_dim=8, v_head_dim=8)
    assert hf.config.head_dim != hf.config.hidden_size // hf.config.num_attention_heads
    ours = GPT.from_hf(hf).eval()
    idx = torch.randint(0, 101, (1, 40), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        torch.testing.assert_close(ours(idx)[0], hf(idx).logits, rtol=0, atol=2e-4)


def test_deepseek_v3_with_moe_layers_is_refused() -> None:
    with pytest.raises(ValueError, match="first_k_dense_replace.*mixture-of-experts"):
        GPT.from_hf(hf_deepseek(first_k_dense_replace=1))

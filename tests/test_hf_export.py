"""GPT.to_hf and ``posenc export``: each exportable architecture becomes the Hugging Face family that
expresses it, with logits within 2e-4 (float32) of posenc's -- as returned by ``to_hf()`` and again
after ``save_pretrained`` / ``AutoModelForCausalLM.from_pretrained`` from the folder, past the
context for relative encodings -- and importing it back gives the same architecture. Every
parameter is moved off its initial value first (gains at 1 and biases at 0 would hide a wrong
mapping). What no family expresses is refused with each family's reason."""

from __future__ import annotations

import os
import stat

import pytest
import torch
from _hf_helpers import perturbed

from posenc import GPT, GPTConfig
from posenc.checkpoint import load_checkpoint
from posenc.cli import main
from posenc.hf.export import EXPORTERS
from posenc.hf.family import comparable

transformers = pytest.importorskip("transformers")

LLAMA_BLOCK = dict(norm="rmsnorm", norm_eps=1e-6, mlp="swiglu", bias=False)
#: posenc configuration -> (the family it exports to, its fields)
CASES = {
    "learned absolute (GPT-2)": ("gpt2", dict(pe="absolute", bias=True)),
    "learned absolute, untied (GPT-2)": ("gpt2", dict(pe="absolute", bias=True, tie_embeddings=False)),
    "the study's RoPE model": ("gpt_neox", dict(pe="rope", bias=False)),  # biases HF has become zeros
    "RoPE with biases, parallel": ("gpt_neox", dict(pe="rope", bias=True, mlp="gelu_exact")),
    "partial rotary, base 500": ("gpt_neox", dict(pe="rope", bias=True, rotary_dim=4, rope_base=500.0)),
    "Llama, GQA, untied": ("llama", dict(pe="rope", n_kv_head=2, tie_embeddings=False, **LLAMA_BLOCK)),
    "Llama, YaRN": (
        "llama",
        dict(pe="rope", rope_scaling={"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 8})
        | LLAMA_BLOCK,
    ),
    "QK-norm (Qwen3)": ("qwen3", dict(pe="rope", qk_norm=True, qk_norm_type="rms", n_kv_head=2, **LLAMA_BLOCK)),
    "QK-norm, eps 1e-5 (Qwen3)": (
        "qwen3",
        dict(pe="rope", qk_norm=True, qk_norm_type="rms", attention_options={"qk_norm_eps": 1e-5})
        | LLAMA_BLOCK
        | dict(norm_eps=1e-5),
    ),
    "RNoPE (SmolLM3)": ("smollm3", dict(pe="rnope", **LLAMA_BLOCK)),
    "RNoPE-SWA, parallel (Cohere 2)": (
        "cohere2",
        dict(
            layer_pe=("rope", "rope", "rope", "nope"),
            layer_window=(6, 6, 6, None),
            rope_layout="interleaved",
            norm="layernorm",
            mlp="swiglu",
            bias=False,
            n_kv_head=2,
        ),
    ),
    "ALiBi, embedding norm (BLOOM)": ("bloom", dict(pe="alibi", bias=True)),
    "ALiBi, no biases, exact GELU (MPT)": ("mpt", dict(pe="alibi", bias=False, mlp="gelu_exact")),
}
#: configurations beyond the flat fields: every block parallel with one norm, a logit scale, an
#: embedding norm
STRUCTURE = {
    "RNoPE-SWA, parallel (Cohere 2)": lambda c: c.map_layers(
        lambda i, layer: layer.replace(block=layer.block.replace(parallel=True))
    ).replace(head=c.head.replace(logit_scale=0.5)),
    "ALiBi, embedding norm (BLOOM)": lambda c: c.replace(embedding=c.embedding.replace(norm={"eps": 1e-5})),
}
VOCAB, BLOCK = 97, 32


def posenc_model(fields: dict, parallel: bool = False, structure=None) -> GPT:
    config = GPTConfig(n_layer=4, n_head=4, n_embd=32, block_size=BLOCK, vocab_size=VOCAB, **fields)
    if parallel:
        config = config.map_layers(lambda i, layer: layer.replace(block=layer.block.replace(parallel=True)))
    if structure is not None:
        config = structure(config)
    torch.manual_seed(0)
    return perturbed(GPT(config))


def one_norm(model: GPT) -> GPT:
    """Parallel blocks reading one norm (Cohere 2): ln_2 equal to ln_1."""
    with torch.no_grad():
        for block in model.blocks:
            block.ln_2.load_state_dict(block.ln_1.state_dict())
    return model


def assert_same_logits(ours: GPT, hf: torch.nn.Module) -> None:
    # a learned table ends at the context, and so does MPT's ALiBi tensor in Hugging Face's model
    T = BLOCK if ours.config.input_encoding or hf.config.model_type == "mpt" else BLOCK + 16
    idx = torch.randint(0, VOCAB, (2, T), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        torch.testing.assert_close(hf(idx).logits, ours(idx)[0], rtol=0, atol=2e-4)


@pytest.mark.parametrize("case", sorted(CASES))
def test_export_matches_logits_and_reloads(case, tmp_path) -> None:
    family, fields = CASES[case]
    ours = posenc_model(fields, parallel="parallel" in case, structure=STRUCTURE.get(case))
    if family == "cohere2":
        ours = one_norm(ours)
    hf = ours.to_hf()
    assert hf.config.model_type == family
    assert_same_logits(ours, hf)
    hf.save_pretrained(tmp_path)
    assert (tmp_path / "model.safetensors").exists()
    reloaded = transformers.AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    assert_same_logits(ours, reloaded)
    back = GPT.from_hf(reloaded)  # and the import of the export is the same architecture
    assert comparable(back.config) == comparable(ours.config)


@pytest.mark.parametrize("case", ["the study's RoPE model", "RNoPE (SmolLM3)"])
def test_exported_greedy_generation_equals_posenc(case) -> None:
    ours = posenc_model(CASES[case][1])
    hf = ours.to_hf()
    prompt = torch.randint(0, VOCAB, (1, 5), generator=torch.Generator().manual_seed(2))
    expected = ours.generate(prompt, 20, temperature=0)
    assert torch.equal(hf.generate(prompt, max_new_tokens=20, do_sample=False, pad_token_id=0), expected)


def test_parallel_blocks_with_two_different_norms_do_not_export_to_one_norm() -> None:
    case = "RNoPE-SWA, parallel (Cohere 2)"
    model = posenc_model(CASES[case][1], structure=STRUCTURE[case])  # ln_1 and ln_2 differ
    with pytest.raises(ValueError, match=r"cohere2: cohere2 has one tensor for 'blocks.0.ln_\d.weight'"):
        model.to_hf()


@pytest.mark.parametrize("pe", ["fire", "kerple", "t5"])
def test_what_no_family_expresses_is_refused_with_every_reason(pe) -> None:
    with pytest.raises(ValueError, match="no Hugging Face family expresses") as e:
        posenc_model(dict(pe=pe)).to_hf()
    message = str(e.value)
    assert all(f"\n  {family}: " in message for family in EXPORTERS) and f"'{pe}'" in message  # one line each
    assert len(message.splitlines()) == 1 + len(EXPORTERS)


def test_latent_attention_is_refused_by_the_multi_head_families_by_its_kind() -> None:
    model = GPT(GPTConfig.from_preset("tiny", attention="mla", pe="rope"))
    with pytest.raises(ValueError, match="no Hugging Face family expresses") as e:
        model.to_hf()
    for family in ("gpt_neox", "llama", "qwen3", "smollm3", "cohere2"):
        assert f"\n  {family}: its attention is MultiHeadLatentAttention.Config; {family} has multi-head" in str(
            e.value
        )


def test_a_qk_norm_eps_apart_from_the_block_norms_is_refused_by_qwen3() -> None:
    fields = dict(pe="rope", qk_norm=True, qk_norm_type="rms") | LLAMA_BLOCK | dict(norm_eps=1e-5)
    with pytest.raises(ValueError, match=r"qwen3: layers\[i\]\.attention\.qk_norm_eps is 1e-06 here, 1e-05 in qwen3"):
        posenc_model(fields).to_hf()  # Hugging Face's Qwen3 has one rms_norm_eps for both


def test_interleaved_rope_without_windows_is_refused_by_the_families_that_rotate_halves() -> None:
    with pytest.raises(
        ValueError, match="gpt_neox: RoPE pairs channels in the 'interleaved' layout; gpt_neox uses 'half'"
    ):
        posenc_model(dict(pe="rope", rope_layout="interleaved")).to_hf()


def test_export_command_writes_a_folder_transformers_loads(data_dir, tmp_path, capsys) -> None:
    run = tmp_path / "run"
    argv = ["train", "--preset", "tiny", "--pe", "rope", "--max-iters", "2", "--eval-interval", "2"]
    assert main([*argv, "--data-dir", str(data_dir), "--out-dir", str(run), "--no-progress"]) == 0
    capsys.readouterr()
    assert main(["export", str(run), "--hf", str(tmp_path / "hf")]) == 0
    assert "gpt_neox" in capsys.readouterr().out
    hf = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "hf").eval()
    ours = GPT.from_hf(hf)  # the checkpoint's weights, through the folder
    state = load_checkpoint(run)["model"]
    assert state and all(torch.equal(ours.state_dict()[k], v) for k, v in state.items())
    # the folder follows the umask (not mkdtemp's 0700), and holds the run's byte-level tokenizer
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE((tmp_path / "hf").stat().st_mode) == 0o777 & ~umask
    tokenizer = transformers.AutoTokenizer.from_pretrained(tmp_path / "hf")
    text = "def foo(x):\n\treturn 'héllo' + x  # 日本"
    assert tokenizer.encode(text, add_special_tokens=False) == list(text.encode()) and len(tokenizer) == 256
    assert tokenizer.decode(tokenizer.encode(text)) == text
    # an existing folder is never overwritten
    assert main(["export", str(run), "--hf", str(tmp_path / "hf")]) == 2
    assert "already exists" in capsys.readouterr().err


def test_the_gpt2_tokenizer_written_beside_a_model_gives_tiktokens_ids(gpt2_cache, tmp_path) -> None:
    from posenc.data import get_tokenizer
    from posenc.hf.export import save_hf

    save_hf(posenc_model(dict(pe="absolute", bias=True)).to_hf(), tmp_path / "hf", tokenizer="gpt2")
    tokenizer = transformers.AutoTokenizer.from_pretrained(tmp_path / "hf")
    text = "The quick brown fox's 1234 jumps\n\n  over  déjà vu -- 日本語 <tags> '''docs'''\tdef foo(): pass"
    ids = tokenizer.encode(text, add_special_tokens=False)
    assert ids == get_tokenizer("gpt2").encode(text) and tokenizer.decode(ids) == text
    assert len(tokenizer) == 50257 and tokenizer.eos_token_id == 50256

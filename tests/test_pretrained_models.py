"""The real models of posenc.pretrained.MODELS, fetched into the cache (``posenc fetch NAME``; .ci/run
does it): GPT.from_gguf against Hugging Face's own GGUF load of the same file (the same dequantized
weights, an independent implementation) and the file's tokenizer. Each test skips, saying why,
when its model is not in the cache or transformers/gguf are not installed.

Gemma 3 takes minutes to load on two cores (its 262k-token vocabulary above all), so its tests
also need ``POSENC_TEST_GEMMA=1``; .ci/run fetches SmolLM2 only.

Text: the standard library's ``inspect.py`` (its tokens depend on the Python version, the
comparisons do not). Tolerances: logits 1e-3 absolute against Hugging Face with its rotation angles
computed exactly (it multiplies positions by float32 frequencies, which drift at large positions;
as it is, the figure is stated per model below), losses 1e-4 relative. benchmarks/real_models.py
measures the same at full size (an 8192-token loss, 64 greedy tokens) and against llama.cpp.
"""

from __future__ import annotations

import inspect
import os
from pathlib import Path

import pytest
import torch

from posenc import GPT
from posenc.pretrained import MODELS, cache_dir, fetch, hf_model_from_gguf, load_tokenizer


def model_path(name: str) -> Path:
    pytest.importorskip("transformers")
    pytest.importorskip("gguf")
    path = cache_dir() / MODELS[name].file
    if not path.is_file():
        pytest.skip(f"{MODELS[name].file} is not in {cache_dir()}: run `posenc fetch {name}` first")
    return fetch(name)  # checks the hash


class Loaded:
    def __init__(self, name: str) -> None:
        path = model_path(name)
        self.tok = load_tokenizer(path)
        self.ours = GPT.from_gguf(path)
        self.hf = hf_model_from_gguf(path)
        first = [self.tok.bos_token_id] if self.tok.add_bos else []
        self.text = first + self.tok.encode(Path(inspect.__file__).read_text())

    def window(self, T: int) -> torch.Tensor:
        return torch.tensor([self.text[: T + 1]])


@pytest.fixture(scope="module")
def smollm2() -> Loaded:
    return Loaded("smollm2-135m")


@pytest.fixture(scope="module")
def gemma3() -> Loaded:
    if os.environ.get("POSENC_TEST_GEMMA") != "1":
        pytest.skip("Gemma 3 270M takes minutes to load on 2 cores: set POSENC_TEST_GEMMA=1 to test it")
    return Loaded("gemma3-270m")


def exact_angles(hf: torch.nn.Module) -> None:
    """Hugging Face's rotary embedding with its angles computed in float64 from exact frequencies."""
    rot, cfg = hf.model.rotary_emb, hf.config

    def forward(x, position_ids, layer_type=None):
        params = cfg.rope_parameters if layer_type is None else cfg.rope_parameters[layer_type]
        assert params["rope_type"] == "default", params  # the two models here use plain RoPE
        inv = 1.0 / params["rope_theta"] ** (torch.arange(0, cfg.head_dim, 2, dtype=torch.float64) / cfg.head_dim)
        emb = (position_ids[..., None].double() * inv).repeat(1, 1, 2)
        return emb.cos().to(x.dtype), emb.sin().to(x.dtype)

    rot.forward = forward


def chat(m: Loaded, question: str) -> torch.Tensor:
    text = m.tok.hf.apply_chat_template(
        [{"role": "user", "content": question}], tokenize=False, add_generation_prompt=True
    )
    return torch.tensor([m.tok.encode(text)])


def assert_forward_matches(m: Loaded, T: int, as_is: float) -> None:
    """On T tokens of Python source: logits within 1e-3 of Hugging Face with exact angles and
    within ``as_is`` of Hugging Face as it is; the loss within 1e-4 relative."""
    w = m.window(T)
    with torch.no_grad():
        logits, loss = m.ours(w[:, :-1], w[:, 1:])
        ref = m.hf(w[:, :-1]).logits
        saved = m.hf.model.rotary_emb.forward
        exact_angles(m.hf)
        try:
            exact = m.hf(w[:, :-1]).logits
        finally:
            m.hf.model.rotary_emb.forward = saved
    ref_loss = torch.nn.functional.cross_entropy(ref[0], w[0, 1:])
    diff, diff_exact = (logits - ref).abs().max().item(), (logits - exact).abs().max().item()
    print(f"T={T}: max |logit diff| {diff:.2e} ({diff_exact:.2e} exact angles), loss {loss:.6f} vs {ref_loss:.6f}")
    assert diff_exact < 1e-3 and diff < as_is
    assert abs(loss.item() - ref_loss.item()) <= 1e-4 * ref_loss.item()


def assert_greedy_matches(m: Loaded, prompts: list[torch.Tensor], new: int) -> None:
    """Cached greedy generation equal to Hugging Face's, both stopping at the model's stop ids."""
    for prompt in prompts:
        ours = m.ours.generate(prompt, new, temperature=0)
        ref = m.hf.generate(prompt, max_new_tokens=new, do_sample=False, eos_token_id=list(m.ours.eos_token_id))
        assert torch.equal(ours, ref), (m.tok.decode(ours[0].tolist()), m.tok.decode(ref[0].tolist()))


# -- SmolLM2-135M-Instruct ------------------------------------------------------------------------


def test_smollm2_tokenizer_round_trips_and_knows_its_special_tokens(smollm2) -> None:
    tok = smollm2.tok
    assert (tok.eos_token_id, tok.bos_token_id, tok.add_bos, tok.vocab_size) == (2, 1, False, 49152)
    source = Path(inspect.__file__).read_text()[:5000]
    assert tok.decode(tok.encode(source)) == source
    assert tok.encode("<|im_start|>user") == [1, *tok.encode("user")]
    assert tok.decode([2]) == "<|im_end|>"


def test_smollm2_answers_and_stops_at_the_end_of_its_turn(smollm2) -> None:
    """The model's stop id comes from the file: the answer ends at <|im_end|>."""
    prompt = chat(smollm2, "What is the capital of France?")
    out = smollm2.ours.generate(prompt, 64, temperature=0)
    assert smollm2.ours.eos_token_id == (2,)
    assert smollm2.tok.decode(out[0, prompt.shape[1] :].tolist()) == "The capital of France is Paris.<|im_end|>"


def test_smollm2_logits_and_loss_match_hugging_face_at_2048_tokens(smollm2) -> None:
    assert smollm2.ours.config.block_size == 8192 and smollm2.ours.config.n_layer == 30
    assert_forward_matches(smollm2, 2048, as_is=2e-3)  # measured: 8.0e-4 as is


def test_smollm2_greedy_generation_matches_hugging_face_for_64_tokens(smollm2) -> None:
    prompts = [
        chat(smollm2, "Write a Python function that reverses a list."),
        smollm2.window(40)[:, :40],
        torch.tensor([smollm2.tok.encode("Once upon a time, in a small village by the sea,")]),
    ]
    assert_greedy_matches(smollm2, prompts, 64)


def test_smollm2_agrees_with_llama_cpp(smollm2) -> None:
    """An independent runtime that multiplies the quantized weights natively: the loss on 1024
    tokens of Python source within 1% of llama.cpp's, and the same top-1 token wherever posenc's
    two best logits are more than 1 apart. Needs llama-cpp-python (docs/models.md: how to build it)."""
    llama_cpp = pytest.importorskip("llama_cpp")
    T, w = 1024, smollm2.text[:1025]
    llm = llama_cpp.Llama(model_path=str(model_path("smollm2-135m")), n_ctx=T, logits_all=True, verbose=False)
    llm.eval(w[:-1])
    cpp = torch.tensor(llm.scores[:T], dtype=torch.float32)  # (T, V)
    with torch.no_grad():
        logits = smollm2.ours(torch.tensor([w[:-1]]))[0][0]
    targets = torch.tensor(w[1:])
    loss, cpp_loss = (torch.nn.functional.cross_entropy(x, targets).item() for x in (logits, cpp))
    top2 = logits.topk(2, dim=-1).values
    clear = top2[:, 0] - top2[:, 1] > 1
    print(f"llama.cpp loss {cpp_loss:.4f}, posenc {loss:.4f}; {int(clear.sum())} positions with a gap over 1")
    assert abs(loss - cpp_loss) <= 0.01 * cpp_loss
    assert clear.sum() > T // 2 and torch.equal(logits.argmax(-1)[clear], cpp.argmax(-1)[clear])


# -- Gemma 3 270M ---------------------------------------------------------------------------------


def test_gemma3_tokenizer_and_stop_ids(gemma3) -> None:
    tok = gemma3.tok
    assert (tok.eos_token_id, tok.bos_token_id, tok.add_bos, tok.vocab_size) == (1, 2, True, 262144)
    source = Path(inspect.__file__).read_text()[:5000]
    assert tok.decode(tok.encode(source)) == source
    assert gemma3.ours.eos_token_id[0] == 1


def test_gemma3_logits_and_loss_match_hugging_face_at_1024_tokens(gemma3) -> None:
    layers = gemma3.ours.config.layers
    assert [spec.mask.window for spec in layers[:6]] == [512] * 5 + [None]
    assert_forward_matches(gemma3, 1024, as_is=1e-2)  # measured: 6.8e-3 as is, 8.5e-4 exact


def test_gemma3_greedy_generation_matches_hugging_face(gemma3) -> None:
    bos = [gemma3.tok.bos_token_id]
    prompts = [
        torch.tensor([bos + gemma3.tok.encode("The capital of France is")]),
        gemma3.window(40)[:, :40],
        torch.tensor([bos + gemma3.tok.encode("def fibonacci(n):")]),
    ]
    assert_greedy_matches(gemma3, prompts, 32)

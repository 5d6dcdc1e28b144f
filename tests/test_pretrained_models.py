"""The real models of posenc.pretrained.MODELS, fetched into the cache (``posenc fetch NAME``; .ci/run
does it): GPT.from_gguf against Hugging Face's own GGUF load of the same file (the same dequantized
weights, an independent implementation) and the file's tokenizer. Each test skips, saying why,
when its model is not in the cache or transformers/gguf are not installed.

Text: the standard library's ``inspect.py`` (its tokens depend on the Python version, the
comparisons do not). Tolerances: logits 1e-3 absolute (Hugging Face computes its rotation angles in
float32, which drift from exact ones at large positions), losses 1e-4 relative.
"""

from __future__ import annotations

import inspect
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
    return Loaded("gemma3-270m")


def chat(m: Loaded, question: str) -> torch.Tensor:
    text = m.tok.hf.apply_chat_template(
        [{"role": "user", "content": question}], tokenize=False, add_generation_prompt=True
    )
    return torch.tensor([m.tok.encode(text)])


def assert_forward_matches(m: Loaded, T: int) -> None:
    """Logits within 1e-3 and loss within 1e-4 relative on T tokens of Python source."""
    w = m.window(T)
    with torch.no_grad():
        logits, loss = m.ours(w[:, :-1], w[:, 1:])
        ref = m.hf(w[:, :-1])
    ref_loss = torch.nn.functional.cross_entropy(ref.logits[0], w[0, 1:])
    diff = (logits - ref.logits).abs().max().item()
    print(f"T={T}: max |logit diff| {diff:.2e}, loss {loss.item():.6f} vs {ref_loss.item():.6f}")
    assert diff < 1e-3
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
    assert_forward_matches(smollm2, 2048)


def test_smollm2_greedy_generation_matches_hugging_face_for_64_tokens(smollm2) -> None:
    prompts = [
        chat(smollm2, "Write a Python function that reverses a list."),
        smollm2.window(40)[:, :40],
        torch.tensor([smollm2.tok.encode("Once upon a time, in a small village by the sea,")]),
    ]
    assert_greedy_matches(smollm2, prompts, 64)


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
    assert_forward_matches(gemma3, 1024)


def test_gemma3_greedy_generation_matches_hugging_face(gemma3) -> None:
    bos = [gemma3.tok.bos_token_id]
    prompts = [
        torch.tensor([bos + gemma3.tok.encode("The capital of France is")]),
        gemma3.window(40)[:, :40],
        torch.tensor([bos + gemma3.tok.encode("def fibonacci(n):")]),
    ]
    assert_greedy_matches(gemma3, prompts, 32)

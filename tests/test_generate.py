"""GPT.generate as users call it: top-p sampling after temperature and top-k, stopping at an
end-of-sequence id per row of a batch, and the model's own stop ids by default. References:
Hugging Face's logits warpers and ``generate`` on a small random Llama imported with ``from_hf``,
and a plain loop of uncached forwards."""

from __future__ import annotations

import pytest
import torch

from posenc import GPT
from posenc.sampling import filter_logits

transformers = pytest.importorskip("transformers")
from transformers import generation as hf_generation  # noqa: E402

V = 61


@pytest.fixture(scope="module")
def pair():
    """(posenc GPT, the Hugging Face Llama it was imported from), random weights, float32."""
    torch.manual_seed(0)
    config = transformers.LlamaConfig(
        vocab_size=V,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=64,
        initializer_range=0.3,  # peaked distributions: greedy tokens are not near ties
        pad_token_id=0,
        bos_token_id=None,
        eos_token_id=None,
    )
    hf = transformers.LlamaForCausalLM(config).eval()
    return GPT.from_hf(hf).eval(), hf


def hf_warped(logits: torch.Tensor, temperature: float, top_k: int | None, top_p: float | None) -> torch.Tensor:
    warpers = [hf_generation.TemperatureLogitsWarper(temperature)]
    if top_k is not None:
        warpers.append(hf_generation.TopKLogitsWarper(top_k))
    if top_p is not None:
        warpers.append(hf_generation.TopPLogitsWarper(top_p))
    for warper in warpers:
        logits = warper(None, logits)
    return logits


@pytest.mark.parametrize(
    "temperature, top_k, top_p", [(1.0, None, 0.9), (0.7, None, 0.5), (1.3, 20, 0.8), (1.0, 5, None), (0.5, None, 1.0)]
)
def test_filter_logits_keeps_what_hugging_face_warpers_keep(temperature, top_k, top_p) -> None:
    logits = 3 * torch.randn(6, V, generator=torch.Generator().manual_seed(0))
    ours = filter_logits(logits, temperature, top_k, top_p)
    ref = hf_warped(logits.clone(), temperature, top_k, top_p)
    assert torch.equal(torch.isinf(ours), torch.isinf(ref))
    torch.testing.assert_close(ours[~torch.isinf(ours)], ref[~torch.isinf(ref)])
    if top_p is not None and top_p < 1:  # it did filter: the kept mass is the smallest reaching top_p
        probs = torch.softmax(logits / temperature if top_k is None else ours, -1)
        kept = torch.where(torch.isinf(ours), 0.0, probs).sum(-1)
        assert (kept >= top_p - 1e-6).all() and torch.isinf(ours).any()


def test_top_p_keeps_at_least_the_most_likely_token() -> None:
    logits = torch.tensor([[5.0, 0.0, -1.0]])
    assert torch.isinf(filter_logits(logits, top_p=0.01)).tolist() == [[False, True, True]]


def test_sampling_equals_a_loop_of_uncached_forwards(pair) -> None:
    """Cached generate with temperature, top-k and top-p draws what a brute-force loop draws from
    Hugging Face's warpers with the same generator."""
    model, _ = pair
    prompt = torch.randint(1, V, (3, 5), generator=torch.Generator().manual_seed(1))
    settings = dict(temperature=0.8, top_k=30, top_p=0.9)
    out = model.generate(prompt, 12, **settings, generator=torch.Generator().manual_seed(7), eos_token_id=())
    gen, idx = torch.Generator().manual_seed(7), prompt
    with torch.no_grad():
        for _ in range(12):
            probs = torch.softmax(hf_warped(model(idx)[0][:, -1], *settings.values()), -1)
            idx = torch.cat((idx, torch.multinomial(probs, 1, generator=gen)), dim=1)
    assert torch.equal(out, idx)


def greedy_rows(model: GPT, rows: list[list[int]], new: int) -> list[list[int]]:
    """Each prompt alone, greedy, ``new`` tokens, no stopping."""
    return [model.generate(torch.tensor([r]), new, temperature=0, eos_token_id=())[0, len(r) :].tolist() for r in rows]


def left_padded(rows: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
    T = max(map(len, rows))
    idx = torch.tensor([[0] * (T - len(r)) + r for r in rows])
    mask = torch.tensor([[0] * (T - len(r)) + [1] * len(r) for r in rows])
    return idx, mask


ROWS = [[5, 17, 3, 44], [9, 2], [33, 8, 21, 7, 50, 12]]


def test_each_row_stops_at_its_end_of_sequence_as_hugging_face_does(pair) -> None:
    """A left-padded batch with a stop id that rows emit at different steps: a finished row gets
    the stop id from then on, the others go on; Hugging Face's generate gives the same tokens."""
    model, hf = pair
    alone = greedy_rows(model, ROWS, 10)
    eos = alone[0][2]  # row 0 emits it at its third step; choose it so that some row never does
    assert any(eos not in r for r in alone) or pytest.fail(f"every row emits {eos}: {alone}")
    idx, mask = left_padded(ROWS)
    out = model.generate(idx, 10, temperature=0, attention_mask=mask, eos_token_id=eos)
    for row, tokens in zip(out[:, idx.shape[1] :].tolist(), alone):
        stop = tokens.index(eos) + 1 if eos in tokens else len(tokens)
        assert row == tokens[:stop] + [eos] * (len(tokens) - stop)
    expected = hf.generate(
        idx, attention_mask=mask, max_new_tokens=10, do_sample=False, eos_token_id=eos, pad_token_id=eos
    )
    assert torch.equal(out, expected)


def test_generation_ends_when_every_row_has_finished(pair) -> None:
    """Stopping ids from the model by default (as from_gguf sets them), several ids, or none."""
    model, _ = pair
    alone = greedy_rows(model, ROWS[:2], 10)
    stops = (alone[0][1], alone[1][3])  # row 0 finishes at step 2, row 1 at step 4 at the latest
    idx, mask = left_padded(ROWS[:2])
    model.eos_token_id = stops
    try:
        out = model.generate(idx, 10, temperature=0, attention_mask=mask)
    finally:
        model.eos_token_id = ()
    finished = [min(r.index(s) for s in stops if s in r) + 1 for r in alone]
    assert out.shape[1] == idx.shape[1] + max(finished) < idx.shape[1] + 10
    assert torch.equal(out, model.generate(idx, 10, temperature=0, attention_mask=mask, eos_token_id=stops))
    assert model.generate(idx, 10, temperature=0, attention_mask=mask).shape[1] == idx.shape[1] + 10


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(top_p=0.0), "top_p.*0.0"),
        (dict(top_p=1.5), "top_p.*1.5"),
        (dict(eos_token_id=V), f"eos_token_id.*vocab_size={V}.*{V}"),
        (dict(eos_token_id=[1, -2]), r"eos_token_id.*\[1, -2\]"),
        (dict(eos_token_id=1.0), "eos_token_id.*1.0"),
    ],
)
def test_generate_refuses_bad_sampling_and_stop_arguments(pair, kwargs, match) -> None:
    with pytest.raises(ValueError, match=match):
        pair[0].generate(torch.tensor([[1, 2]]), 2, **kwargs)

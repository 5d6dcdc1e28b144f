"""Packed documents and left-padded generation (posenc.packing, GPT.forward(document_ids=...),
GPT.generate(attention_mask=...)), for every registered variant: a packed row equals separate
forwards of its documents, a padded batch generates what each row generates alone, and malformed
ids or masks are refused by name."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from posenc import GPT, VARIANTS, GPTConfig, Mask
from posenc.data import document_ids
from posenc.packing import positions_in_documents


def model(variant: str, **extra) -> GPT:
    torch.manual_seed(0)
    return GPT(GPTConfig.from_preset("tiny", pe=variant, **extra)).double().eval()


def chunked(variant: str, chunk: int = 4) -> GPT:
    """``variant`` with every layer chunked (Llama 4): chunks count from each document's start."""
    config = GPTConfig.from_preset("tiny", pe=variant).map_layers(
        lambda i, layer: layer.replace(mask=Mask(chunk=chunk))
    )
    torch.manual_seed(0)
    return GPT(config).double().eval()


MODELS = {v: model(v) for v in sorted(VARIANTS)} | {f"{v}+chunk4": chunked(v) for v in ("rope", "alibi", "cope")}


def tokens(n: int, seed: int) -> torch.Tensor:
    return torch.randint(1, 256, (1, n), generator=torch.Generator().manual_seed(seed))


@torch.no_grad()
@pytest.mark.parametrize("variant", sorted(MODELS))
@given(lengths=st.lists(st.integers(1, 9), min_size=1, max_size=4), seed=st.integers(0, 1000))
def test_a_packed_row_equals_separate_forwards_of_its_documents(variant, lengths, seed) -> None:
    m = MODELS[variant]
    docs = [tokens(n, seed + i) for i, n in enumerate(lengths)]
    row = torch.cat(docs, dim=1)
    ids = torch.cat([torch.full((1, n), i) for i, n in enumerate(lengths)], dim=1) * 3  # any non-decreasing ids
    packed, _ = m(row, document_ids=ids)
    separate = torch.cat([m(d)[0] for d in docs], dim=1)
    torch.testing.assert_close(packed, separate, rtol=0, atol=1e-4)


@torch.no_grad()
@pytest.mark.parametrize("variant", sorted(MODELS))
def test_a_packed_row_decodes_chunk_by_chunk_as_in_one_forward(variant) -> None:
    m = MODELS[variant]
    row = tokens(14, 3)
    ids = torch.tensor([[0] * 5 + [1] * 6 + [2] * 3])
    full, _ = m(row, document_ids=ids)
    cache = m.new_cache()
    chunks = [m(row[:, a:b], cache=cache, document_ids=ids[:, a:b])[0] for a, b in ((0, 4), (4, 9), (9, 14))]
    torch.testing.assert_close(torch.cat(chunks, dim=1), full, rtol=0, atol=1e-9)


@torch.no_grad()
def test_packing_changes_the_logits_of_later_documents() -> None:
    # the control: without ids the second document sees the first
    m = MODELS["nope"]
    row = tokens(10, 4)
    ids = torch.tensor([[0] * 5 + [1] * 5])
    assert (m(row, document_ids=ids)[0][:, 5:] - m(row)[0][:, 5:]).abs().max() > 1e-3


@torch.no_grad()
@pytest.mark.parametrize("variant", sorted(MODELS))
@pytest.mark.parametrize("use_cache", [True, False])
def test_left_padded_generation_equals_each_row_alone(variant, use_cache) -> None:
    m = MODELS[variant]
    prompts = [tokens(n, 10 + n) for n in (3, 7, 5)]
    width = max(p.shape[1] for p in prompts)
    batch = torch.cat([torch.cat((torch.zeros(1, width - p.shape[1], dtype=torch.long), p), dim=1) for p in prompts])
    mask = torch.stack([torch.arange(width) >= width - p.shape[1] for p in prompts])
    out = m.generate(batch, 10, temperature=0, attention_mask=mask, use_cache=use_cache)
    for row, p in enumerate(prompts):
        alone = m.generate(p, 10, temperature=0)
        assert torch.equal(out[row, width - p.shape[1] :], alone[0]), (variant, row)


def test_positions_restart_at_every_document() -> None:
    ids = torch.tensor([[0, 0, 0, 4, 4, 9], [1, 1, 1, 1, 1, 1]])
    assert positions_in_documents(ids).tolist() == [[0, 1, 2, 0, 1, 0], [0, 1, 2, 3, 4, 5]]


def test_document_ids_from_end_of_text_tokens() -> None:
    x = torch.tensor([[5, 6, 0, 7, 0, 0, 8]])  # EOT 0 closes each document
    assert document_ids(x, eot=0).tolist() == [[0, 0, 0, 1, 1, 2, 3]]


B, T = 2, 6
BAD_IDS = {
    "not a tensor": ([[0] * T] * B, TypeError, "document_ids"),
    "float": (torch.zeros(B, T), TypeError, "dtype"),
    "wrong shape": (torch.zeros(B, T + 1, dtype=torch.long), ValueError, "(2, 7)"),
    "decreasing": (torch.tensor([[0, 0, 1, 1, 0, 0], [0] * T]), ValueError, "row 0"),
}
BAD_MASKS = {
    "not a tensor": ([[1] * T] * B, TypeError, "attention_mask"),
    "float": (torch.ones(B, T), TypeError, "attention_mask"),
    "wrong shape": (torch.ones(B, T - 1, dtype=torch.bool), ValueError, "(2, 5)"),
    "right padding": (torch.tensor([[1, 1, 1, 1, 0, 0], [1] * T]), ValueError, "non-decreasing"),
    "all padding": (torch.tensor([[0] * T, [1] * T]), ValueError, "rows [0] are all padding"),
    "not 0/1": (torch.tensor([[0, 2, 2, 2, 2, 2], [1] * T]), ValueError, "only 0 and 1"),
}


@pytest.mark.parametrize("case", sorted(BAD_IDS))
def test_bad_document_ids_are_refused(case) -> None:
    ids, error, needle = BAD_IDS[case]
    with pytest.raises(error, match=needle.replace("(", r"\(").replace(")", r"\)").replace("[", r"\[")):
        MODELS["rope"](torch.ones(B, T, dtype=torch.long), document_ids=ids)


@pytest.mark.parametrize("case", sorted(BAD_MASKS))
def test_bad_attention_masks_are_refused(case) -> None:
    mask, error, needle = BAD_MASKS[case]
    with pytest.raises(error, match=needle.replace("(", r"\(").replace(")", r"\)").replace("[", r"\[")):
        MODELS["rope"].generate(torch.ones(B, T, dtype=torch.long), 2, attention_mask=mask)


def test_a_cache_filled_without_ids_refuses_them_later() -> None:
    m = MODELS["rope"]
    cache = m.new_cache()
    m(torch.ones(1, 4, dtype=torch.long), cache=cache)
    with pytest.raises(ValueError, match="4 tokens seen without document_ids"):
        m(torch.ones(1, 2, dtype=torch.long), cache=cache, document_ids=torch.zeros(1, 2, dtype=torch.long))


def test_generate_refuses_a_1d_prompt_by_name() -> None:
    with pytest.raises(ValueError, match=r"idx must have shape \(B, T\)"):
        MODELS["rope"].generate(torch.ones(4, dtype=torch.long), 2)

"""The KV cache of sliding-window and chunked layers (posenc.attention.base.LayerKVCache, MLACache):
it keeps only the keys a later query can see, and cached decoding still equals the full forward
(prefill shorter and longer than the window, several tokens per step, left-padded batches, layers
mixing global and sliding ones); its stored size stays bounded while the sequence grows."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from posenc import GPT, GPTConfig, Mask

W, C = 5, 4
MASKS = {
    "window": lambda i: Mask(window=W),
    "chunk": lambda i: Mask(chunk=C),
    "window+chunk": lambda i: Mask(window=3, chunk=C),
    "gemma-mix": lambda i: Mask() if i % 2 else Mask(window=W),  # local, global, local, global
}
VARIANTS = ("rope", "alibi", "t5", "fire", "fox", "cope", "stickbreaking", "rope_sinks", "mla")
PLANS = {"short-prefill": (2, 1, 1, 1, 3, 1, 6, 1, 1, 1), "long-prefill": (11, 1, 1, 4, 1, 2)}


def model(variant: str, masks, n_layer: int = 4) -> GPT:
    config = GPTConfig.from_preset("tiny", pe=variant, n_layer=n_layer)
    config = config.map_layers(lambda i, layer: layer.replace(mask=masks(i)))
    torch.manual_seed(0)
    return GPT(config).double().eval()


def tokens(B: int, T: int, seed: int = 0) -> torch.Tensor:
    return torch.randint(1, 256, (B, T), generator=torch.Generator().manual_seed(seed))


def cached(m: GPT, idx: torch.Tensor, plan, **kwargs) -> tuple[torch.Tensor, object]:
    """The logits of ``idx`` read through one cache in steps of ``plan`` tokens."""
    cache, outs, start = m.new_cache(), [], 0
    for n in plan:
        extra = {k: v[:, start : start + n] for k, v in kwargs.items()}
        outs.append(m(idx[:, start : start + n], cache=cache, **extra)[0])
        start += n
    return torch.cat(outs, dim=1), cache


@torch.no_grad()
@pytest.mark.parametrize("plan", sorted(PLANS))
@pytest.mark.parametrize("masks", sorted(MASKS))
@pytest.mark.parametrize("variant", VARIANTS)
def test_cached_steps_equal_the_full_forward(variant, masks, plan) -> None:
    m = model(variant, MASKS[masks])
    idx = tokens(2, sum(PLANS[plan]))
    full, _ = m(idx)
    steps, cache = cached(m, idx, PLANS[plan])
    torch.testing.assert_close(steps, full, rtol=0, atol=1e-9)
    assert cache.length == idx.shape[1]


@torch.no_grad()
@pytest.mark.parametrize("masks", sorted(MASKS))
@pytest.mark.parametrize("variant", ("rope", "alibi", "fox", "mla"))
def test_packed_documents_through_a_sliding_cache_equal_the_full_forward(variant, masks) -> None:
    m = model(variant, MASKS[masks])
    idx = tokens(2, 20, seed=1)
    ids = torch.tensor([[0] * 3 + [1] * 12 + [2] * 5, [0] * 9 + [1] * 11])  # row 2: like left padding
    full, _ = m(idx, document_ids=ids)
    steps, _ = cached(m, idx, (7, 1, 1, 6, 1, 4), document_ids=ids)
    torch.testing.assert_close(steps, full, rtol=0, atol=1e-9)


@torch.no_grad()
@pytest.mark.parametrize("masks", sorted(MASKS))
@pytest.mark.parametrize("variant", ("rope", "alibi", "mla"))
def test_left_padded_generation_with_sliding_layers_equals_each_row_alone(variant, masks) -> None:
    m = model(variant, MASKS[masks])
    prompts = [tokens(1, n, seed=n) for n in (2, 9, 6)]  # shorter and longer than the window
    width = max(p.shape[1] for p in prompts)
    batch = torch.cat([torch.cat((torch.zeros(1, width - p.shape[1], dtype=torch.long), p), dim=1) for p in prompts])
    mask = torch.stack([torch.arange(width) >= width - p.shape[1] for p in prompts])
    out = m.generate(batch, 12, temperature=0, attention_mask=mask)
    for row, p in enumerate(prompts):
        alone = m.generate(p, 12, temperature=0, use_cache=False)
        assert torch.equal(out[row, width - p.shape[1] :], alone[0]), (variant, masks, row)


def stored_numel(layer) -> int:
    """Numbers held by one layer's cache (keys, values or MLA rows, positions, features)."""
    tensors = [getattr(layer, name, None) for name in ("k", "v", "kv", "positions", "features")]
    return sum(t.numel() for t in tensors if t is not None)


@torch.no_grad()
@pytest.mark.parametrize("variant", ("rope", "fox", "mla"))
def test_a_sliding_layer_holds_at_most_the_window_while_a_global_one_grows(variant) -> None:
    m = model(variant, MASKS["gemma-mix"] if variant != "mla" else lambda i: Mask(window=W) if i < 2 else Mask(chunk=C))
    idx, cache, sizes = tokens(2, 4 * W + 3), m.new_cache(), []
    m(idx[:, :3], cache=cache)
    per_key = [stored_numel(layer) // layer.stored for layer in cache.layers]
    for t in range(3, idx.shape[1]):
        m(idx[:, t : t + 1], cache=cache)
        sizes.append([stored_numel(layer) for layer in cache.layers])
        seen = t + 1
        for i, layer in enumerate(cache.layers):
            expected = {Mask(window=W): min(seen, W - 1), Mask(chunk=C): seen % C, Mask(): seen}[m.blocks[i].attn.mask]
            assert layer.length == seen and layer.stored == expected, (i, seen, layer.stored)
    local = [i for i, block in enumerate(m.blocks) if block.attn.mask.window == W]
    assert all(size[i] == (W - 1) * per_key[i] for size in sizes[W:] for i in local)  # flat from T = W on


@torch.no_grad()
@settings(max_examples=25, deadline=None)
@given(
    window=st.one_of(st.none(), st.integers(1, 8)),
    chunk=st.one_of(st.none(), st.integers(1, 6)),
    plan=st.lists(st.integers(1, 7), min_size=1, max_size=4),
    seed=st.integers(0, 100),
)
def test_any_window_chunk_and_steps_give_the_full_forward(window, chunk, plan, seed) -> None:
    m = model("alibi", lambda i: Mask(window=window, chunk=chunk) if i == 0 else Mask(), n_layer=2)
    idx = tokens(1, sum(plan), seed)
    steps, cache = cached(m, idx, plan)
    torch.testing.assert_close(steps, m(idx)[0], rtol=0, atol=1e-9)
    # a chunked layer keeps its current chunk whole (the kernel counts chunks from the first key),
    # even where a window inside the chunk sees fewer; a window alone keeps its last window - 1 keys
    bound = chunk if chunk is not None else window
    assert cache.layers[0].stored <= min(x for x in (bound, sum(plan)) if x is not None)

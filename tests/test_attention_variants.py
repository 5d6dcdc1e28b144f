"""Every attention variant (MHA, GQA, MQA, MLA) with every encoding it supports, through the GPT:
cached generation equals uncached generation, the cache holds what the variant promises, a short
training run lowers the loss, and configurations that cannot work are refused by field."""

from __future__ import annotations

import pytest
import torch

from posenc import ENCODINGS, GPT, VARIANTS, GPTConfig

# 4 query heads so that GQA (2 KV heads) and MQA (1) differ from MHA
BASE = dict(n_layer=2, n_head=4, n_embd=32, block_size=32, vocab_size=64, bias=False)
ATTENTION = {
    "mha": dict(),
    "gqa": dict(n_kv_head=2),
    "mqa": dict(n_kv_head=1),
    "mla": dict(attention="mla", kv_lora_rank=16, qk_rope_head_dim=4),
}
# the positional variants (those that choose an attention, gqa and mla, are the rows of ATTENTION);
# MLA refuses QK-norm (a per-head norm of keys is not linear in the latent, so it cannot be absorbed)
POSITIONAL = [v for v in sorted(VARIANTS) if not {"attention", "n_kv_head"} & set(VARIANTS[v].model)]
# and encodings with a content bias (CoPE reads per-head queries of its own width, which MLA forms only on its
# decoupled rotary part)
REFUSED_BY_MLA = {v for v in POSITIONAL if VARIANTS[v].model.get("qk_norm")} | {"cope"}
CASES = [(a, v) for a in ATTENTION for v in POSITIONAL if not (a == "mla" and v in REFUSED_BY_MLA)]


def model(attention: str, variant: str, **extra) -> GPT:
    torch.manual_seed(0)
    return GPT(GPTConfig(**BASE, pe=variant, **ATTENTION[attention], **extra))


@torch.no_grad()
@pytest.mark.parametrize("attention, variant", CASES)
def test_cached_generation_equals_uncached(attention: str, variant: str) -> None:
    m = model(attention, variant).double().eval()
    prompt = torch.randint(0, 64, (2, 5), generator=torch.Generator().manual_seed(1))
    cached = m.generate(prompt, 12, temperature=0)
    assert torch.equal(cached, m.generate(prompt, 12, temperature=0, use_cache=False))
    idx = cached[:, :16]
    cache = m.new_cache()
    steps = torch.cat([m(idx[:, i : i + 1], cache=cache)[0] for i in range(16)], dim=1)
    torch.testing.assert_close(steps, m(idx)[0], rtol=0, atol=1e-9)


@pytest.mark.parametrize("attention", sorted(ATTENTION))
def test_the_cache_holds_what_the_variant_promises(attention: str) -> None:
    m = model(attention, "rope").eval()
    cache = m.new_cache()
    with torch.no_grad():
        m(torch.randint(0, 64, (1, 7)), cache=cache)
    layer = cache.layers[0]
    if attention == "mla":  # the latent and the one shared rotary key, no per-head keys or values
        assert layer.kv.shape == (1, 7, 16 + 4)
    else:
        heads = 4 // {"mha": 1, "gqa": 2, "mqa": 4}[attention]
        assert layer.k.shape == layer.v.shape == (1, heads, 7, 8)


@pytest.mark.parametrize("attention", sorted(ATTENTION))
@pytest.mark.parametrize("variant", ["rope", "alibi", "nope"])
def test_a_short_training_run_lowers_the_loss(attention: str, variant: str) -> None:
    m = model(attention, variant)
    opt = m.configure_optimizers(0.0, 3e-3)
    g = torch.Generator().manual_seed(0)
    pattern = torch.randint(0, 64, (8,), generator=g)
    data = pattern.repeat(2, 5)[:, :33]  # a repeating sequence: learnable only by attending back
    losses = []
    for _ in range(30):
        _, loss = m(data[:, :-1], data[:, 1:])
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0] - 1.0, losses[::5]


@pytest.mark.parametrize(
    "overrides, field",
    [
        (dict(n_kv_head=3), "n_kv_head"),
        (dict(n_kv_head=0), "n_kv_head"),
        (dict(attention="mla", kv_lora_rank=0), "kv_lora_rank"),
        (dict(attention="mla", qk_rope_head_dim=3), "qk_rope_head_dim"),
        (dict(attention="mla", pe="qknorm"), "qk_norm"),
        (dict(attention="mla", pe="cope"), "content bias"),
    ],
)
def test_configurations_that_cannot_work_are_refused_by_field(overrides: dict, field: str) -> None:
    with pytest.raises((ValueError, TypeError), match=field):
        GPT(GPTConfig(**(BASE | {"pe": "rope"} | overrides)))


def test_every_registered_encoding_is_covered_for_every_attention() -> None:
    # a newly registered encoding joins the matrix above without an edit here
    covered = {v for _, v in CASES}
    assert set(ENCODINGS) <= covered

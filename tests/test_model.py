"""Whole-model properties of GPT for every variant in posenc.VARIANTS.

Models are the "tiny" preset in float64 and eval mode, so the properties are checked without
float32 noise. Tolerances: 1e-10 for paths computed from the same values in a different order
(cache vs. full, batch vs. single row); 1e-6 for the position-offset invariance of RoPE layers,
whose angles are float32 by design (posenc/encodings/rope.py): shifting positions by s changes the
float32 rounding of each angle by up to ~4e-6 rad at positions < 64.
"""

from __future__ import annotations

import math

import pytest
import torch

from posenc import GPT, VARIANTS, ALiBi, GPTConfig, Mask, NoPE, RNoPEBlock, RotaryEmbedding
from posenc.rnope import rnope_layers

CLOSE = dict(rtol=0.0, atol=1e-10)


def _wheres(variant: str) -> set[str]:
    config = GPTConfig.from_preset("tiny", pe=variant)
    wheres = {spec.pe.where for spec in config.layers}
    return wheres | ({"input"} if config.input_encoding is not None else set())


# Classified from the registry, so a newly registered encoding is tested without editing this file:
# a variant with an input-level table is absolute, every other one must be relative.
ABSOLUTE = sorted(v for v in VARIANTS if "input" in _wheres(v))
RELATIVE = sorted(v for v in VARIANTS if "input" not in _wheres(v))
POSITIONAL = sorted(v for v in VARIANTS if _wheres(v) != {"none"})  # those a sliding window can go on


def test_variant_classification() -> None:
    assert {"rope", "nope", "alibi", "qknorm", "rnope"} <= set(RELATIVE)
    assert {"absolute", "sinusoidal"} <= set(ABSOLUTE)
    assert "nope" not in POSITIONAL and {"rope", "alibi", "rnope", "absolute"} <= set(POSITIONAL)


def tiny(pe: str, seed: int = 0, **overrides) -> GPT:
    torch.manual_seed(seed)
    return GPT(GPTConfig.from_preset("tiny", pe=pe, **overrides)).double().eval()


def tokens(B: int, T: int, seed: int = 1, vocab: int = 256) -> torch.Tensor:
    return torch.randint(0, vocab, (B, T), generator=torch.Generator().manual_seed(seed))


@pytest.fixture(params=sorted(VARIANTS))
def variant(request) -> str:
    return request.param


# -- properties for every variant ---------------------------------------------------------------


@torch.no_grad()
def test_causality(variant: str) -> None:
    model = tiny(variant)
    idx = tokens(2, 16)
    logits, _ = model(idx)
    for t in (0, 5, 14):
        changed = idx.clone()
        changed[:, t + 1 :] = (changed[:, t + 1 :] + 1 + torch.arange(15 - t)) % 256
        other, _ = model(changed)
        torch.testing.assert_close(other[:, : t + 1], logits[:, : t + 1], **CLOSE)
        assert (other[:, t + 1 :] - logits[:, t + 1 :]).abs().max() > 1e-6  # the change is visible downstream


@torch.no_grad()
@pytest.mark.parametrize("shift", [1, 7, 20])
@pytest.mark.parametrize("variant", RELATIVE)
def test_relative_encodings_are_invariant_to_a_common_position_offset(variant: str, shift: int) -> None:
    model = tiny(variant)
    idx = tokens(2, 10)
    base, _ = model(idx)
    shifted, _ = model(idx, positions=torch.arange(10) + shift)
    torch.testing.assert_close(shifted, base, rtol=0.0, atol=1e-6)


@torch.no_grad()
@pytest.mark.parametrize("variant_abs", ABSOLUTE)
def test_absolute_encodings_are_not_invariant_to_a_position_offset(variant_abs: str) -> None:
    # negative control: the offset test above has the power to see a positional signal
    model = tiny(variant_abs)
    idx = tokens(2, 10)
    base, _ = model(idx)
    shifted, _ = model(idx, positions=torch.arange(10) + 7)
    assert (shifted - base).abs().max() > 1e-2 * base.abs().max()


@torch.no_grad()
@pytest.mark.parametrize("chunks", [(1,) * 12, (5, 1, 6), (11, 1)], ids=["token-by-token", "5-1-6", "11-1"])
def test_kv_cached_incremental_forward_equals_full_forward(variant: str, chunks: tuple[int, ...]) -> None:
    model = tiny(variant)
    idx = tokens(2, sum(chunks))
    full, _ = model(idx)
    cache, outs, start = model.new_cache(), [], 0
    for n in chunks:
        out, _ = model(idx[:, start : start + n], cache=cache)
        outs.append(out)
        start += n
    assert cache.length == idx.shape[1]
    torch.testing.assert_close(torch.cat(outs, dim=1), full, **CLOSE)


@torch.no_grad()
@pytest.mark.parametrize("variant", POSITIONAL)
def test_kv_cached_forward_with_a_sliding_window(variant: str) -> None:
    # explicit per-layer windows put a window on every layer, whatever the encoding acts on
    torch.manual_seed(0)
    config = GPTConfig.from_preset("tiny", pe=variant).map_layers(lambda i, layer: layer.replace(mask=Mask(window=3)))
    model = GPT(config).double().eval()
    assert all(b.attn.window == 3 for b in model.blocks)
    idx = tokens(1, 10)
    full, _ = model(idx)
    cache = model.new_cache()
    inc = torch.cat([model(idx[:, i : i + 1], cache=cache)[0] for i in range(10)], dim=1)
    torch.testing.assert_close(inc, full, **CLOSE)


@torch.no_grad()
def test_batch_rows_are_independent(variant: str) -> None:
    model = tiny(variant)
    idx = tokens(3, 12)
    batched, _ = model(idx)
    for b in range(3):
        alone, _ = model(idx[b : b + 1])
        torch.testing.assert_close(batched[b : b + 1], alone, **CLOSE)
    other = idx.clone()
    other[1:] = tokens(2, 12, seed=9)
    changed, _ = model(other)
    torch.testing.assert_close(changed[0], batched[0], **CLOSE)


@torch.no_grad()
@pytest.mark.parametrize("prompt_len, new", [(4, 10), (20, 30)], ids=["within-block", "past-block-size"])
def test_generate_with_and_without_cache_yields_identical_tokens(variant: str, prompt_len: int, new: int) -> None:
    model = tiny(variant)
    block = model.config.block_size
    idx = tokens(2, prompt_len)
    assert (prompt_len + new > block) == (new == 30)
    greedy = [model.generate(idx, new, temperature=0.0, use_cache=c) for c in (True, False)]
    torch.testing.assert_close(greedy[0], greedy[1], rtol=0, atol=0)
    sampled = [
        model.generate(idx, new, temperature=1.0, top_k=50, use_cache=c, generator=torch.Generator().manual_seed(3))
        for c in (True, False)
    ]
    torch.testing.assert_close(sampled[0], sampled[1], rtol=0, atol=0)
    assert sampled[0].shape == (2, prompt_len + new)
    torch.testing.assert_close(sampled[0][:, :prompt_len], idx, rtol=0, atol=0)


@torch.no_grad()
def test_generate_temperature_zero_is_argmax_of_the_forward(variant: str) -> None:
    model = tiny(variant)
    idx = tokens(2, 5)
    out = model.generate(idx, 3, temperature=0.0)
    for t in range(3):
        logits, _ = model(out[:, : 5 + t])
        torch.testing.assert_close(out[:, 5 + t], logits[:, -1].argmax(-1), rtol=0, atol=0)


# -- parameters and initialisation --------------------------------------------------------------


@pytest.mark.parametrize("pe", ["absolute", "rope", "nope", "rnope", "qknorm"])
def test_owt_16m_has_16_03m_parameters(pe: str) -> None:
    n = GPT(GPTConfig.from_preset("owt-16m", pe=pe)).num_params()
    assert round(n, -4) == 16_030_000, n


def test_num_params_excludes_only_the_position_table() -> None:
    model = GPT(GPTConfig.from_preset("tiny", pe="absolute"))
    total = sum(p.numel() for p in model.parameters())
    assert model.num_params(non_embedding=False) == total
    assert model.num_params() == total - model.wpe.weight.numel()
    rope = GPT(GPTConfig.from_preset("tiny", pe="rope"))
    assert rope.num_params() == rope.num_params(non_embedding=False)


def test_same_seed_gives_identical_shared_parameters_across_variants() -> None:
    models = {}
    for pe in sorted(VARIANTS):
        model = GPT(GPTConfig.from_preset("tiny", pe=pe))
        model.init_weights(seed=123)
        models[pe] = dict(model.named_parameters())
    reference = models["rope"]
    for pe, params in models.items():
        shared = {n for n in set(params) & set(reference) if params[n].shape == reference[n].shape}
        assert {"wte.weight", "blocks.3.mlp.c_proj.weight"} <= shared
        for name in shared:
            torch.testing.assert_close(params[name], reference[name], rtol=0, atol=0, msg=f"{pe}: {name}")
    # control: another seed gives other values
    other = GPT(GPTConfig.from_preset("tiny", pe="rope"))
    other.init_weights(seed=124)
    assert not torch.equal(other.blocks[0].attn.c_attn.weight, reference["blocks.0.attn.c_attn.weight"])


def test_gpt2_initialisation_statistics() -> None:
    model = GPT(GPTConfig.from_preset("owt-16m", pe="rope"))
    std = model.blocks[0].attn.c_attn.weight.std().item()
    proj = model.blocks[0].attn.c_proj.weight.std().item()
    assert abs(std - 0.02) < 1e-3
    assert abs(proj - 0.02 / math.sqrt(2 * 4)) < 1e-3


def test_weight_tying() -> None:
    model = tiny("rope")
    assert model.wte.weight is model.lm_head.weight
    _, loss = model(tokens(1, 8), tokens(1, 8, seed=2))
    loss.backward()
    assert model.lm_head.weight.grad is not None and model.lm_head.weight.grad.abs().sum() > 0
    assert len([p for p in model.parameters() if p.shape == model.wte.weight.shape]) == 1


def test_loss_equals_manual_cross_entropy_and_ignores_minus_one() -> None:
    model = tiny("alibi")
    idx, targets = tokens(2, 9), tokens(2, 9, seed=5)
    targets[0, 3] = targets[1, :4] = -1
    logits, loss = model(idx, targets)
    keep = targets != -1
    logp = logits[keep].log_softmax(-1)  # (N, V)
    manual = -logp.gather(1, targets[keep][:, None]).mean()
    torch.testing.assert_close(loss, manual, rtol=0, atol=1e-12)
    assert keep.sum() == 13
    _, no_loss = model(idx)
    assert no_loss is None


def test_configure_optimizers_decays_only_matrices() -> None:
    model = GPT(GPTConfig.from_preset("tiny", pe="qknorm", bias=True, qk_norm_type="l2"))
    opt = model.configure_optimizers(weight_decay=0.1, learning_rate=1e-3)
    decay, no_decay = opt.param_groups
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0
    assert all(p.dim() >= 2 for p in decay["params"]) and all(p.dim() < 2 for p in no_decay["params"])
    ids = [id(p) for g in opt.param_groups for p in g["params"]]
    assert len(ids) == len(set(ids)) == len(list(model.parameters()))  # tied weight once, nothing lost
    assert any(p.dim() < 2 for p in no_decay["params"]) and len(decay["params"]) > 0


# -- layer patterns -----------------------------------------------------------------------------


def encodings_of(model: GPT) -> list[type]:
    return [type(b.attn.pe) for b in model.blocks]


def test_rrrn_pattern_puts_rope_on_three_layers_and_nope_on_the_fourth() -> None:
    model = GPT(GPTConfig.from_preset("tiny", layer_pattern="RRRN"))
    assert encodings_of(model) == [RotaryEmbedding] * 3 + [NoPE]
    assert model.wpe is None and all(b.attn.window is None for b in model.blocks)
    deep = GPT(GPTConfig.from_preset("tiny", n_layer=8, layer_pattern="RRRN"))
    assert encodings_of(deep) == ([RotaryEmbedding] * 3 + [NoPE]) * 2
    assert encodings_of(GPT(GPTConfig.from_preset("tiny", pe="rnope"))) == [RotaryEmbedding] * 3 + [NoPE]


@pytest.mark.parametrize(
    "kwargs", [dict(layer_pattern="rrrN", sliding_window=5), dict(pe="rnope", sliding_window=5)], ids=["pattern", "pe"]
)
def test_lower_case_codes_put_windows_on_the_rope_layers_only(kwargs: dict) -> None:
    model = GPT(GPTConfig.from_preset("tiny", **kwargs))
    assert encodings_of(model) == [RotaryEmbedding] * 3 + [NoPE]
    assert [b.attn.window for b in model.blocks] == [5, 5, 5, None]


def test_pattern_mixing_alibi_and_an_input_table() -> None:
    model = GPT(GPTConfig.from_preset("tiny", layer_pattern="PB"))
    assert model.wpe is not None and encodings_of(model) == [NoPE, ALiBi, NoPE, ALiBi]


def test_qk_norm_flag_adds_qk_norm_to_any_encoding() -> None:
    for pe in ("absolute", "nope", "alibi"):
        model = GPT(GPTConfig.from_preset("tiny", pe=pe, qk_norm=True))
        assert all(b.attn.qk_norm is not None for b in model.blocks)
    assert all(b.attn.qk_norm is None for b in GPT(GPTConfig.from_preset("tiny", pe="rope")).blocks)
    assert all(b.attn.qk_norm is not None for b in GPT(GPTConfig.from_preset("tiny", pe="qknorm")).blocks)


# -- RNoPEBlock ---------------------------------------------------------------------------------


@torch.no_grad()
def test_rnope_block_works_standalone() -> None:
    torch.manual_seed(0)
    block = RNoPEBlock(32, 4, "rrrN", sliding_window=4).double().eval()
    assert [type(b.attn.pe) for b in block.blocks] == [RotaryEmbedding] * 3 + [NoPE]
    assert [b.attn.window for b in block.blocks] == [4, 4, 4, None]
    x = torch.randn(2, 10, 32, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    y = block(x)
    assert y.shape == x.shape
    # causal, and relative: a common position offset changes nothing
    x2 = x.clone()
    x2[:, 6:] += 1.0
    torch.testing.assert_close(block(x2)[:, :6], y[:, :6], **CLOSE)
    torch.testing.assert_close(block(x, torch.arange(10) + 5), y, rtol=0.0, atol=1e-6)


@pytest.mark.parametrize("pattern, bad", [("RXN", ["X"]), ("RRRP", ["P"]), ("", [])])
def test_rnope_block_refuses_other_codes(pattern: str, bad: list[str]) -> None:
    with pytest.raises(ValueError) as err:
        RNoPEBlock(32, 4, pattern)
    assert repr(pattern) in str(err.value) and f"bad: {bad}" in str(err.value)


# -- RoPE frequency schedules through the whole model --------------------------------------------

SCHEDULES = {
    "linear": {"rope_type": "linear", "factor": 2.0},
    "dynamic": {"rope_type": "dynamic", "factor": 2.0, "max_position_embeddings": 8},
    "yarn": {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 8},
    "longrope": {
        "rope_type": "longrope",
        "short_factor": [1.0] * 8,
        "long_factor": [1.0 + i / 4 for i in range(8)],
        "original_max_position_embeddings": 8,
    },
    "llama3": {
        "rope_type": "llama3",
        "factor": 8.0,
        "original_max_position_embeddings": 8,
        "low_freq_factor": 1.0,
        "high_freq_factor": 4.0,
    },
    "proportional": {"rope_type": "proportional", "partial_rotary_factor": 0.5},
}


@torch.no_grad()
@pytest.mark.parametrize("schedule", sorted(SCHEDULES))
def test_every_rope_schedule_decodes_with_the_cache_as_the_uncached_forward(schedule: str) -> None:
    """Each cached step equals the uncached forward over the same tokens -- also for the
    length-dependent schedules (dynamic, longrope), whose rotation changes past the original
    context: then the cached tokens' hidden states are stale in every layer above the first, and
    the model recomputes them. The weights are far from their small initial values, which would
    hide a stale cache (attention nearly uniform)."""
    torch.manual_seed(0)
    model = GPT(GPTConfig.from_preset("tiny", pe="rope", rope_scaling=SCHEDULES[schedule])).double().eval()
    for p in model.parameters():
        p.add_(0.3 * torch.randn_like(p))
    idx = tokens(1, 24)  # past every schedule's original context (8)
    cache = model.new_cache()
    for i in range(24):
        step, _ = model(idx[:, i : i + 1], cache=cache)
        alone, _ = model(idx[:, : i + 1])
        torch.testing.assert_close(step[:, -1], alone[:, -1], rtol=0, atol=1e-9)
    prompt = idx[:, :3]
    assert torch.equal(
        model.generate(prompt, 20, temperature=0), model.generate(prompt, 20, temperature=0, use_cache=False)
    )


@torch.no_grad()
def test_longrope_recomputes_the_cache_once_when_it_switches_factors(monkeypatch) -> None:
    torch.manual_seed(0)
    model = GPT(GPTConfig.from_preset("tiny", pe="rope", rope_scaling=SCHEDULES["longrope"])).eval()
    calls = []
    recompute = model._recompute
    monkeypatch.setattr(model, "_recompute", lambda *a: calls.append(a[0].shape) or recompute(*a))
    cache, idx = model.new_cache(), tokens(1, 20)
    model(idx[:, :4], cache=cache)
    for i in range(4, 20):  # crosses the original context (8) at the 9th token, once
        model(idx[:, i : i + 1], cache=cache)
    assert len(calls) == 1 and cache.length == 20 and cache.tokens.shape == (1, 20)


@torch.no_grad()
def test_a_length_dependent_schedule_changes_the_logits_past_its_context() -> None:
    # the control of the test above: dynamic NTK really does change with the length
    torch.manual_seed(0)
    plain = GPT(GPTConfig.from_preset("tiny", pe="rope")).double().eval()
    torch.manual_seed(0)
    dynamic = GPT(GPTConfig.from_preset("tiny", pe="rope", rope_scaling=SCHEDULES["dynamic"])).double().eval()
    idx = tokens(1, 24)
    torch.testing.assert_close(dynamic(idx[:, :8])[0], plain(idx[:, :8])[0], rtol=0, atol=1e-6)  # within its context
    assert (dynamic(idx)[0] - plain(idx)[0]).abs().max() > 1e-5  # 100x the difference inside the context


@torch.no_grad()
def test_last_only_gives_the_last_positions_logits() -> None:
    torch.manual_seed(0)
    model = GPT(GPTConfig.from_preset("tiny", pe="rope")).eval()
    idx = tokens(2, 12)
    full, _ = model(idx)
    last, _ = model(idx, last_only=True)
    assert last.shape == (2, 1, model.config.vocab_size)
    torch.testing.assert_close(last[:, 0], full[:, -1], rtol=0, atol=1e-6)
    with pytest.raises(ValueError, match="last_only=True gives one position's logits"):
        model(idx, targets=idx, last_only=True)


@pytest.mark.parametrize(
    "pattern, options",
    [("RRRN", {}), ("rrrN", {"sliding_window": 4, "qk_norm": True}), ("rNnR", {"sliding_window": 2, "bias": True})],
)
def test_rnope_block_layers_are_the_layer_patterns(pattern: str, options: dict) -> None:
    options = {"sliding_window": None, "rope_base": 5e5, "qk_norm": False, "bias": False} | options
    flat = GPTConfig(n_layer=len(pattern), n_head=4, n_embd=32, layer_pattern=pattern, **options)
    assert rnope_layers(pattern, **options) == flat.layers


@pytest.mark.parametrize("pattern, window", [("rrrN", None), ("RRRN", 4)])
def test_rnope_block_refuses_a_window_without_windowed_layers_and_back(pattern: str, window: int | None) -> None:
    with pytest.raises(ValueError, match=f"RNoPEBlock pattern {pattern!r} has"):
        RNoPEBlock(32, 4, pattern, sliding_window=window)

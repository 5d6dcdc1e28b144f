"""M-RoPE (RotaryEmbedding with ``mrope_section``): Hugging Face's Qwen2-VL (chunked sections) and
Qwen3-VL (interleaved) text rotary embeddings as references, the reduction to plain RoPE when every
axis has the same ids, per-axis translation invariance, and multi-axis positions through a GPT with
its KV cache."""

from __future__ import annotations

import pytest
import torch
from _hf_helpers import perturbed
from hypothesis import given, settings
from hypothesis import strategies as st

from posenc import GPT, GPTConfig
from posenc.encodings.rope import RotaryEmbedding

transformers = pytest.importorskip("transformers")

#: (HF rotary class path, its config class, mrope_section, interleaved, base)
REFERENCES = {
    "qwen2_vl": ("qwen2_vl.modeling_qwen2_vl.Qwen2VLRotaryEmbedding", "Qwen2VLTextConfig", (4, 6, 6), False, 1e4),
    "qwen2_5_vl": (
        "qwen2_5_vl.modeling_qwen2_5_vl.Qwen2_5_VLRotaryEmbedding",
        "Qwen2_5_VLTextConfig",
        (2, 7, 7),
        False,
        1e6,
    ),
    "qwen3_vl": (
        "qwen3_vl.modeling_qwen3_vl.Qwen3VLTextRotaryEmbedding",
        "Qwen3VLTextConfig",
        (6, 5, 5),
        True,
        5e6,
    ),
}


def hf_rotary(name: str):
    path, config_cls, section, interleaved, base = REFERENCES[name]
    module, cls = path.rsplit(".", 1)
    rotary = getattr(__import__(f"transformers.models.{module}", fromlist=[cls]), cls)
    params = {"rope_type": "default", "rope_theta": base, "mrope_section": list(section)}
    if interleaved:
        params["mrope_interleaved"] = True
    config = getattr(transformers, config_cls)(
        hidden_size=128, num_attention_heads=4, head_dim=32, rope_parameters=params
    )
    return rotary(config), RotaryEmbedding(32, base=base, mrope_section=section, mrope_interleaved=interleaved)


@pytest.mark.parametrize("name", sorted(REFERENCES))
def test_tables_match_hugging_face(name) -> None:
    hf, ours = hf_rotary(name)
    positions = torch.randint(0, 300, (3, 2, 11), generator=torch.Generator().manual_seed(0))
    cos, sin = ours.cos_sin(positions, 11, positions.device)
    ref_cos, ref_sin = hf(torch.zeros(1), positions)  # float32 angles: ~1e-5 off at positions ~300
    torch.testing.assert_close(cos, ref_cos, rtol=0, atol=5e-5)
    torch.testing.assert_close(sin, ref_sin, rtol=0, atol=5e-5)
    # the layout exactly: HF's own recomposition of float64 per-axis angles
    angles = positions[..., None].double() * ours.inv_freq64  # (3, B, T, rd/2)
    torch.testing.assert_close(cos.double(), hf.recomposition_frequencies(angles.cos()), rtol=0, atol=1e-6)
    torch.testing.assert_close(sin.double(), hf.recomposition_frequencies(angles.sin()), rtol=0, atol=1e-6)


def test_pair_axes_chunked_and_interleaved() -> None:
    assert RotaryEmbedding(16, mrope_section=(2, 3, 3)).pair_axes == [0, 0, 1, 1, 1, 2, 2, 2]
    # Qwen3-VL: axis a > 0 takes pairs a, a + 3, ... below 3 x its count; axis 0 the rest
    assert RotaryEmbedding(16, mrope_section=(4, 2, 2), mrope_interleaved=True).pair_axes == [0, 1, 2, 0, 1, 2, 0, 0]


sections = st.sampled_from([((2, 3, 3), False), ((4, 2, 2), True), ((1, 1, 6), False), ((3, 5), False)])


@settings(max_examples=25, deadline=None)
@given(sections, st.sampled_from(["half", "interleaved"]), st.integers(0, 10**6), st.integers(0, 2**31 - 1))
def test_identical_axes_are_plain_rope(section, layout, offset, seed) -> None:
    (sec, interleaved), g = section, torch.Generator().manual_seed(seed)
    mrope = RotaryEmbedding(16, layout=layout, mrope_section=sec, mrope_interleaved=interleaved)
    plain = RotaryEmbedding(16, layout=layout)
    q, k = torch.randn(2, 2, 5, 16, generator=g), torch.randn(2, 2, 5, 16, generator=g)
    ids = offset + torch.randint(0, 1000, (2, 5), generator=g)
    got = mrope(q, k, ids.expand(len(sec), -1, -1))
    want = plain(q, k, ids)
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


@settings(max_examples=25, deadline=None)
@given(st.lists(st.integers(0, 10**5), min_size=3, max_size=3), st.integers(0, 2**31 - 1))
def test_shifting_each_axis_leaves_scores_unchanged(shift, seed) -> None:
    g = torch.Generator().manual_seed(seed)
    interleaved = bool(seed % 2)
    rope = RotaryEmbedding(32, mrope_section=(6, 5, 5) if interleaved else (4, 6, 6), mrope_interleaved=interleaved)
    q, k = (
        torch.randn(1, 2, 6, 32, generator=g, dtype=torch.float64),
        torch.randn(1, 2, 6, 32, generator=g, dtype=torch.float64),
    )
    positions = torch.randint(0, 100, (3, 1, 6), generator=g)
    # float32 cos/sin tables (within ~2e-7 of exact at any position), scores of size ~|q||k| ~ 30
    scores = lambda p: (lambda qk: qk[0] @ qk[1].transpose(-1, -2))(rope(q, k, p))  # noqa: E731
    torch.testing.assert_close(
        scores(positions + torch.tensor(shift)[:, None, None]), scores(positions), rtol=0, atol=2e-5
    )


def test_bad_sections_and_positions_are_refused() -> None:
    with pytest.raises(ValueError, match="counts 7 frequency pairs, but rotary_dim=16 has 8"):
        RotaryEmbedding(16, mrope_section=(2, 2, 3))
    with pytest.raises(ValueError, match="depends on the sequence length"):
        RotaryEmbedding(
            16, mrope_section=(2, 3, 3), scaling={"rope_type": "dynamic", "factor": 2.0, "max_position_embeddings": 64}
        )
    with pytest.raises(ValueError, match="cannot be interleaved"):
        RotaryEmbedding(16, mrope_section=(2, 3, 3), mrope_interleaved=True)
    with pytest.raises(ValueError, match="needs an mrope_section"):
        RotaryEmbedding(16, mrope_interleaved=True)
    rope, q = RotaryEmbedding(16, mrope_section=(2, 3, 3)), torch.randn(1, 1, 4, 16)
    with pytest.raises(ValueError, match=r"\(3, B, 4\)"):
        rope(q, q, torch.zeros(2, 1, 4, dtype=torch.long))
    with pytest.raises(ValueError, match=r"must have shape \(4,\) or \(B, 4\), got \(3, 1, 4\)"):
        RotaryEmbedding(16)(q, q, torch.zeros(3, 1, 4, dtype=torch.long))


def mrope_gpt(**fields) -> GPT:
    config = GPTConfig.from_preset("tiny", n_embd=64, pe_options={"rope": {"mrope_section": (4, 6, 6)}}, **fields)
    torch.manual_seed(0)
    return GPT(config).eval()


@pytest.mark.parametrize("pe", ["rope", "rnope"])
def test_a_gpt_takes_three_axis_positions_and_its_cache_keeps_them(pe) -> None:
    model = mrope_gpt(pe=pe)
    g = torch.Generator().manual_seed(1)
    idx = torch.randint(0, 256, (2, 12), generator=g)
    positions = torch.randint(0, 40, (3, 2, 12), generator=g)  # image-like: repeated and jumping ids
    with torch.no_grad():
        full, _ = model(idx, positions=positions)
        assert not torch.allclose(full, model(idx)[0], atol=1e-3)  # the axes matter
        cache = model.new_cache()
        first, _ = model(idx[:, :7], positions=positions[..., :7], cache=cache)
        rest = [model(idx[:, t : t + 1], positions=positions[..., t : t + 1], cache=cache)[0] for t in range(7, 12)]
    torch.testing.assert_close(torch.cat([first, *rest], dim=1), full, rtol=0, atol=1e-5)


@pytest.mark.parametrize("use_cache", [True, False])
def test_generate_continues_after_an_image_as_get_rope_index_numbers_the_text(use_cache) -> None:
    """generate(positions=...) gives each new token the row's largest id + 1 on every axis: the ids
    that mrope_positions (Hugging Face's get_rope_index) gives text appended after the prompt, the
    reference here. Row 1 is left-padded with a smaller image; each row must generate what the full
    forward at those reference ids predicts."""
    from posenc.multiaxis import mrope_positions

    model, new = perturbed(mrope_gpt(pe="rope"), scale=0.2), 6  # weights off their tiny init: ids matter
    rows = [[0, 0] + [1] * 8 + [0, 0], [0, 0] + [1] * 4 + [0] * 2]  # 2 x 4 and 2 x 2 images
    grids = [torch.tensor([[1, 2, 4]]), torch.tensor([[1, 2, 2]])]
    pad = len(rows[0]) - len(rows[1])
    types = torch.tensor([rows[0], [0] * pad + rows[1]])
    mask = torch.tensor([[1] * len(rows[0]), [0] * pad + [1] * len(rows[1])])
    positions, _ = mrope_positions(types, torch.cat(grids), attention_mask=mask)
    idx = torch.randint(1, 256, types.shape, generator=torch.Generator().manual_seed(3)) * mask
    with torch.no_grad():
        out = model.generate(idx, new, temperature=0, positions=positions, attention_mask=mask, use_cache=use_cache)
        for r, (row, grid) in enumerate(zip(rows, grids)):
            tokens = out[r, len(rows[0]) - len(row) :][None]  # the row without its padding
            reference, _ = mrope_positions(torch.tensor([row + [0] * new]), grid)
            assert reference[:, 0, len(row)].tolist() == [(8, 6)[r]] * 3  # not len(row): the image took fewer ids
            logits, _ = model(tokens[:, :-1], positions=reference[..., :-1])
            assert torch.equal(logits[0, len(row) - 1 :].argmax(-1), tokens[0, len(row) :])
        plain = model.generate(idx, new, temperature=0, attention_mask=mask, use_cache=use_cache)
    assert not torch.equal(out, plain)  # the image's ids change what is generated


def test_encodings_that_read_one_axis_refuse_three() -> None:
    idx = torch.zeros(1, 4, dtype=torch.long)
    with pytest.raises(ValueError, match=r"3 position axes, which \['ALiBi'\] do not read"):
        GPT(GPTConfig.from_preset("tiny", pe="alibi"))(idx, positions=torch.zeros(3, 1, 4, dtype=torch.long))

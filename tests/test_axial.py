"""N-D axial RoPE (posenc.vision.AxialRotaryEmbedding) against Hugging Face's Pixtral rotary
(alternating frequencies over rows and columns) and rotary-embedding-torch's axial frequencies
(contiguous blocks, integer and normalised coordinates), plus its properties: translation
invariance in every axis, separability per axis, exact angles at large coordinates, unrotated
prefix tokens, per-head axes, and RoPE-Mixed's learned frequencies."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from posenc.vision import AxialRotaryEmbedding, grid_coords


def test_pixtral_alternating_layout_matches_hugging_face() -> None:
    transformers = pytest.importorskip("transformers")
    from transformers.models.pixtral.modeling_pixtral import PixtralVisionRotaryEmbedding, apply_rotary_pos_emb

    config = transformers.PixtralVisionConfig(
        hidden_size=128, num_attention_heads=4, head_dim=32, rope_parameters={"rope_type": "axial", "rope_theta": 1e4}
    )
    hf = PixtralVisionRotaryEmbedding(config)
    ours = AxialRotaryEmbedding(32, 2, base=1e4, split="alternating")
    coords = grid_coords(5, 7)  # (35, 2) rows and columns, as Pixtral's meshgrid
    cos, sin = hf(torch.zeros(1), coords)
    our_cos, our_sin = ours.cos_sin(coords)
    torch.testing.assert_close(our_cos[0, 0], cos, rtol=0, atol=1e-6)
    torch.testing.assert_close(our_sin[0, 0], sin, rtol=0, atol=1e-6)
    q, k = torch.randn(2, 1, 4, 35, 32, dtype=torch.float64).unbind(0)
    ref_q, ref_k = apply_rotary_pos_emb(q, k, cos.double(), sin.double(), unsqueeze_dim=0)
    got_q, got_k = ours(q, k, coords)
    torch.testing.assert_close(got_q, ref_q, rtol=0, atol=1e-5)
    torch.testing.assert_close(got_k, ref_k, rtol=0, atol=1e-5)


@pytest.mark.parametrize("freqs", ["lang", "pixel"])
def test_contiguous_layout_matches_rotary_embedding_torch_axial(freqs) -> None:
    ret = pytest.importorskip("rotary_embedding_torch")
    theirs = ret.RotaryEmbedding(dim=8, freqs_for=freqs, max_freq=12)
    angles = theirs.get_axial_freqs(4, 6).reshape(24, 16)  # (h*w, 2 axes x 8): interleaved pairs
    ours = AxialRotaryEmbedding(16, 2, freqs=freqs, max_freq=12, layout="interleaved", split="contiguous", base=10000.0)
    coords = grid_coords(4, 6)
    if freqs == "pixel":  # rotary-embedding-torch spans [-1, 1] edge to edge (grid_coords: cell centres)
        rows, cols = (torch.linspace(-1, 1, n, dtype=torch.float64) for n in (4, 6))
        coords = torch.stack(torch.meshgrid(rows, cols, indexing="ij"), dim=-1).reshape(-1, 2)
    cos, sin = ours.cos_sin(coords)  # their angles are float32: ~1e-6 off at the higher frequencies
    torch.testing.assert_close(cos[0, 0], angles.cos(), rtol=0, atol=5e-6)
    torch.testing.assert_close(sin[0, 0], angles.sin(), rtol=0, atol=5e-6)
    x = torch.randn(1, 2, 24, 16)
    torch.testing.assert_close(ours(x, x, coords)[0], ret.apply_rotary_emb(angles, x), rtol=0, atol=1e-5)


def scores(rope: AxialRotaryEmbedding, q, k, coords):
    rq, rk = rope(q, k, coords)
    return rq @ rk.transpose(-1, -2)


layouts = st.sampled_from(
    [dict(split="contiguous"), dict(split="alternating"), dict(head_axes=(0, 1, None, 2)), dict(mixed=True)]
)


@settings(max_examples=30, deadline=None)
@given(layouts, st.lists(st.integers(-1000, 1000), min_size=3, max_size=3), st.integers(0, 2**31 - 1))
def test_scores_are_invariant_to_translating_every_coordinate(layout, shift, seed) -> None:
    g = torch.Generator().manual_seed(seed)
    rope = AxialRotaryEmbedding(24, 3, base=100.0, n_heads=4, seed=seed, **layout)
    q, k = torch.randn(2, 2, 4, 9, 24, generator=g, dtype=torch.float64).unbind(0)
    coords = torch.randint(0, 50, (2, 9, 3), generator=g)
    with torch.no_grad():
        a = scores(rope, q, k, coords + torch.tensor(shift))
        b = scores(rope, q, k, coords)
    torch.testing.assert_close(a, b, rtol=0, atol=2e-5)


@settings(max_examples=20, deadline=None)
@given(st.sampled_from(["contiguous", "alternating"]), st.integers(0, 2**31 - 1))
def test_each_axis_rotates_only_its_own_pairs(split, seed) -> None:
    """Separability: moving along one axis changes the angles of that axis's pairs only."""
    rope = AxialRotaryEmbedding(16, 2, split=split)
    coords = torch.randint(0, 100, (1, 5, 2), generator=torch.Generator().manual_seed(seed))
    moved = coords + torch.tensor([0, 7])
    cos, _ = rope.cos_sin(coords)
    cos_moved, _ = rope.cos_sin(moved)
    changed = (cos - cos_moved).abs().amax(dim=(0, 1, 2))[:4]  # the first pairs belong to axis 0
    assert changed.max() == 0
    assert ((cos - cos_moved).abs().amax(dim=(0, 1, 2))[4:8] > 0).all()


def test_angles_are_exact_at_large_coordinates() -> None:
    rope = AxialRotaryEmbedding(8, 2, base=100.0)
    coords = torch.tensor([[10**6 + 3, 2 * 10**6 + 1]])
    cos, sin = rope.cos_sin(coords)
    F = rope.freqs[0]  # (2, 4) float64
    exact = (coords.double() @ F)[0]
    torch.testing.assert_close(cos[0, 0, 0, :4].double(), exact.cos(), rtol=0, atol=2e-7)
    torch.testing.assert_close(sin[0, 0, 0, :4].double(), exact.sin(), rtol=0, atol=2e-7)


def test_prefix_tokens_and_unrotated_heads_pass_through() -> None:
    rope = AxialRotaryEmbedding(16, 2, n_heads=3, head_axes=(0, None, 1), n_prefix=2)
    q = torch.randn(1, 3, 2 + 6, 16)
    rq, _ = rope(q, q, grid_coords(2, 3) + 5)
    assert torch.equal(rq[:, :, :2], q[:, :, :2])  # CLS and a register token
    assert torch.equal(rq[:, 1], q[:, 1])  # the head with no axis
    assert not torch.allclose(rq[:, 0, 2:], q[:, 0, 2:])


def test_rope_mixed_learns_its_frequencies_and_starts_as_the_paper() -> None:
    rope = AxialRotaryEmbedding(16, 2, base=10.0, n_heads=2, mixed=True, seed=3)
    assert rope.freqs.requires_grad and rope.freqs.shape == (2, 2, 8)
    norms = rope.freqs.detach().double().norm(dim=1)  # per head and pair: the magnitude base ** (-4j / rd)
    mag = 10.0 ** (-torch.arange(0, 16, 4, dtype=torch.float64) / 16)
    torch.testing.assert_close(norms, torch.cat((mag, mag)).expand(2, -1), rtol=1e-6, atol=0)
    q = torch.randn(1, 2, 6, 16)
    rq, rk = rope(q, q, grid_coords(2, 3))
    (rq * rk).sum().backward()
    assert rope.freqs.grad is not None and rope.freqs.grad.abs().sum() > 0


def test_augmentations_act_only_while_training() -> None:
    rope = AxialRotaryEmbedding(8, 2, shift=1.0, jitter=1.2, rescale=1.5)
    coords = grid_coords(3, 3, normalize=True)
    assert torch.equal(rope.eval().augment(coords[None]), coords[None].double())
    torch.manual_seed(0)
    moved = rope.train().augment(coords[None].expand(2, -1, -1))
    assert not torch.allclose(moved[0], moved[1])  # one draw per sample


def test_bad_arguments_are_refused_by_name() -> None:
    with pytest.raises(ValueError, match="rotary_dim=12 must split into 4 axes"):
        AxialRotaryEmbedding(12, 4)
    with pytest.raises(ValueError, match="head_axes must give each of the 2 heads"):
        AxialRotaryEmbedding(8, 2, n_heads=2, head_axes=(0, 2))
    with pytest.raises(ValueError, match="need n_heads"):
        AxialRotaryEmbedding(8, 2, mixed=True)
    with pytest.raises(ValueError, match=r"coords must have shape \(T, 2\)"):
        AxialRotaryEmbedding(8, 2).cos_sin(torch.zeros(4, 3))
    with pytest.raises(ValueError, match="n_prefix 1"):
        AxialRotaryEmbedding(8, 2, n_prefix=1)(torch.zeros(1, 1, 4, 8), torch.zeros(1, 1, 4, 8), torch.zeros(4, 2))


def test_grid_coords() -> None:
    assert grid_coords(2, 3).tolist() == [[0, 0], [0, 1], [0, 2], [1, 0], [1, 1], [1, 2]]
    centres = grid_coords(2, normalize=True)[:, 0].tolist()
    assert centres == [-0.5, 0.5] and math.isclose(grid_coords(4, normalize=True).abs().max().item(), 0.75)

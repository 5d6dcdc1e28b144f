"""GPT.from_hf for the text models of Qwen2-VL, Qwen2.5-VL and Qwen3-VL against Hugging Face's own
``...ForConditionalGeneration`` (tiny random configs, no download): M-RoPE chunked (Qwen2-VL,
Qwen2.5-VL) and interleaved (Qwen3-VL, with per-head QK-norm). Given the same token ids and 3-axis
position ids (image-like: repeated and jumping), logits agree to 2e-4 in float32; every parameter
is moved off its initial value first. The vision tower is not imported."""

from __future__ import annotations

import pytest
import torch
from _hf_helpers import assert_qk_norm_eps_carried, perturbed

from posenc import GPT

transformers = pytest.importorskip("transformers")

TEXT = dict(
    vocab_size=101,
    hidden_size=64,
    intermediate_size=96,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=64,
)
VISION = dict(depth=1, hidden_size=32, embed_dim=32, num_heads=2, out_hidden_size=64, intermediate_size=32)
FAMILIES = {
    "qwen2_vl": ("Qwen2VLConfig", "Qwen2VLForConditionalGeneration", dict(mrope_section=[2, 3, 3]), {}),
    "qwen2_5_vl": ("Qwen2_5_VLConfig", "Qwen2_5_VLForConditionalGeneration", dict(mrope_section=[2, 3, 3]), {}),
    "qwen3_vl": (
        "Qwen3VLConfig",
        "Qwen3VLForConditionalGeneration",
        dict(mrope_section=[4, 2, 2], mrope_interleaved=True),
        dict(head_dim=16, rms_norm_eps=1e-6),
    ),
}


def hf_model(family: str, **overrides):
    config_cls, model_cls, mrope, extra = FAMILIES[family]
    rope = {"rope_type": "default", "rope_theta": 1e4, **mrope}
    text = TEXT | extra | {"rope_parameters": rope} | overrides
    vision = {k: v for k, v in VISION.items() if k in getattr(transformers, config_cls)().vision_config.to_dict()}
    config = getattr(transformers, config_cls)(text_config=text, vision_config=vision)
    torch.manual_seed(0)
    return perturbed(getattr(transformers, model_cls)(config))


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_text_model_logits_match_with_three_axis_positions(family) -> None:
    hf = hf_model(family)
    ours = GPT.from_hf(hf).eval()
    assert ours.blocks[0].attn.pe.position_axes == 3
    g = torch.Generator().manual_seed(1)
    idx = torch.randint(0, 101, (2, 40), generator=g)
    t = torch.arange(40).expand(2, -1)
    positions = torch.stack((t, t // 3 + 5 * (t % 3), t % 7))  # ids that differ per axis
    with torch.no_grad():
        expected = hf(input_ids=idx, position_ids=positions).logits
        torch.testing.assert_close(ours(idx, positions=positions)[0], expected, rtol=0, atol=2e-4)
        # text only: one id per token on every axis, as Hugging Face builds for plain text
        torch.testing.assert_close(ours(idx)[0], hf(input_ids=idx).logits, rtol=0, atol=2e-4)


@pytest.mark.parametrize("tie", [True, False])
def test_the_head_is_tied_as_the_outer_config_says(tie) -> None:
    # Hugging Face ties a vision-language model's head by the outer config (a text_config's True is moved
    # there, for v4 saves); here text_config says False
    text = TEXT | {
        "rope_parameters": {"rope_type": "default", "mrope_section": [2, 3, 3]},
        "tie_word_embeddings": False,
    }
    vision = dict(depth=1, embed_dim=32, num_heads=2, hidden_size=64)
    config = transformers.Qwen2VLConfig(text_config=text, vision_config=vision, tie_word_embeddings=tie)
    torch.manual_seed(0)
    hf = transformers.Qwen2VLForConditionalGeneration(config).eval()
    assert (hf.lm_head.weight is hf.model.language_model.embed_tokens.weight) == tie
    ours = GPT.from_hf(hf)
    assert (ours.lm_head.weight is ours.wte.weight) == tie


def test_qwen3_vls_qk_norm_takes_the_familys_eps() -> None:
    assert_qk_norm_eps_carried(hf_model("qwen3_vl", rms_norm_eps=0.1), 101)


def _row(*runs: tuple[int, int]) -> list[int]:
    return [kind for kind, n in runs for _ in range(n)]


@pytest.mark.parametrize("family", sorted(FAMILIES))
@pytest.mark.parametrize("padded", [False, True])
def test_position_ids_equal_hugging_face_get_rope_index(family, padded) -> None:
    from posenc.multiaxis import mrope_positions

    hf = hf_model(family)
    merge = hf.config.vision_config.spatial_merge_size
    # text, a 4x4 image (2x2 after the merge), text, a 2-frame 4x6 video (2 x 2x3), text; then a row
    # with a 2-frame 4x8 video (2 x 2x4), an 8x4 image (4x2) and a 3-frame 2x4 video (3 x 1x2)
    rows = [
        _row((0, 3), (1, 4), (0, 2), (2, 12), (0, 4)),
        _row((0, 1), (2, 16), (0, 2), (1, 8), (0, 2), (2, 6), (0, 1)),
    ]
    images = torch.tensor([[1, 4, 4], [1, 8, 4]])
    videos = torch.tensor([[2, 4, 6], [2, 4, 8], [3, 2, 4]])
    if family == "qwen3_vl":  # timestamps between frames: each frame its own run of tokens
        rows[1] = _row(
            (0, 1), (2, 8), (0, 1), (2, 8), (0, 2), (1, 8), (0, 2), (2, 2), (0, 1), (2, 2), (0, 1), (2, 2), (0, 1)
        )
        rows[0] = _row((0, 3), (1, 4), (0, 2), (2, 6), (0, 1), (2, 6), (0, 3))
    T = max(map(len, rows)) + (3 if padded else 0)
    types = torch.tensor([[0] * (T - len(r)) + r for r in rows])  # left padding
    mask = torch.tensor([[0] * (T - len(r)) + [1] * len(r) for r in rows]) if padded else None
    idx = torch.randint(0, 101, types.shape, generator=torch.Generator().manual_seed(0))
    kwargs = dict(image_grid_thw=images, video_grid_thw=videos, attention_mask=mask)
    seconds = torch.tensor([0.5, 1.0, 2.0])
    if family == "qwen2_5_vl":
        kwargs["second_per_grid_ts"] = seconds
    expected, expected_deltas = hf.model.get_rope_index(idx, types, **kwargs)
    intervals = (hf.config.vision_config.tokens_per_second * seconds).tolist() if family == "qwen2_5_vl" else None
    got, deltas = mrope_positions(
        types,
        images,
        videos.clone(),
        spatial_merge_size=merge,
        video_intervals=intervals,
        split_video_frames=family == "qwen3_vl",
        attention_mask=mask,
    )
    if mask is not None:  # Hugging Face leaves padding at its zero-initialised id too
        expected = expected * mask
    assert torch.equal(got, expected)
    assert torch.equal(deltas, expected_deltas.reshape(deltas.shape))


def test_packed_documents_restart_their_position_ids() -> None:
    from posenc.multiaxis import mrope_positions

    types = torch.tensor([[0, 0, 1, 1, 1, 1, 0, 0, 1, 1, 1, 1, 0]])
    docs = torch.tensor([[0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1]])
    grids = torch.tensor([[1, 2, 2], [1, 2, 2]])
    got, _ = mrope_positions(types, grids, document_ids=docs)
    alone, _ = mrope_positions(torch.tensor([[0, 1, 1, 1, 1, 0]]), grids[:1])
    assert torch.equal(got[:, 0, 7:], alone[:, 0])  # the second document as if it were alone
    assert got[:, 0, :7].tolist() == [[0, 1, 2, 2, 2, 2, 4], [0, 1, 2, 2, 3, 3, 4], [0, 1, 2, 3, 2, 3, 4]]


def test_a_run_that_does_not_fit_its_grid_is_refused() -> None:
    from posenc.multiaxis import mrope_positions

    with pytest.raises(
        ValueError, match=r"has 3 tokens, but its grid \(1, 4, 4\) with spatial_merge_size=2 gives 1 x 2 x 2 = 4"
    ):
        mrope_positions(torch.tensor([[0, 1, 1, 1]]), torch.tensor([[1, 4, 4]]), spatial_merge_size=2)
    with pytest.raises(ValueError, match="no video grid left"):
        mrope_positions(torch.tensor([[0, 2]]))

"""posenc.vision.vit: the small ViT runs every 2-D encoding at the training grid and on larger
grids, leaves the CLS token unrotated, refuses bad images by name, and ``examples/vit_digits.py``
trains and writes its results (a short smoke run on scikit-learn's bundled digits)."""

from __future__ import annotations

import json

import pytest
import torch

from posenc.vision.vit import VISION_ENCODINGS, ViT, main


@pytest.mark.parametrize("pe", VISION_ENCODINGS)
def test_every_encoding_classifies_any_grid_the_patch_divides(pe) -> None:
    torch.manual_seed(0)
    model = ViT(ViT.Config(pe=pe, n_layer=1)).eval()
    for size in (8, 12, 16):
        assert model(torch.rand(3, 1, size, size)).shape == (3, 10)


def test_rotary_encodings_move_with_the_patches_and_the_others_do_not() -> None:
    """Swapping two patches' contents changes a positional model's output and not a 'none' model's."""
    x = torch.rand(1, 1, 8, 8)
    swapped = x.clone()
    swapped[..., :2, :2], swapped[..., 6:, 6:] = x[..., 6:, 6:], x[..., :2, :2]
    for pe in VISION_ENCODINGS:
        torch.manual_seed(0)
        model = ViT(ViT.Config(pe=pe, n_layer=2)).eval()
        with torch.no_grad():
            same = torch.allclose(model(x), model(swapped), atol=1e-5)
        assert same == (pe == "none"), pe


def test_bad_images_are_refused() -> None:
    with pytest.raises(ValueError, match=r"images must have shape \(B, 1, H, W\) with H and W multiples of patch=2"):
        ViT(ViT.Config())(torch.rand(1, 1, 7, 8))
    with pytest.raises(ValueError, match="patch=3 must divide image=8"):
        ViT.Config(patch=3)


def test_the_digits_example_trains_and_writes_its_results(tmp_path, capsys) -> None:
    pytest.importorskip("sklearn")
    argv = ["--encodings", "axial_norm", "none", "--seeds", "0", "--epochs", "2", "--sizes", "8", "12"]
    assert main([*argv, "--out", str(tmp_path)]) == 0
    results = json.loads((tmp_path / "digits.json").read_text())
    assert [r["pe"] for r in results["runs"]] == ["axial_norm", "none"]
    accuracy = results["runs"][0]["accuracy"]
    assert (
        set(accuracy) == {"8", "12"} and accuracy["8"] > 0.2
    )  # 2 epochs: far above chance (0.1 +- 0.014 on 449 images)
    assert "| axial_norm |" in (tmp_path / "table.md").read_text()
    out = capsys.readouterr().out
    assert "[1/2] axial_norm seed 0: accuracy 8px" in out and "[2/2] none seed 0: accuracy 8px" in out


def test_the_digits_example_has_a_quick_form(tmp_path, capsys) -> None:
    pytest.importorskip("sklearn")
    from posenc.vision.vit import QUICK_EPOCHS

    assert main(["--quick", "--encodings", "none", "--sizes", "8", "--out", str(tmp_path)]) == 0
    results = json.loads((tmp_path / "digits.json").read_text())
    assert results["seeds"] == [0] and results["epochs"] == QUICK_EPOCHS < 30
    assert "[1/1] none seed 0: accuracy 8px" in capsys.readouterr().out

"""The fused Triton RoPE kernel (posenc.encodings.rotation_triton), run on CPU by Triton's
interpreter (``TRITON_INTERPRET=1``, set here before the kernel is defined), against the formula:
both layouts, partial rotary, per-row tables, strided q/k views, float32 and float16 (the
interpreter has no bfloat16), forward and backward; double backward through the kernel's own adjoint."""

from __future__ import annotations

import json
import os

import pytest
import torch

pytest.importorskip("triton", reason="the dev extra installs triton")
_before = os.environ.get("TRITON_INTERPRET")
os.environ["TRITON_INTERPRET"] = "1"  # while the kernel is defined: it then runs on CPU tensors
from posenc.encodings import rotation, rotation_triton  # noqa: E402
from posenc.encodings.rotation import _rotary_reference, expand_pairs, rope_cos_sin, rope_inv_freq  # noqa: E402

if _before is None:  # the rest of the suite sees the environment it had
    del os.environ["TRITON_INTERPRET"]
else:
    os.environ["TRITON_INTERPRET"] = _before

CASES = [  # (layout, head size, rotary dim, per-row tables)
    ("half", 16, 16, False),
    ("interleaved", 16, 16, False),
    ("half", 16, 8, False),
    ("interleaved", 12, 4, True),
    ("half", 10, 6, True),
]


def tables(B: int, T: int, rd: int, layout: str, per_row: bool):
    positions = torch.stack([torch.arange(T) + 7 * b for b in range(B)]) if per_row else torch.arange(T) + 3
    return rope_cos_sin(positions, rope_inv_freq(rd, 10000.0), layout)  # float32 (.., T, rd)


def reference(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, layout: str) -> torch.Tensor:
    if cos.dim() == 3:
        cos, sin = cos[:, None], sin[:, None]
    return _rotary_reference(x.float(), cos, sin, layout)


@pytest.mark.parametrize(("layout", "hs", "rd", "per_row"), CASES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_the_kernel_rotates_as_the_formula(layout, hs, rd, per_row, dtype):
    B, H, T = 2, 3, 5
    qkv = torch.randn(B, T, 3 * H * hs, generator=torch.Generator().manual_seed(0)).to(dtype)
    q = qkv[..., : H * hs].unflatten(-1, (H, hs)).transpose(1, 2)  # a strided view, as attention makes it
    assert not q.is_contiguous()
    cos, sin = tables(B, T, rd, layout, per_row)
    got = rotation_triton.rotary_triton(q, cos, sin, layout == "interleaved")
    want = reference(q, cos, sin, layout)
    assert got.dtype == dtype and got.shape == q.shape and got.is_contiguous()
    tol = dict(rtol=0, atol=1e-6) if dtype == torch.float32 else dict(rtol=1e-3, atol=2e-3)
    torch.testing.assert_close(got.float(), want, **tol)
    assert torch.equal(got[..., rd:], q[..., rd:])  # past rotary_dim: bit-identical


@pytest.mark.parametrize(("layout", "hs", "rd", "per_row"), CASES)
def test_its_backward_is_the_formulas_gradient(layout, hs, rd, per_row):
    B, H, T = 2, 2, 6
    x = torch.randn(B, H, T, hs, generator=torch.Generator().manual_seed(1), requires_grad=True)
    cos, sin = tables(B, T, rd, layout, per_row)
    up = torch.randn(B, H, T, hs, generator=torch.Generator().manual_seed(2))
    (g_got,) = torch.autograd.grad(rotation_triton.TritonRotary.apply(x, cos, sin, layout == "interleaved"), x, up)
    (g_want,) = torch.autograd.grad(reference(x, cos, sin, layout), x, up)
    torch.testing.assert_close(g_got, g_want, rtol=0, atol=1e-6)
    # double backward: the gradient taken with create_graph (through the formula) is differentiable
    # in the upstream gradient; its derivative along w is the forward rotation of w
    up.requires_grad_()
    y = rotation_triton.TritonRotary.apply(x, cos, sin, layout == "interleaved")
    (g,) = torch.autograd.grad(y, x, up, create_graph=True)
    w = torch.randn(B, H, T, hs, generator=torch.Generator().manual_seed(3))
    (gg,) = torch.autograd.grad(g, up, w)
    torch.testing.assert_close(gg, reference(w, cos, sin, layout), rtol=0, atol=1e-6)


def test_bad_shapes_are_refused_by_name():
    cos, sin = tables(1, 4, 8, "half", False)
    with pytest.raises(ValueError, match=r"must be \(B, H, T, hs\)"):
        rotation_triton.rotary_triton(torch.randn(4, 8), cos, sin, False)
    with pytest.raises(ValueError, match="do not fit x"):
        rotation_triton.rotary_triton(torch.randn(1, 1, 5, 8), cos, sin, False)


def test_expanded_tables_are_what_the_kernel_reads():
    # the kernel reads cos/sin at both members of a pair: the expanded tables repeat each pair's angle
    per_pair = torch.randn(5, 4)
    for layout in ("half", "interleaved"):
        full = expand_pairs(per_pair, layout)
        first = slice(0, 4) if layout == "half" else slice(0, 8, 2)
        second = slice(4, 8) if layout == "half" else slice(1, 8, 2)
        assert torch.equal(full[:, first], per_pair) and torch.equal(full[:, second], per_pair)


def test_apply_rotary_takes_the_kernel_only_for_shapes_it_fits():
    assert rotation._triton_rotary() is rotation_triton  # CUDA tensors of these shapes go to the kernel
    x = torch.randn(2, 3, 5, 8)
    assert rotation._fits_kernel(x, torch.zeros(5, 8)) and rotation._fits_kernel(x, torch.zeros(2, 5, 8))
    assert not rotation._fits_kernel(x, torch.zeros(3, 5, 8))  # a batch of tables that is not x's
    assert not rotation._fits_kernel(x[..., ::2], torch.zeros(5, 4))  # strided channels
    assert not rotation._fits_kernel(x[0], torch.zeros(5, 8))  # (H, T, hs): not the kernel's layout


def test_the_kernel_runs_by_name_or_where_a_gpu_check_passed_it(monkeypatch, tmp_path):
    """On CUDA ``apply_rotary`` takes the Triton kernel with ``TRITON_ROTARY = True``, never with
    False, and by default (None) only for the dtypes a committed GPU check passed: none without a
    record; gradients only where the check ran them."""
    from posenc import gpu_checks

    x32, x16 = torch.randn(1, 1, 2, 8, requires_grad=True), torch.randn(1, 1, 2, 8, dtype=torch.float16)
    monkeypatch.setattr(gpu_checks, "RECORD", tmp_path / "none.json")
    assert rotation.TRITON_ROTARY is None and not rotation._triton_chosen(x32) and not rotation._triton_chosen(x16)
    path = tmp_path / "check.json"
    rows = [{"key": "triton rotary float32", "ok": True, "backward": True}]
    rows += [{"key": "triton rotary float16", "ok": False, "backward": True}]
    path.write_text(json.dumps({"device": "a GPU", "cases": rows}))
    monkeypatch.setattr(gpu_checks, "RECORD", path)
    assert rotation._triton_chosen(x32) and not rotation._triton_chosen(x16)
    monkeypatch.setattr(rotation, "TRITON_ROTARY", False)
    assert not rotation._triton_chosen(x32)
    monkeypatch.setattr(rotation, "TRITON_ROTARY", True)
    assert rotation._triton_chosen(x16)

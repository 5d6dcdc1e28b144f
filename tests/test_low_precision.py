"""RoPE under low precision: bf16/fp16 autocast and modules cast to bf16/fp16.

Stated tolerances
- cos/sin: within ``TABLE_BOUND = 2e-3`` of a float64 reference at every position 0..32768.
  float32 angles meet it: at m <= 32768 the float32 angle is within one float32 ulp of m w
  (2**-9 ~ 1.95e-3: half an ulp from the product, at most half an ulp from rounding w). Angles
  computed in bf16 miss it by orders of magnitude; the controls below check that, so the bound
  can tell a float32 rotation from a low-precision one.
- rotated output in bf16/fp16: each output is x_a cos - x_b sin. With unit roundoff u (2**-8 bf16,
  2**-11 fp16), casting the table and rounding each product cost <= 2u |x_a| and 2u |x_b|, the sum
  <= u (|x_a| + |x_b|), and the table error adds TABLE_BOUND per factor, so
  |out - exact| <= (|x_a| + |x_b|) * (3u + TABLE_BOUND).
"""

from __future__ import annotations

import pytest
import torch

from posenc import GPT, GPTConfig, RotaryEmbedding

F64 = torch.float64
MAX_POS = 32768
POSITIONS = torch.arange(MAX_POS + 1)
TABLE_BOUND = 2e-3
UNIT_ROUNDOFF = {torch.bfloat16: 2.0**-8, torch.float16: 2.0**-11}
LOW = [torch.bfloat16, torch.float16]

CONFIGS = [  # (head_dim, base, layout, rotary_dim): the largest head sizes have the worst angles
    (128, 10000.0, "half", None),
    (64, 500000.0, "interleaved", None),
    (64, 100.0, "half", 32),
]


def place(per_pair: torch.Tensor, layout: str) -> torch.Tensor:
    """(..., rd/2) -> (..., rd): pair i at (i, i + rd/2) for "half", (2i, 2i+1) for "interleaved"."""
    if layout == "half":
        return torch.cat((per_pair, per_pair), dim=-1)
    return per_pair.repeat_interleave(2, dim=-1)


def inv_freq64(rotary_dim: int, base: float) -> torch.Tensor:
    return base ** (-torch.arange(0, rotary_dim, 2, dtype=F64) / rotary_dim)


def reference_cos_sin(positions: torch.Tensor, rotary_dim: int, base: float, layout: str):
    angles = place(positions.to(F64)[..., None] * inv_freq64(rotary_dim, base), layout)
    return angles.cos(), angles.sin()


def table_error(cos: torch.Tensor, sin: torch.Tensor, ref: tuple[torch.Tensor, torch.Tensor]) -> float:
    return max(float((cos.double() - ref[0]).abs().max()), float((sin.double() - ref[1]).abs().max()))


def check_rope_tables(rope: RotaryEmbedding, ref) -> None:
    """inv_freq and the tables stay float32, and cos/sin meet the bound at positions 0..32768."""
    assert rope.inv_freq.dtype == torch.float32
    assert rope.cos_cached.dtype == rope.sin_cached.dtype == torch.float32
    cos, sin = rope.cos_sin(POSITIONS, len(POSITIONS), POSITIONS.device)
    assert cos.dtype == sin.dtype == torch.float32
    assert table_error(cos, sin, ref) <= TABLE_BOUND


@pytest.fixture(scope="module", params=CONFIGS, ids=lambda c: f"hs{c[0]}-base{c[1]:g}-{c[2]}-rd{c[3]}")
def config_and_reference(request):
    head_dim, base, layout, rotary_dim = request.param
    rd = head_dim if rotary_dim is None else rotary_dim
    return request.param, reference_cos_sin(POSITIONS, rd, base, layout)


CASTS = {
    "to-bf16": lambda m: m.to(torch.bfloat16),
    "half": lambda m: m.half(),
    "to-fp16-then-bf16": lambda m: m.half().to(torch.bfloat16),
}


@pytest.mark.parametrize("cast", CASTS.values(), ids=CASTS.keys())
def test_cos_sin_after_module_cast(config_and_reference, cast):
    (head_dim, base, layout, rotary_dim), ref = config_and_reference
    # a cache covering every position, so both the cached and the computed tables are checked
    rope = cast(RotaryEmbedding(head_dim, base=base, layout=layout, rotary_dim=rotary_dim, cache_len=MAX_POS + 1))
    check_rope_tables(rope, ref)
    cos, sin = rope.cos_sin(None, MAX_POS + 1, POSITIONS.device)  # the cached tables
    assert cos.dtype == torch.float32
    assert table_error(cos, sin, ref) <= TABLE_BOUND


@pytest.mark.parametrize("dtype", LOW)
def test_cos_sin_under_autocast(config_and_reference, dtype):
    (head_dim, base, layout, rotary_dim), ref = config_and_reference
    with torch.autocast("cpu", dtype=dtype):
        rope = RotaryEmbedding(head_dim, base=base, layout=layout, rotary_dim=rotary_dim, cache_len=MAX_POS + 1)
        check_rope_tables(rope, ref)
        cos, sin = rope.cos_sin(None, MAX_POS + 1, POSITIONS.device)
        assert table_error(cos, sin, ref) <= TABLE_BOUND


CONTROLS = {
    # angles multiplied out in bf16 (positions and frequencies both bf16)
    "bf16-angles": lambda pos, inv: pos.to(torch.bfloat16)[:, None] * inv.to(torch.bfloat16),
    # float32 angles from frequencies rounded to bf16: what .to(bfloat16) does to a plain buffer
    "bf16-inv-freq": lambda pos, inv: pos.float()[:, None] * inv.to(torch.bfloat16).float(),
    # angles multiplied out in fp16
    "fp16-angles": lambda pos, inv: pos.half()[:, None] * inv.half(),
}


@pytest.mark.parametrize("control", CONTROLS.values(), ids=CONTROLS.keys())
def test_control_low_precision_angles_exceed_the_bound(config_and_reference, control):
    (head_dim, base, layout, rotary_dim), ref = config_and_reference
    rd = head_dim if rotary_dim is None else rotary_dim
    angles = place(control(POSITIONS, inv_freq64(rd, base).float()).float(), layout)
    assert table_error(angles.cos(), angles.sin(), ref) > 10 * TABLE_BOUND


@pytest.mark.parametrize(
    "layout, cast",
    [("half", lambda m: m.to(torch.bfloat16)), ("interleaved", lambda m: m.half())],
    ids=["to-bf16", "half"],
)
def test_tiny_gpt_with_rope_keeps_float32_tables_after_cast(layout, cast):
    config = GPTConfig.from_preset("tiny", pe="rope", rope_layout=layout)
    model = GPT(config)
    ropes = {n: m for n, m in model.named_modules() if isinstance(m, RotaryEmbedding)}
    before = {n: m.cos_sin(POSITIONS, 0, POSITIONS.device) for n, m in ropes.items()}
    assert len(before) == config.n_layer
    model = cast(model)
    ref = reference_cos_sin(POSITIONS, config.head_dim, config.layers[0].pe.base, layout)
    for name, module in model.named_modules():
        if isinstance(module, RotaryEmbedding):
            check_rope_tables(module, ref)
            after = module.cos_sin(POSITIONS, 0, POSITIONS.device)
            # casting the model does not touch the rotation at all
            assert torch.equal(after[0], before[name][0]) and torch.equal(after[1], before[name][1]), name
    # the cast model still runs, including at positions far past block_size
    idx = torch.randint(0, config.vocab_size, (2, 8), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        logits, _ = model(idx, positions=torch.arange(MAX_POS - 7, MAX_POS + 1))
    assert logits.dtype == model.lm_head.weight.dtype and torch.isfinite(logits).all()


# ---------------------------------------------------------------------------------------------
# the rotated output


def pair_magnitude(x: torch.Tensor, rotary_dim: int, layout: str) -> torch.Tensor:
    """|x_a| + |x_b| for the pair each rotated channel belongs to."""
    xr = x[..., :rotary_dim].abs()
    if layout == "half":
        partner = torch.cat((xr[..., rotary_dim // 2 :], xr[..., : rotary_dim // 2]), dim=-1)
    else:
        partner = xr.unflatten(-1, (-1, 2)).flip(-1).flatten(-2)
    return xr + partner


def rotate64(x64: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, rotary_dim: int, layout: str) -> torch.Tensor:
    """The rotation written out in float64 for given tables (T, rotary_dim)."""
    xr = x64[..., :rotary_dim]
    if layout == "half":
        x1, x2 = xr.chunk(2, dim=-1)
        turned = torch.cat((-x2, x1), dim=-1)
    else:
        pairs = xr.unflatten(-1, (-1, 2))
        turned = torch.stack((-pairs[..., 1], pairs[..., 0]), dim=-1).flatten(-2)
    return torch.cat((xr * cos.double() + turned * sin.double(), x64[..., rotary_dim:]), dim=-1)


@pytest.mark.parametrize("dtype", LOW)
@pytest.mark.parametrize("mode", ["cast", "autocast"])
@pytest.mark.parametrize("start", [0, MAX_POS - 31])
@pytest.mark.parametrize("head_dim,base,layout,rotary_dim", CONFIGS)
def test_rotated_output_in_low_precision(dtype, mode, start, head_dim, base, layout, rotary_dim):
    rd = head_dim if rotary_dim is None else rotary_dim
    g = torch.Generator().manual_seed(start)
    q, k = torch.randn(2, 2, 2, 32, head_dim, generator=g).to(dtype)  # (B, nh, T, hs) each
    positions = torch.arange(start, start + 32)
    rope = RotaryEmbedding(head_dim, base=base, layout=layout, rotary_dim=rotary_dim)
    if mode == "cast":
        rq, rk = rope.to(dtype)(q, k, positions)
    else:
        with torch.autocast("cpu", dtype=dtype):
            rq, rk = rope(q, k, positions)
    assert rq.dtype == rk.dtype == dtype
    u = UNIT_ROUNDOFF[dtype]
    exact_tables = reference_cos_sin(positions, rd, base, layout)
    bf16_angles = place(positions.to(torch.bfloat16)[:, None] * inv_freq64(rd, base).to(torch.bfloat16), layout).float()
    for x, out in ((q, rq), (k, rk)):
        x64 = x.double()  # low-precision inputs are exact in float64
        exact = rotate64(x64, *exact_tables, rd, layout)
        bound = pair_magnitude(x64, rd, layout) * (3 * u + TABLE_BOUND)
        err = (out.double() - exact)[..., :rd].abs()
        assert (err <= bound).all(), f"exceeds the bound by up to {float((err - bound).max()):.3g}"
        assert torch.equal(out[..., rd:], x[..., rd:])
        if start > 0:
            # control: the same rotation with bf16 angles breaks the bound, so the bound has power here
            sloppy = rotate64(x64, bf16_angles.cos(), bf16_angles.sin(), rd, layout)
            assert ((sloppy - exact)[..., :rd].abs() > bound).any()

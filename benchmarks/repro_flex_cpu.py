"""Compiled FlexAttention on CPU miscompiles a score_mod that builds a per-head vector and indexes it.

    python benchmarks/repro_flex_cpu.py

FlexAttention runs a score_mod on one (b, h, q_idx, kv_idx) score; eager FlexAttention vmaps it,
so a score_mod may compute every head's bias and pick its own with ``[h]``, as posenc's generic
``score_mod`` does (an encoding's ``score_bias`` returns all heads). Compiled on CPU (torch
2.13.0+cpu, inductor's C++ FlexAttention template) that pattern returns wrong values, off by
O(1), with no error; computing the head's scalar first (``slopes[h] * ...``) is exact, and so is
indexing captured tensors by q_idx/kv_idx. Printed: the largest difference from eager FlexAttention
per score_mod (~2e-7 is float32 rounding). Measured with torch 2.13.0+cpu:

    slopes[h] * (q_idx - kv_idx)                  2.4e-07
    captured positions pos[q_idx]                 2.4e-07
    per-head vector, then [h]                     1.8e+00
    (H,1,1) from (1,) positions, then [h,0,0]     1.8e+00
"""

from __future__ import annotations

import torch
from torch.nn.attention.flex_attention import flex_attention


def main() -> None:
    torch.manual_seed(0)
    compiled = torch.compile(flex_attention, dynamic=False)
    B, H, T, D = 1, 2, 128, 16
    q, k, v = (torch.randn(B, H, T, D) for _ in range(3))
    slopes = torch.tensor([0.5, 0.25])
    pos = torch.arange(T)
    one = torch.zeros(1, dtype=torch.long)
    mods = {
        "slopes[h] * (q_idx - kv_idx)": lambda s, b, h, qi, ki: s - slopes[h] * (qi - ki),
        "captured positions pos[q_idx]": lambda s, b, h, qi, ki: s - slopes[h] * (pos[qi] - pos[ki]),
        "per-head vector, then [h]": lambda s, b, h, qi, ki: s + (-slopes * (qi - ki))[h],
        "(H,1,1) from (1,) positions, then [h,0,0]": lambda s, b, h, qi, ki: (
            s + (-slopes.view(-1, 1, 1) * ((pos[qi] + one)[:, None] - (pos[ki] + one)[None, :]))[h, 0, 0]
        ),
    }
    print("torch", torch.__version__)
    for name, mod in mods.items():
        want = flex_attention(q, k, v, score_mod=mod)
        got = compiled(q, k, v, score_mod=mod)
        print(f"{name:45s} {(got - want).abs().max().item():.1e}", flush=True)


if __name__ == "__main__":
    main()

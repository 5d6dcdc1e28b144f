"""Per-pair wavelengths of every RoPE schedule against the trained context: docs/rope_scaling/wavelengths.png.

    python benchmarks/plot_rope_scaling.py

One panel per schedule family, head_dim 128, each with the trained length L0 (dashed) and the
extended one L0 * factor (dotted). A pair whose wavelength 2 pi / w_i exceeds the context never
completes a turn there: interpolating schedules stretch exactly those pairs.
"""

from __future__ import annotations

import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

from posenc.encodings.rope import RotaryEmbedding

OUT = Path(__file__).resolve().parent.parent / "docs" / "rope_scaling" / "wavelengths.png"
HEAD_DIM = 128
L0, FACTOR = 8192, 8.0

SCHEDULES = {  # label -> (RotaryEmbedding options, seq_len for length-dependent ones)
    "default": ({}, None),
    "linear x8": ({"scaling": {"rope_type": "linear", "factor": FACTOR}}, None),
    "dynamic x8 at L = 8 L0": (
        {
            "scaling": {
                "rope_type": "dynamic",
                "factor": FACTOR,
                "max_position_embeddings": L0,
            }
        },
        int(L0 * FACTOR),
    ),
    "yarn x8": (
        {
            "scaling": {
                "rope_type": "yarn",
                "factor": FACTOR,
                "original_max_position_embeddings": L0,
            }
        },
        None,
    ),
    "llama3 x8": (
        {
            "scaling": {
                "rope_type": "llama3",
                "factor": FACTOR,
                "low_freq_factor": 1.0,
                "high_freq_factor": 4.0,
                "original_max_position_embeddings": L0,
            }
        },
        None,
    ),
    "longrope (long factors 1..64)": (
        {
            "scaling": {
                "rope_type": "longrope",
                "original_max_position_embeddings": L0,
                "factor": FACTOR,
                "short_factor": [1.0] * 64,
                "long_factor": [1 + 63 * (i / 63) ** 2 for i in range(64)],
            }
        },
        int(L0 * FACTOR),
    ),
    "p-RoPE p=0.75 / proportional": ({"p_rope": 0.75}, None),
}


def main() -> None:
    fig, ax = plt.subplots(figsize=(8, 5))
    for label, (options, seq_len) in SCHEDULES.items():
        base = 500000.0
        inv_freq = RotaryEmbedding(HEAD_DIM, base=base, cache_len=0, **options).frequencies(seq_len)
        pairs = [i for i, w in enumerate(inv_freq.tolist()) if w > 0]  # p-RoPE's dropped pairs have no wavelength
        ax.plot(
            pairs,
            [2 * math.pi / inv_freq[i].item() for i in pairs],
            label=label,
            lw=1.5,
        )
    ax.axhline(L0, ls="--", c="k", lw=1, label=f"trained context L0 = {L0}")
    ax.axhline(L0 * FACTOR, ls=":", c="k", lw=1, label=f"extended context {int(L0 * FACTOR)}")
    ax.set_yscale("log")
    ax.set_xlabel("pair index i (rotary_dim / 2 = 64 pairs)")
    ax.set_ylabel("wavelength 2 pi / w_i (tokens)")
    ax.set_title(f"RoPE schedules, head_dim {HEAD_DIM}, base 500000")
    ax.legend(fontsize=8)
    OUT.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(OUT, dpi=120)
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()

"""RoPE precision at long positions, and what exact angles cost (CPU, eager).

    python benchmarks/rope_precision.py

Precision: max abs error of a float32 rotation of float32 unit-scale q (randn) against a float64
rotation with the same float64 frequencies, at positions near 1k, 10k, 100k and 1M (64 positions
each), for three released schedules built from their transformers configs:
- ``posenc``: ``RotaryEmbedding.from_hf_config(config)(q, q, positions)``;
- ``HF``: transformers' own ``LlamaRotaryEmbedding`` + ``apply_rotary_pos_emb`` (float32 angles).

Cost: the float32 cos/sin tables for T positions computed on the fly (what a position past the
cache or a decode step pays), float32 angles against posenc's float64 angles reduced mod 2 pi, and
one full ``rope(q, k)`` call with cached tables (unchanged by the float64 angles).
"""

from __future__ import annotations

import time

import torch
from transformers import LlamaConfig, Phi3Config, Qwen2Config
from transformers.models.llama.modeling_llama import (
    LlamaRotaryEmbedding,
    apply_rotary_pos_emb,
)

from posenc.encodings.rope import RotaryEmbedding, expand_pairs, rope_cos_sin

F64 = torch.float64
CENTRES = (1_000, 10_000, 100_000, 1_000_000)


def configs() -> dict[str, object]:
    return {
        "Llama 3.1 (llama3)": LlamaConfig(
            hidden_size=4096,
            num_attention_heads=32,
            max_position_embeddings=131072,
            rope_theta=500000.0,
            rope_scaling={
                "rope_type": "llama3",
                "factor": 8.0,
                "low_freq_factor": 1.0,
                "high_freq_factor": 4.0,
                "original_max_position_embeddings": 8192,
            },
        ),
        "Qwen2.5 (yarn x4)": Qwen2Config(
            hidden_size=3584,
            num_attention_heads=28,
            max_position_embeddings=131072,
            rope_theta=1e6,
            rope_scaling={
                "type": "yarn",
                "factor": 4.0,
                "original_max_position_embeddings": 32768,
            },
        ),
        "Phi-3.5 shape (longrope, synthetic factors)": Phi3Config(
            hidden_size=3072,
            num_attention_heads=32,
            max_position_embeddings=131072,
            original_max_position_embeddings=4096,
            rope_theta=10000.0,
            rope_scaling={
                "type": "longrope",
                "short_factor": [1.0 + i / 48 for i in range(48)],
                "long_factor": [1.0 + 63 * i / 47 for i in range(48)],
            },
        ),
    }


def rotate64(x: torch.Tensor, positions: torch.Tensor, inv_freq: torch.Tensor, factor: float) -> torch.Tensor:
    angles = expand_pairs(positions.to(F64)[:, None] * inv_freq, "half")  # (T, hs)
    x = x.double()
    h = x.shape[-1] // 2
    turned = torch.cat((-x[..., h:], x[..., :h]), dim=-1)
    return (x * angles.cos() + turned * angles.sin()) * factor


def precision_table() -> None:
    print("| schedule | position | posenc vs float64 | HF vs float64 |")
    print("|---|---:|---:|---:|")
    for name, config in configs().items():
        rope = RotaryEmbedding.from_hf_config(config, cache_len=0)
        hf = LlamaRotaryEmbedding(config)
        for centre in CENTRES:
            positions = torch.arange(centre - 63, centre + 1)
            q = torch.randn(1, 4, 64, rope.head_dim, generator=torch.Generator().manual_seed(centre))
            seq_len = centre + 1  # both sides rotate the sequence 0..centre
            ref = rotate64(q, positions, rope.frequencies(seq_len), rope.attention_factor)
            ours = rope(q, q, positions)[0]
            # HF picks long/short or grows dynamic frequencies from max(position_ids) + 1: the same length
            cos, sin = hf(q, positions[None])
            theirs = apply_rotary_pos_emb(q, q, cos, sin)[0]
            err = lambda out, ref=ref: float((out.double() - ref).abs().max())
            print(f"| {name} | {centre:,} | {err(ours):.1e} | {err(theirs):.1e} |")


def timed(fn, repeat: int = 20) -> float:
    fn()
    best = float("inf")
    for _ in range(5):
        start = time.perf_counter()
        for _ in range(repeat):
            fn()
        best = min(best, (time.perf_counter() - start) / repeat)
    return best * 1e3


def cost_table() -> None:
    print(f"\nCPU eager, {torch.get_num_threads()} threads; best of 5 means, ms")
    print(
        "| call | float32, expanded (posenc before) | float32, per pair | posenc: float64, per pair | ratio to per-pair float32 |"
    )
    print("|---|---:|---:|---:|---:|")
    inv_freq = RotaryEmbedding(128, cache_len=0).frequencies()

    def float32_expanded(positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        angles = expand_pairs(positions.float()[..., None] * inv_freq.float(), "half")
        return angles.cos(), angles.sin()

    def float32_per_pair(positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        angles = positions.float()[..., None] * inv_freq.float()
        return expand_pairs(angles.cos(), "half"), expand_pairs(angles.sin(), "half")

    for T in (1, 2048, 32768):
        positions = torch.arange(10**6 - T, 10**6)
        a = timed(lambda p=positions: float32_expanded(p))
        b = timed(lambda p=positions: float32_per_pair(p))
        c = timed(lambda p=positions: rope_cos_sin(p, inv_freq, "half"))
        print(f"| cos/sin tables, hs=128, T={T} | {a:.3f} | {b:.3f} | {c:.3f} | {c / b:.2f} |")
    rope = RotaryEmbedding(128, cache_len=2048)
    q, k = torch.randn(2, 4, 16, 2048, 128)
    with torch.no_grad():
        t = timed(lambda: rope(q, k), repeat=5)
        u = timed(lambda: rope(q, k, torch.arange(2048)), repeat=5)
    print("\n| rope(q, k), B=4 nh=16 T=2048 hs=128 | ms |")
    print("|---|---:|")
    print(f"| cached tables (positions=None) | {t:.1f} |")
    print(f"| tables computed (positions given) | {u:.1f} |")


if __name__ == "__main__":
    torch.manual_seed(0)
    precision_table()
    cost_table()

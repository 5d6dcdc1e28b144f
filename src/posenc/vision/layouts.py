"""Which frequency goes to which axis: the multi-axis RoPE layouts side by side, as data
(:func:`layouts`) and as the figure of docs/rope_multiaxis.md (:func:`plot_layouts`)."""

from __future__ import annotations

import torch

from posenc.encodings.base import sizes
from posenc.encodings.rope import RotaryEmbedding
from posenc.vision.axial import AxialRotaryEmbedding


def layouts() -> dict[str, list[tuple[int, float]]]:
    """Per layout, for each frequency pair of a 32-channel head in channel order: (its axis, its
    frequency). The M-RoPE sections are the models' own (Qwen2-VL (16, 24, 24), Qwen3-VL (24, 20,
    20) for 128 channels) scaled to 32."""
    head_dim, pairs = 32, 16
    dims = sizes(head_dim=head_dim)
    out: dict[str, list[tuple[int, float]]] = {}
    mrope = {
        "M-RoPE chunked (Qwen2-VL)": RotaryEmbedding.Config(mrope_section=(4, 6, 6)),
        "M-RoPE interleaved (Qwen3-VL)": RotaryEmbedding.Config(mrope_section=(6, 5, 5), mrope_interleaved=True),
    }
    for name, config in mrope.items():
        rope = config.build(dims)
        out[name] = [(a, float(f)) for a, f in zip(rope.pair_axes, rope.inv_freq64.tolist())]
    axial = {
        "axial contiguous (RoPE-ViT, rotary-embedding-torch)": AxialRotaryEmbedding.Config(split="contiguous"),
        "axial alternating (Pixtral)": AxialRotaryEmbedding.Config(split="alternating"),
    }
    for name, layout in axial.items():
        F = layout.build(dims).freqs[0]  # (axes, pairs)
        out[name] = [(int(F[:, i].abs().argmax()), float(F[:, i].abs().max())) for i in range(pairs)]
    return out


def plot_layouts(path: str) -> None:
    """One row per layout, one cell per frequency pair: colour = axis, shade = log frequency."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    data = layouts()
    colours = torch.tensor([[0.12, 0.47, 0.71], [0.84, 0.37, 0.0], [0.17, 0.63, 0.17]])
    fig, ax = plt.subplots(figsize=(9, 0.6 * len(data) + 1.2))
    for row, cells in enumerate(data.values()):
        logs = torch.tensor([f for _, f in cells]).log()
        shade = (logs - logs.min()) / (logs.max() - logs.min() + 1e-12)  # 1: highest frequency
        for i, (axis, _) in enumerate(cells):
            colour = (1 - 0.75 * shade[i]) * torch.ones(3) + 0.75 * shade[i] * colours[axis]
            ax.add_patch(plt.Rectangle((i, row), 1, 0.9, color=colour.tolist()))
            ax.text(
                i + 0.5,
                row + 0.45,
                "thw"[axis] if "M-RoPE" in list(data)[row] else "yx"[axis],
                ha="center",
                va="center",
                fontsize=7,
            )
    ax.set(xlim=(0, 16), ylim=(len(data), 0), yticks=[r + 0.45 for r in range(len(data))], yticklabels=list(data))
    ax.set_xlabel(
        "frequency pair in channel order (pair i rotates channels i and i + head_dim/2); darker = higher frequency"
    )
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)

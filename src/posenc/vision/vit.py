"""A small vision transformer for comparing 2-D positions, and the resolution study on
scikit-learn's bundled 8x8 digits (offline).

:class:`ViT` (``ViT.Config``): patches of ``patch`` x ``patch`` pixels, a CLS token, pre-norm blocks
with bidirectional attention, and one of the 2-D positions

- ``"absolute"``: a learned table over the training grid, added to the patch embeddings and
  resized bicubically to another grid (DeiT / the RoPE-ViT papers' APE);
- ``"axial"``: :class:`~posenc.vision.AxialRotaryEmbedding` over (row, column) patch indices, the
  contiguous split (RoPE-Axial);
- ``"axial_norm"``: the same over patch centres normalised to [-1, 1] (``"pixel"`` frequencies up to
  ``max_freq``), so a finer grid over the same image spans the same coordinates (DINOv3's choice);
- ``"mixed"``: RoPE-Mixed's learned per-head frequencies;
- ``"none"``: no position at all;

with the CLS token unrotated. Any image size that the patch divides runs: the grid follows it.

:func:`digits_study` trains each encoding at 8x8 pixels for a few seeds and tests it on the test
images at 8x8 and upsampled (bilinear) to larger sizes -- more patches of the same size, as the
RoPE-ViT papers' multi-resolution test (Heo et al. 2024). ``examples/vit_digits.py`` runs it.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from posenc.block import MLP
from posenc.encodings.base import ModelDims
from posenc.spec import Spec, check_choice, check_int, spec
from posenc.vision.axial import AxialRotaryEmbedding, grid_coords

VISION_ENCODINGS: tuple[str, ...] = ("absolute", "axial", "axial_norm", "mixed", "none")


class Attention(nn.Module):
    """Bidirectional multi-head attention with an optional rotary encoding ``pe`` of patch coordinates
    (the ViT's config gives its width and heads)."""

    def __init__(self, config: ViT.Config, *, pe: AxialRotaryEmbedding | None = None) -> None:
        super().__init__()
        dim = config.n_embd
        self.n_head, self.rope = config.n_head, pe
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: Tensor, coords: Tensor) -> Tensor:
        B, T, C = x.shape
        q, k, v = self.qkv(x).view(B, T, 3, self.n_head, C // self.n_head).permute(2, 0, 3, 1, 4)
        if self.rope is not None:
            q, k = self.rope(q, k, coords)
        y = F.scaled_dot_product_attention(q, k, v)  # (B, nh, T, hs), every token sees every token
        return self.proj(y.transpose(1, 2).reshape(B, T, C))


class Block(nn.Module):
    """Pre-norm block of the ViT: LayerNorms, :class:`Attention` with the layer's ``pe``, an exact-GELU MLP."""

    def __init__(self, config: ViT.Config, *, pe: AxialRotaryEmbedding | None = None) -> None:
        super().__init__()
        dim = config.n_embd
        self.ln_1, self.attn = nn.LayerNorm(dim), Attention(config, pe=pe)
        self.ln_2, self.mlp = nn.LayerNorm(dim), MLP.Config(kind="gelu_exact").build(config.dims)

    def forward(self, x: Tensor, coords: Tensor) -> Tensor:
        x = x + self.attn(self.ln_1(x), coords)
        return x + self.mlp(self.ln_2(x))


class ViT(nn.Module):
    """A vision transformer classifying images (B, channels, H, W) -> logits (B, n_classes)."""

    @spec
    class Config(Spec):
        """Sizes, the training image size ``image`` (the absolute table's grid) and ``pe``; ``base``
        is the rotary base (RoPE-ViT: 100 for axial, 10 for mixed), ``max_freq`` axial_norm's top
        frequency (pi * max_freq / 2: half a turn per patch at a 4-patch grid for 4), ``seed`` draws
        RoPE-Mixed's initial directions (layer i: ``seed + i``)."""

        image: int = 8
        patch: int = 2
        channels: int = 1
        n_classes: int = 10
        n_layer: int = 3
        n_head: int = 4
        n_embd: int = 48
        pe: Literal["absolute", "axial", "axial_norm", "mixed", "none"] = "axial"
        base: float = 100.0
        max_freq: float = 4.0
        seed: int = 0

        def __post_init__(self) -> None:
            for name in ("image", "patch", "channels", "n_classes", "n_layer", "n_head", "n_embd"):
                check_int("ViT.Config", name, getattr(self, name))
            check_choice("ViT.Config", "pe", self.pe, VISION_ENCODINGS)
            if self.image % self.patch:
                raise ValueError(f"ViT.Config patch={self.patch} must divide image={self.image}")
            if self.n_embd % self.n_head or (self.n_embd // self.n_head) % 4:
                raise ValueError(
                    f"ViT.Config n_embd={self.n_embd} must split into {self.n_head} heads of a multiple of 4"
                )
            check_int("ViT.Config", "seed", self.seed, minimum=-(2**63))  # any int seeds a generator

        @property
        def dims(self) -> ModelDims:
            """The sizes: width, heads and the training grid's tokens (CLS included)."""
            return ModelDims(n_embd=self.n_embd, n_head=self.n_head, block_size=1 + (self.image // self.patch) ** 2)

    def __init__(self, config: Config) -> None:
        super().__init__()
        self.config = c = config
        self.patch_embed = nn.Conv2d(c.channels, c.n_embd, kernel_size=c.patch, stride=c.patch)
        self.cls = nn.Parameter(torch.zeros(1, 1, c.n_embd))
        grid = c.image // c.patch
        self.pos = nn.Parameter(torch.randn(1, c.n_embd, grid, grid) * 0.02) if c.pe == "absolute" else None
        ropes = {
            "axial": AxialRotaryEmbedding.Config(base=c.base, n_prefix=1),
            "axial_norm": AxialRotaryEmbedding.Config(freqs="pixel", max_freq=c.max_freq, n_prefix=1),
            "mixed": AxialRotaryEmbedding.Config(base=c.base, mixed=True, n_prefix=1),
        }

        def rope(layer: int) -> AxialRotaryEmbedding | None:
            if c.pe not in ropes:
                return None
            if c.pe == "mixed":  # one learned set per layer, as RoPE-Mixed
                return ropes[c.pe].replace(seed=c.seed + layer).build(c.dims)
            return ropes[c.pe].build(c.dims)

        self.blocks = nn.ModuleList(Block(c, pe=rope(i)) for i in range(c.n_layer))
        self.ln_f, self.head = nn.LayerNorm(c.n_embd), nn.Linear(c.n_embd, c.n_classes)

    def forward(self, images: Tensor) -> Tensor:
        c = self.config
        if images.dim() != 4 or images.shape[1] != c.channels or images.shape[2] % c.patch or images.shape[3] % c.patch:
            raise ValueError(
                f"images must have shape (B, {c.channels}, H, W) with H and W multiples of patch={c.patch}, "
                f"got {tuple(images.shape)}"
            )
        x = self.patch_embed(images)  # (B, C, gh, gw)
        gh, gw = x.shape[-2:]
        if self.pos is not None:
            pos = self.pos if self.pos.shape[-2:] == (gh, gw) else F.interpolate(self.pos, (gh, gw), mode="bicubic")
            x = x + pos
        x = torch.cat((self.cls.expand(x.shape[0], -1, -1), x.flatten(2).transpose(1, 2)), dim=1)  # (B, 1 + gh gw, C)
        coords = grid_coords(gh, gw, normalize=c.pe == "axial_norm", device=x.device)
        for block in self.blocks:
            x = block(x, coords)
        return self.head(self.ln_f(x[:, 0]))


# -- the digits study -------------------------------------------------------------------------------


def load_digits(seed: int, test_fraction: float = 0.25) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """scikit-learn's 1797 bundled 8x8 digits (values 0-16, scaled to [0, 1]): a split drawn by ``seed``."""
    try:
        from sklearn.datasets import load_digits as sklearn_digits
    except ImportError as e:
        raise ImportError("the digits study needs scikit-learn: pip install 'posenc[vision]'") from e
    data = sklearn_digits()
    images = torch.tensor(data.images, dtype=torch.float32)[:, None] / 16.0  # (N, 1, 8, 8)
    labels = torch.tensor(data.target)
    order = torch.randperm(len(labels), generator=torch.Generator().manual_seed(seed))
    n_test = int(len(labels) * test_fraction)
    test, train = order[:n_test], order[n_test:]
    return images[train], labels[train], images[test], labels[test]


def accuracy(model: ViT, images: Tensor, labels: Tensor, size: int) -> float:
    """Accuracy on ``images`` resized (bilinear) to ``size`` x ``size`` pixels."""
    model.eval()
    with torch.no_grad():
        x = images if images.shape[-1] == size else F.interpolate(images, (size, size), mode="bilinear")
        return (model(x).argmax(-1) == labels).float().mean().item()


def train_digits(
    pe: str, seed: int, *, sizes: Sequence[int] = (8, 12, 16), epochs: int = 30, batch: int = 64, lr: float = 2e-3
) -> dict[str, Any]:
    """Train one ViT with ``pe`` on the digits at 8x8 (seed: split, init and batches); its test
    accuracy at each of ``sizes``, its final training loss, parameters and time."""
    torch.manual_seed(seed)
    x_train, y_train, x_test, y_test = load_digits(seed)
    model = ViT(ViT.Config(pe=pe, base=10.0 if pe == "mixed" else 100.0, seed=seed))
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.05)
    steps = epochs * math.ceil(len(y_train) / batch)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps, pct_start=0.1)
    g, t0, loss = torch.Generator().manual_seed(seed), time.time(), torch.tensor(float("nan"))
    for _ in range(epochs):
        model.train()
        for idx in torch.randperm(len(y_train), generator=g).split(batch):
            loss = F.cross_entropy(model(x_train[idx]), y_train[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
    return {
        "pe": pe,
        "seed": seed,
        "train_loss": loss.item(),
        "accuracy": {str(s): accuracy(model, x_test, y_test, s) for s in sizes},
        "params": sum(p.numel() for p in model.parameters()),
        "time_s": time.time() - t0,
    }


def digits_study(
    encodings: Sequence[str] = VISION_ENCODINGS,
    seeds: Sequence[int] = (0, 1, 2),
    *,
    on_run: Callable[[dict[str, Any], int, int], None] | None = None,
    **kwargs: Any,
) -> dict[str, Any]:
    """Every encoding at every seed (:func:`train_digits`), with per-encoding means and spreads;
    ``on_run(run, i, n)`` is called after each of the ``n`` runs (e.g. to show progress)."""
    jobs = [(pe, s) for pe in encodings for s in seeds]
    runs = []
    for i, (pe, s) in enumerate(jobs):
        runs.append(train_digits(pe, s, **kwargs))
        if on_run is not None:
            on_run(runs[-1], i + 1, len(jobs))
    sizes = list(runs[0]["accuracy"])
    summary = {}
    for pe in encodings:
        mine = [r for r in runs if r["pe"] == pe]
        summary[pe] = {
            size: {
                "mean": sum(r["accuracy"][size] for r in mine) / len(mine),
                "min": min(r["accuracy"][size] for r in mine),
                "max": max(r["accuracy"][size] for r in mine),
            }
            for size in sizes
        }
    return {
        "kind": "vision-digits",
        "encodings": list(encodings),
        "seeds": list(seeds),
        "sizes": sizes,
        "runs": runs,
        "summary": summary,
    }


def render(results: dict[str, Any]) -> str:
    """The markdown table of a :func:`digits_study` result: mean test accuracy (min-max over seeds)."""
    sizes = results["sizes"]
    head = "| encoding | " + " | ".join(f"{s}x{s} px ({int(s) // 2}x{int(s) // 2} patches)" for s in sizes) + " |"
    rows = [head, "|---" * (len(sizes) + 1) + "|"]
    for pe in results["encodings"]:
        cells = [f"{v['mean']:.3f} ({v['min']:.3f}-{v['max']:.3f})" for v in results["summary"][pe].values()]
        rows.append(f"| {pe} | " + " | ".join(cells) + " |")
    return "\n".join(rows) + "\n"


def plot(results: dict[str, Any], path: str) -> None:
    """Accuracy against image size, one line per encoding (mean, min-max band over seeds)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 3.6))
    sizes = [int(s) for s in results["sizes"]]
    for pe in results["encodings"]:
        cells = list(results["summary"][pe].values())
        ax.plot(sizes, [c["mean"] for c in cells], marker="o", label=pe)
        ax.fill_between(sizes, [c["min"] for c in cells], [c["max"] for c in cells], alpha=0.15)
    ax.axvline(sizes[0], color="grey", lw=0.8, ls=":")
    ax.set(xlabel="test image size (px; trained at 8)", ylabel="test accuracy", xticks=sizes, ylim=(0, 1))
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


QUICK_EPOCHS = 10  # --quick: enough to see every encoding learn and extrapolate, not to rank them


def main(argv: Sequence[str] | None = None) -> int:
    """``examples/vit_digits.py``: run :func:`digits_study`, write its JSON, table and figure."""
    import json
    from pathlib import Path

    from posenc.flags import Parser, positive_int
    from posenc.io import atomic_write

    p = Parser(
        prog="examples/vit_digits.py", description="2-D positions in a small ViT on scikit-learn's 8x8 digits (offline)"
    )
    p.add_argument(
        "--encodings",
        nargs="+",
        default=list(VISION_ENCODINGS),
        choices=VISION_ENCODINGS,
        metavar="PE",
        help=f"of {', '.join(VISION_ENCODINGS)}",
    )
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2], help="one run per encoding and seed")
    p.add_argument(
        "--sizes", nargs="+", type=int, default=[8, 12, 16], help="test image sizes (px); the first is trained"
    )
    p.add_argument("--epochs", type=positive_int, default=30, help="passes over the training images")
    p.add_argument(
        "--quick",
        action="store_true",
        help=f"a check in under a minute: seed 0, {QUICK_EPOCHS} epochs, in out/vision-quick",
    )
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    p.add_argument(
        "--out", default=None, help="folder for digits.json, table.md and accuracy.png (default: out/vision)"
    )
    args = p.parse_args(argv)
    if args.sizes[0] != 8 or any(s % 2 for s in args.sizes):
        p.error(f"--sizes must start at the training size 8 and be even (patches of 2 px), got {args.sizes}")
    if args.quick:
        args.seeds, args.epochs = [0], QUICK_EPOCHS
    if args.threads:
        torch.set_num_threads(args.threads)
    t0 = time.time()

    def progress(run: dict[str, Any], i: int, n: int) -> None:
        acc = " ".join(f"{size}px {value:.3f}" for size, value in run["accuracy"].items())
        print(f"[{i}/{n}] {run['pe']} seed {run['seed']}: accuracy {acc} ({run['time_s']:.0f} s)", flush=True)

    results = digits_study(args.encodings, args.seeds, sizes=args.sizes, epochs=args.epochs, on_run=progress)
    config = {k: v for k, v in ViT.Config().to_dict().items() if k != "seed"}  # each run's seed is in its row
    results |= {"epochs": args.epochs, "config": config, "wall_time_s": time.time() - t0}
    args.out = args.out or ("out/vision-quick" if args.quick else "out/vision")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write(out / "digits.json", json.dumps(results, indent=1))
    atomic_write(out / "table.md", render(results))
    try:
        plot(results, str(out / "accuracy.png"))
    except ImportError:
        print("matplotlib is not installed: no figure (pip install 'posenc[vision]')")
    print(render(results), end="")
    print(f"wrote {out}/digits.json, table.md, accuracy.png in {time.time() - t0:.0f} s")
    return 0

"""The figures of a comparison, drawn from a results dict alone: loss curves, length
extrapolation and per-position loss.

matplotlib is optional (``pip install 'posenc[train]'``); it is imported when a figure is drawn.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from posenc.io import atomic_write
from posenc.variants import label

#: The files :func:`plot_all` writes, in order.
FIGURES: tuple[str, ...] = ("curves.png", "extrapolation.png", "per_position.png")


def pyplot() -> Any:
    """``matplotlib.pyplot`` on the non-interactive Agg backend; ImportError saying what to install."""
    try:
        import matplotlib
    except ImportError as e:
        raise ImportError("the report's figures need matplotlib: pip install 'posenc[train]' (or matplotlib)") from e
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def have_matplotlib() -> bool:
    try:
        pyplot()
    except ImportError:
        return False
    return True


def save_figure(fig: Any, path: Path, plt: Any) -> None:
    fig.tight_layout()
    atomic_write(path, lambda f: fig.savefig(f, dpi=110, format="png"))
    plt.close(fig)


def variant_colors(plt: Any, variants: list[str]) -> dict[str, Any]:
    """One distinct colour per variant: tab10 up to 10 variants (the page's first figures), tab20 beyond."""
    if len(variants) <= 10:
        return {v: plt.get_cmap("tab10")(i) for i, v in enumerate(variants)}
    return {v: plt.get_cmap("tab20")(i % 20) for i, v in enumerate(variants)}


def plot_curves(results: dict[str, Any], path: Path) -> None:
    """Train and validation loss against tokens, mean ± std over seeds."""
    plt = pyplot()
    agg = results["aggregate"]
    colors = variant_colors(plt, list(agg))
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5), sharey=True)
    for ax, key, title in zip(axes, ("train_loss", "val_loss"), ("train (mean over each eval interval)", "validation")):
        for v, a in agg.items():
            pts = [(p["tokens"], p[key]) for p in a["curve"] if p[key] is not None]
            if not pts:
                continue
            x = np.array([t for t, _ in pts])
            m = np.array([s["mean"] for _, s in pts])
            sd = np.array([s["std"] or 0.0 for _, s in pts])
            ax.plot(x, m, "o-", ms=3, color=colors[v], label=label(v))
            ax.fill_between(x, m - sd, m + sd, color=colors[v], alpha=0.15)
        ax.set_title(title)
        ax.set_xlabel("tokens")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("loss (mean ± std over seeds)")
    axes[1].legend(fontsize=8)
    save_figure(fig, path, plt)


def plot_extrapolation(results: dict[str, Any], path: Path) -> None:
    """Loss against the context multiplier, and loss by position at the largest context."""
    plt = pyplot()
    agg = results["aggregate"]
    colors = variant_colors(plt, list(agg))
    T = results["block_size"]
    width = results["per_position_long_width"]
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    for v, a in agg.items():
        pts = [(int(m), s) for m, s in a["extrapolation"].items() if s is not None]
        axes[0].errorbar(
            [m for m, _ in pts],
            [s["mean"] for _, s in pts],
            yerr=[s["std"] or 0.0 for _, s in pts],
            fmt="o-",
            ms=4,
            capsize=3,
            color=colors[v],
            label=label(v),
        )
        if a["per_position_long"]:
            xs = (np.arange(len(a["per_position_long"])) + 0.5) * width
            axes[1].plot(xs, a["per_position_long"], color=colors[v], label=label(v))
    axes[0].set_xscale("log", base=2)
    axes[0].set_xlabel(f"evaluation context / training context ({T} tokens)")
    axes[0].set_ylabel("validation loss (same tokens at every context)")
    axes[0].set_title("length extrapolation (KV-free full forward)")
    axes[1].axvline(T, color="k", ls="--", lw=1)
    axes[1].set_xlabel("position in a window of the largest context")
    axes[1].set_ylabel(f"loss (mean over buckets of {width} positions)")
    axes[1].set_title("loss by position at the largest context (dashed: training context)")
    for ax in axes:
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    save_figure(fig, path, plt)


def plot_per_position(results: dict[str, Any], path: Path) -> None:
    """Loss at each position of the training context, log-scaled positions."""
    plt = pyplot()
    agg = results["aggregate"]
    colors = variant_colors(plt, list(agg))
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for v, a in agg.items():
        ax.plot(np.arange(1, len(a["per_position"]) + 1), a["per_position"], color=colors[v], lw=1, label=label(v))
    ax.set_xscale("log")
    ax.set_xlabel("position within the training context (1 = first predicted token)")
    ax.set_ylabel("validation loss (mean over windows and seeds)")
    ax.set_title("per-position loss")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    save_figure(fig, path, plt)


def plot_all(results: dict[str, Any], folder: str | os.PathLike) -> list[str]:
    """:data:`FIGURES` in ``folder`` (created if needed); returns their names. Raises ImportError
    without matplotlib."""
    pyplot()  # fail before creating anything
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    for name, plot in zip(FIGURES, (plot_curves, plot_extrapolation, plot_per_position)):
        plot(results, folder / name)
    return list(FIGURES)

"""Pages of the named studies (:mod:`posenc.studies`), each drawn from its json alone:
``lr.json`` (loss against learning rate, the tables at the shared and the best rates),
``extension.json`` (loss against context for every schedule, fine-tune and extrapolating
encoding), ``synthetic.json`` (passkey accuracy by length and depth) and ``real.json``
(:mod:`posenc.report.real`).

    render_study(json.loads(Path("out/compare-cpu/lr.json").read_text()), "docs/results-lr.md")
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from posenc.io import atomic_write
from posenc.report.figures import have_matplotlib, pyplot, save_figure, variant_colors
from posenc.report.real import plot_real, real_markdown
from posenc.report.revisions import revisions_markdown
from posenc.report.stats import fmt_spread
from posenc.variants import label


def row(v: str) -> str:
    """A row's name: the variant's label, or the name itself (schedules, fine-tunes)."""
    return label(v, default=v)


def provenance(results: dict[str, Any]) -> list[str]:
    env = results["environment"]
    return [
        f"- Command: `{results['command']}`",
        f"- Date: {results['created']}; git commit {env['git_commit'] or 'unknown'}"
        f"{' (with uncommitted changes)' if env['git_dirty'] else ''}; torch {env['torch']}; {env['device']}"
        f"{' (' + env['gpu'] + ')' if env['gpu'] else ''}; {env['cpu_count']} CPUs; {env['platform']}",
        f"- Wall time of this invocation: {results['wall_time_s'] / 60:.1f} min (runs already trained are reused)"
        + (
            f"; the runs on this page trained for {trained / 60:.1f} min in all (the sum of their own times)"
            if (trained := sum(r.get("train_time_s") or 0 for r in results.get("runs", {}).values()))
            else ""
        ),
        "",
    ]


def _fmt(x: float | None, digits: int = 4) -> str:
    return "n/a" if x is None else f"{x:.{digits}f}"


# -- lr ---------------------------------------------------------------------------------------------


def phase1_rates(results: dict[str, Any]) -> list[float]:
    """Every rate phase 1 ran for any variant (the grid and any step past it), ascending."""
    return sorted({float(lr) for by_lr in results["phase1"].values() for lr in by_lr})


def lr_markdown(results: dict[str, Any], figures: list[str], assets: str) -> str:
    grid, shared, seed = results["grid"], results["shared_lr"], results["seeds"][0]
    beyond = results.get("beyond_grid", {})
    rates = phase1_rates(results)
    out = ["# Results: the learning-rate study", "", *provenance(results)]
    out += [
        f"Preset `{results['preset']}`; every variant at {len(grid)} peak rates "
        f"({', '.join(f'{lr:g}' for lr in grid)}; min_lr a tenth of each), seed {seed}; "
        f"the shared rate of the main table is {shared:g}. A variant whose best rate was the highest or lowest it "
        f"had run also ran the rate {results.get('edge_factor', 2):g}x past it, up to {results.get('edge_steps', 0)} times. "
        "Final validation loss (the best of each row in bold; `diverged`: the loss became non-finite; "
        "`-`: not run):",
        "",
        "| variant | " + " | ".join(f"lr {lr:g}" for lr in rates) + " | best |",
        "|---|" + "---:|" * len(rates) + "---|",
    ]
    pending = total = 0
    for v, by_lr in results["phase1"].items():
        best = results["best_lr"].get(v)
        cells = []
        for lr in rates:
            if f"{lr:g}" not in by_lr:
                cells.append("-")
                continue
            run = results["runs"][f"{v}/lr{lr:g}/s{seed}"]
            pending, total = pending + bool(run.get("pending")), total + 1
            cell = "diverged" if run["diverged"] else "pending" if run.get("pending") else _fmt(by_lr[f"{lr:g}"])
            cells.append(f"**{cell}**" if lr == best else cell)
        out.append(f"| {row(v)} | " + " | ".join(cells) + f" | {'n/a' if best is None else f'{best:g}'} |")
    out.append("")
    if pending:
        out += [
            f"**Phase 1 is not finished:** {pending} of {total} runs are pending, so a "
            "best rate here is the best among the rates run so far. Run the command again to continue.",
            "",
        ]
    if beyond:
        out += [
            "Past the grid (its best rate was on the edge): "
            + ", ".join(f"{row(v)} ({', '.join(f'{lr:g}' for lr in lrs)})" for v, lrs in beyond.items())
            + ".",
            "",
        ]
    edge = [
        v
        for v, lr in results["best_lr"].items()
        if len(results["phase1"][v]) > 1
        and lr in (min(map(float, results["phase1"][v])), max(map(float, results["phase1"][v])))
    ]
    if edge:
        out += [
            "Still at the edge of the rates run (the best rate may lie beyond it): "
            + ", ".join(f"{row(v)} ({results['best_lr'][v]:g})" for v in edge)
            + ".",
            "",
        ]
    if "lr.png" in figures:
        out += [f"![loss against learning rate]({assets}/lr.png)", ""]
    return "\n".join(out + _lr_phase2(results) + revisions_markdown(results))


def _lr_phase2(results: dict[str, Any]) -> list[str]:
    """The page's second half: every seed at the shared and at the best rates."""
    shared, seed = results["shared_lr"], results["seeds"][0]
    out: list[str] = []
    if results["at_shared"] is None or results["at_best"] is None:
        out += [
            "## At the shared and at the best rate",
            "",
            f"Not yet run: phase 2 trains seeds {results['seeds']} at the shared and at each variant's best rate. "
            "Run the command again to continue.",
            "",
        ]
        return out
    out += [
        "## At the shared and at the best rate",
        "",
        f"Validation loss, mean ± std over seeds {results['seeds']}:",
        "",
        "| variant | at lr " + f"{shared:g}" + " | best lr | at best lr | change |",
        "|---|---:|---:|---:|---:|",
    ]
    for v in results["variants"]:
        a, b = results["at_shared"][v], results["at_best"][v]
        change = b["val_loss"]["mean"] - a["val_loss"]["mean"] if a["val_loss"] is not None and b["val_loss"] else None
        out.append(
            f"| {row(v)} | {fmt_spread(a['val_loss'])} | {b['lr']:g} | {fmt_spread(b['val_loss'])} | "
            f"{'n/a' if change is None else f'{change:+.4f}'} |"
        )
    worse = [
        v
        for v in results["variants"]
        if results["at_best"][v]["lr"] != shared
        and results["at_best"][v]["val_loss"]["mean"] > results["at_shared"][v]["val_loss"]["mean"]
    ]
    if worse:
        seeds = lambda v: " / ".join(  # noqa: E731
            _fmt(results["runs"][f"{v}/lr{results['best_lr'][v]:g}/s{s}"]["val_loss"]) for s in results["seeds"]
        )
        out += [
            "",
            f"Worse in the mean over seeds at its best rate (chosen on seed {seed}) than at the shared "
            "rate, so one seed's choice does not hold: "
            + "; ".join(f"{row(v)} (seeds {seeds(v)} at {results['best_lr'][v]:g})" for v in worse)
            + ".",
        ]
    changes = results["order_changes"] or []
    out += [
        "",
        "Pairwise orderings that change at each variant's best rate: "
        + (
            "; ".join(f"{row(c['better_at_best'])} now ahead of {row(c['worse_at_best'])}" for c in changes)
            if changes
            else "none"
        )
        + f" (of {len(results['variants']) * (len(results['variants']) - 1) // 2} pairs).",
        "",
    ]
    return out


def plot_lr(results: dict[str, Any], path: Path) -> None:
    plt = pyplot()
    variants = list(results["phase1"])
    rates = phase1_rates(results)
    colors = variant_colors(plt, variants)
    fig, ax = plt.subplots(figsize=(9, 4.5))
    for v in variants:
        points = sorted((float(lr), y) for lr, y in results["phase1"][v].items() if y is not None)
        ax.plot([x for x, _ in points], [y for _, y in points], "o-", color=colors[v], label=row(v))
    ax.axvline(results["shared_lr"], color="grey", lw=0.8, ls=":")
    ax.set_xscale("log", base=2)
    ax.set_xticks(rates, [f"{lr:g}" for lr in rates])
    ax.minorticks_off()
    ax.set_xlim(rates[0] / 1.25, rates[-1] * 1.25)  # every rate run, also while some are pending
    ax.set_xlabel("peak learning rate")
    ax.set_ylabel("final validation loss")
    ax.set_title(f"Loss against learning rate (seed {results['seeds'][0]})")
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))  # beside the axes: 14 rows hide lines
    save_figure(fig, path, plt)


# -- extension -------------------------------------------------------------------------------------


SECTION_TITLES = {
    "zero-shot": "RoPE, zero-shot schedule",
    "fine-tuned": "RoPE, fine-tuned at 4x",
    "extrapolating": "trained at 1x, no fine-tune",
}


def extension_markdown(results: dict[str, Any], figures: list[str], assets: str) -> str:
    mults, T, ft = results["multipliers"], results["block_size"], results["finetune"]
    out = ["# Results: context extension and length extrapolation", "", *provenance(results)]
    out += [
        f"Preset `{results['preset']}`, trained at {T} tokens; {_seeds_said(results)}. Validation loss at "
        f"contexts of 1x-{mults[-1]}x, each row a KV-free forward from position 0 over the same "
        f"{results['eval_tokens']:,} validation tokens. Zero-shot schedules use factor m at m x the context "
        "(dynamic NTK rescales itself with the length; p-RoPE drops the lowest quarter of the frequencies at "
        f"every length). Fine-tunes: {ft['steps']} steps at {ft['factor'] * T} tokens from the RoPE run's weights "
        f"({ft['tokens']:,} tokens, {ft['tokens'] / ft['pretrain_tokens']:.0%} of pretraining; peak lr "
        f"{ft['lr']:g}, fresh optimizer), the same budget for each, from each seed's RoPE run. The lowest loss of "
        "each column in bold.",
        "",
        "| row | " + " | ".join(f"{m}x" for m in mults) + " |",
        "|---|" + "---:|" * len(mults),
    ]
    rows = results["rows"]
    best = {
        str(m): min((r["loss"][str(m)] for r in rows.values() if r["loss"][str(m)] is not None), default=None)
        for m in mults
    }
    for r in rows.values():
        cells = []
        for m in mults:
            x = r["loss"][str(m)]
            cell = _fmt(x) + _seed_std(r, str(m))
            cells.append(f"**{cell}**" if x is not None and x == best[str(m)] else cell)
        shared = r.get("seeds") == results.get("seeds")
        seeds = f" (seeds {', '.join(map(str, r['seeds']))})" if len(r.get("seeds") or []) > 1 and not shared else ""
        out.append(f"| {SECTION_TITLES[r['section']]}: {row(r['name'])}{seeds} | " + " | ".join(cells) + " |")
    out.append("")
    for section, title in SECTION_TITLES.items():
        these = [r for r in rows.values() if r["section"] == section]
        bests = []
        for m in mults[1:]:
            scored = [r for r in these if r["loss"][str(m)] is not None]
            if scored:
                top = min(scored, key=lambda r: r["loss"][str(m)])
                bests.append(f"{m}x {row(top['name'])} ({top['loss'][str(m)]:.4f})")
        if bests:
            out.append(f"- Lowest among *{title}*: " + "; ".join(bests) + ".")
    out.append("")
    if "extension.png" in figures:
        out += [f"![loss against context]({assets}/extension.png)", ""]
    return "\n".join(out + revisions_markdown(results))


def _seeds_said(results: dict[str, Any]) -> str:
    seeds = results.get("seeds") or [results["seed"]]
    if all(r.get("seeds") == seeds for r in results["rows"].values()) and len(seeds) > 1:
        return f"every row the mean over seeds {', '.join(map(str, seeds))} (± their std)"
    return f"seed {results['seed']} (a row with seeds listed: the mean over them, ± their std)"


def _seed_std(r: dict[str, Any], m: str) -> str:
    """`` ± std`` over a row's seeds, when it has several."""
    xs = [losses[m] for losses in (r.get("loss_by_seed") or {}).values() if losses[m] is not None]
    return f" ± {np.std(xs, ddof=1):.4f}" if len(xs) > 1 else ""


def plot_extension(results: dict[str, Any], path: Path) -> None:
    plt = pyplot()
    mults, rows = results["multipliers"], list(results["rows"].values())
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.5), sharey=True)
    for ax, section in zip(axes, SECTION_TITLES, strict=True):
        these = [r for r in rows if r["section"] == section]
        colors = variant_colors(plt, [r["name"] for r in these])
        for r in these:
            pts = [(m, r["loss"][str(m)]) for m in mults if r["loss"][str(m)] is not None]
            ax.plot(*zip(*pts, strict=True), "o-", color=colors[r["name"]], label=row(r["name"]))
        ax.set_xscale("log", base=2)
        ax.set_xticks(mults, [f"{m}x" for m in mults])
        ax.set_title(SECTION_TITLES[section])
        ax.set_xlabel(f"context (x {results['block_size']} tokens)")
        ax.legend(fontsize=8)
    axes[0].set_ylabel("validation loss")
    save_figure(fig, path, plt)


# -- synthetic ------------------------------------------------------------------------------------

#: Published expectations the probe is checked against: (claim, a, b): a retrieves better than b
#: past the training length.
EXPECTATIONS: tuple[tuple[str, str, str], ...] = (
    ("Kazemnejad et al. 2023: NoPE generalises better than RoPE", "nope", "rope"),
    ("Kazemnejad et al. 2023: NoPE generalises better than ALiBi", "nope", "alibi"),
    ("Kazemnejad et al. 2023: T5's bias generalises better than RoPE", "t5", "rope"),
    ("Li et al. 2024 (FIRE): FIRE generalises better than ALiBi", "fire", "alibi"),
    ("Li et al. 2024 (FIRE): FIRE generalises better than KERPLE", "fire", "kerple"),
    ("Li et al. 2024 (FIRE): FIRE generalises better than RoPE", "fire", "rope"),
)


LEARNED = 0.9  # 1x accuracy from which a run counts as having learned the task


def beyond(results: dict[str, Any], v: str, seed: int | None = None) -> float:
    """Mean accuracy over every length past the training length and every depth."""
    grid = results["mean_accuracy"][v] if seed is None else results["runs"][f"{v}/s{seed}"]["accuracy"]
    return float(np.mean(grid[1:]))


def synthetic_markdown(results: dict[str, Any], figures: list[str], assets: str) -> str:
    probe, task = results["probe"], results["task"]
    mults, L = probe["multipliers"], probe["train_len"]
    out = ["# Results: passkey retrieval by length and depth", "", *provenance(results)]
    out += [
        f"Each sequence is random filler with a key (a marker and {task['key_len']} value tokens out of "
        f"{task['value_vocab']}) planted at a random depth, then a query marker; the model must emit the value "
        f"(chance {task['chance']:.4f}). Models of {probe['n_layer']} layers, width {probe['n_embd']}, "
        f"{probe['n_head']} heads train for {probe['steps']} steps of {probe['batch_size']} sequences of "
        f"{L // 4}-{L} tokens, the loss on the value only; they are tested on {probe['test_per_cell']} fresh "
        f"sequences per (length, depth bin) at {', '.join(f'{m}x' for m in mults)} the training length. "
        f"Seeds {results['seeds']}; an accuracy counts a sequence when every value token is the argmax.",
        "",
        "Accuracy by length, mean over depths (± std over seeds):",
        "",
        "| encoding | " + " | ".join(f"{m}x ({m * L})" for m in mults) + " |",
        "|---|" + "---:|" * len(mults),
    ]
    for v in results["variants"]:
        cells = []
        for i in range(len(mults)):
            per_seed = [float(np.mean(results["runs"][f"{v}/s{s}"]["accuracy"][i])) for s in results["seeds"]]
            sd = f" ± {np.std(per_seed, ddof=1):.2f}" if len(per_seed) > 1 else ""
            cells.append(f"{np.mean(per_seed):.2f}{sd}")
        out.append(f"| {row(v)} | " + " | ".join(cells) + " |")
    out.append("")
    if "synthetic.png" in figures:
        out += [f"![accuracy by length and depth]({assets}/synthetic.png)", ""]
    unlearned = [
        f"{row(v)} seed {s} ({np.mean(results['runs'][f'{v}/s{s}']['accuracy'][0]):.2f})"
        for v in results["variants"]
        for s in results["seeds"]
        if np.mean(results["runs"][f"{v}/s{s}"]["accuracy"][0]) < LEARNED
    ]
    out += [
        f"Runs that had not learned the task at the training length (1x accuracy below {LEARNED}): "
        + ("; ".join(unlearned) if unlearned else "none")
        + ". For them, low accuracy past the training length is a failure to learn, not to generalise; the drop "
        "from 1x below separates the two.",
        "",
        "## Against the published expectations",
        "",
    ]
    for claim, a, b in EXPECTATIONS:
        if a not in results["mean_accuracy"] or b not in results["mean_accuracy"]:
            continue
        xa, xb = beyond(results, a), beyond(results, b)
        seeds_agree = sum(beyond(results, a, s) > beyond(results, b, s) for s in results["seeds"])
        verdict = "holds here" if xa > xb else "does not hold here"
        drop = {v: float(np.mean(results["mean_accuracy"][v][0])) - beyond(results, v) for v in (a, b)}
        out.append(
            f"- {claim}: {verdict} ({row(a)} {xa:.2f} vs {row(b)} {xb:.2f} past the training length, "
            f"{seeds_agree} of {len(results['seeds'])} seeds; drop from 1x: {drop[a]:+.2f} vs {drop[b]:+.2f})."
        )
    out += [
        "",
        "This is a small model on one synthetic task: it probes whether an encoding lets attention find a token "
        "at distances and absolute positions never seen in training, not how a large language model behaves.",
        "",
    ]
    return "\n".join(out + _counting(results) + revisions_markdown(results))


#: Claims the counting probe checks: (claim, variant expected ahead, the other).
COUNTING_EXPECTATIONS: tuple[tuple[str, str, str], ...] = (
    ("Golovneva et al. 2024 (CoPE): CoPE counts better than RoPE", "cope", "rope"),
    ("Golovneva et al. 2024 (CoPE): CoPE counts better than NoPE", "cope", "nope"),
)


def _counting(results: dict[str, Any]) -> list[str]:
    """The counting probe's section (absent from jsons written before it existed)."""
    counting = results.get("counting")
    if not counting:
        return []
    task, mults, L = counting["task"], results["probe"]["multipliers"], results["probe"]["train_len"]
    acc = lambda v, s=None: (  # noqa: E731 -- one accuracy per length, of the mean or of one seed
        [r[0] for r in counting["mean_accuracy"][v]]
        if s is None
        else [r[0] for r in counting["runs"][f"{v}/s{s}"]["accuracy"]]
    )
    out = [
        "## Counting",
        "",
        f"The task of CoPE's paper in tokens: a program of set, increment and no-op statements over {task['variables']} "
        f"variables (weights {' : '.join(f'{w:g}' for w in task['weights'])}, values at most {task['max_value']}), "
        "then `print v` and the value: the model must count one variable's increments since it was last set, among "
        "many no-ops. The same models and training as above; accuracy of the answer by length (± std over seeds):",
        "",
        "| encoding | " + " | ".join(f"{m}x ({m * L})" for m in mults) + " |",
        "|---|" + "---:|" * len(mults),
    ]
    for v in (v for v in results["variants"] if v in counting["mean_accuracy"]):
        per_seed = [acc(v, s) for s in results["seeds"]]
        cells = [
            f"{np.mean(col):.2f}" + (f" ± {np.std(col, ddof=1):.2f}" if len(col) > 1 else "")
            for col in zip(*per_seed, strict=True)
        ]
        out.append(f"| {row(v)} | " + " | ".join(cells) + " |")
    if "majority" in counting:
        out.append(
            "| *the most common answer, always* | " + " | ".join(f"{a:.2f}" for a in counting["majority"]) + " |"
        )
    out += ["", "Against the published expectation:", ""]
    for claim, a, b in COUNTING_EXPECTATIONS:
        if a not in counting["mean_accuracy"] or b not in counting["mean_accuracy"]:
            continue
        xa, xb = float(np.mean(acc(a))), float(np.mean(acc(b)))
        agree = sum(np.mean(acc(a, s)) > np.mean(acc(b, s)) for s in results["seeds"])
        verdict = "holds here" if xa > xb else "does not hold here"
        out.append(
            f"- {claim}: {verdict} ({row(a)} {xa:.2f} vs {row(b)} {xb:.2f}, mean over every length; "
            f"{agree} of {len(results['seeds'])} seeds)."
        )
    return [*out, ""]


def plot_synthetic(results: dict[str, Any], path: Path) -> None:
    plt = pyplot()
    variants, probe = results["variants"], results["probe"]
    mults, bins = probe["multipliers"], probe["depth_bins"]
    cols = min(4, len(variants))
    rows = -(-len(variants) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.2 * cols, 2.6 * rows), squeeze=False, constrained_layout=True)
    for ax, v in zip(axes.flat, variants, strict=False):
        im = ax.imshow(
            np.array(results["mean_accuracy"][v]).T, vmin=0, vmax=1, cmap="viridis", origin="lower", aspect="auto"
        )
        for i, by_depth in enumerate(results["mean_accuracy"][v]):
            for j, acc in enumerate(by_depth):
                ax.text(
                    i, j, f"{acc:.2f}", ha="center", va="center", fontsize=7, color="white" if acc < 0.6 else "black"
                )
        ax.set_title(row(v), fontsize=9)
        ax.set_xticks(range(len(mults)), [f"{m}x" for m in mults])
        ax.set_yticks(range(bins), [f"{(b + 0.5) / bins:.1f}" for b in range(bins)])
        ax.set_xlabel("length")
        ax.set_ylabel("depth")
    for ax in list(axes.flat)[len(variants) :]:
        ax.axis("off")
    fig.colorbar(im, ax=axes, shrink=0.8, label="accuracy")
    atomic_write(path, lambda f: fig.savefig(f, dpi=110, format="png"))
    plt.close(fig)


# -- one entry point --------------------------------------------------------------------------------

RENDERERS = {
    "lr": (lr_markdown, "lr.png", plot_lr),
    "extension": (extension_markdown, "extension.png", plot_extension),
    "synthetic": (synthetic_markdown, "synthetic.png", plot_synthetic),
    "real": (real_markdown, "real.png", plot_real),
}


def render_study(results: dict[str, Any], page: str | os.PathLike, *, figures: bool | None = None) -> list[str]:
    """``page`` and ``<page stem>/`` beside it with the figure and a copy of the study's json;
    returns the figures drawn (``figures``: True draws, False does not, None draws with matplotlib)."""
    markdown, figure, plot = RENDERERS[results["kind"]]
    page = Path(page)
    assets = page.with_suffix("")
    assets.mkdir(parents=True, exist_ok=True)
    drawn = []
    if figures or (figures is None and have_matplotlib()):
        plot(results, assets / figure)
        drawn.append(figure)
    atomic_write(assets / f"{results['kind']}.json", json.dumps(results, indent=1))
    atomic_write(page, markdown(results, drawn, assets.name))
    return drawn

"""The page of the real-model study (:mod:`posenc.studies.real`), drawn from real.json alone: loss by
position past the trained context, zero-shot schedules at 2x with passkey retrieval, where position
lives (frequency bands, one layer at a time to NoPE) and the published claims checked.

A partial json (a run still going, or stopped) renders too: rows without windows are listed as pending.
"""

from __future__ import annotations

from typing import Any

import numpy as np

#: The published claims checked: (claim, how it is read here).
CLAIMS = {
    "yarn": "Peng et al. 2023 (YaRN): without fine-tuning, YaRN keeps a lower loss past the trained context "
    "than linear interpolation (PI) and dynamic NTK",
    "pi": "Chen et al. 2023 (PI): linear interpolation alone degrades the trained range (it needs fine-tuning)",
    "plain": "plain RoPE's loss rises sharply past the trained context",
}
SHARP = 1.0  # nats above the loss of the trained context's second half that count as "sharply"


def unit_mean(results: dict[str, Any], unit: dict[str, Any], lo: int, hi: int) -> float:
    """A (row, window)'s mean loss over the positions in [lo, hi) (whole stored buckets)."""
    width = results["settings"]["bucket"]
    part = slice(lo // width, -(-hi // width))
    return sum(unit["sums"][part]) / max(1, sum(unit["counts"][part]))


def window_means(results: dict[str, Any], row: str, lo: int, hi: int) -> list[float]:
    """Per window of ``row``: its mean loss over the positions in [lo, hi)."""
    return [unit_mean(results, u, lo, hi) for u in results["units"].values() if u["row"] == row]


def _spread(xs: list[float], digits: int = 3) -> str:
    if not xs:
        return "pending"
    sd = f" ± {np.std(xs, ddof=1):.{digits}f}" if len(xs) > 1 else ""
    return f"{np.mean(xs):.{digits}f}{sd}"


def _paired(results: dict[str, Any], a: str, b: str, lo: int, hi: int) -> list[float]:
    """Per window present in both rows: loss of ``a`` minus loss of ``b`` over [lo, hi)."""
    units = results["units"]
    return [
        unit_mean(results, u, lo, hi) - unit_mean(results, units[f"{b}/w{u['window']}"], lo, hi)
        for u in units.values()
        if u["row"] == a and f"{b}/w{u['window']}" in units
    ]


def _rows(results: dict[str, Any], section: str) -> list[str]:
    return [r for r, info in results["rows"].items() if info["section"] == section]


def _windows(results: dict[str, Any], row: str) -> int:
    return sum(u["row"] == row for u in results["units"].values())


def real_markdown(results: dict[str, Any], figures: list[str], assets: str) -> str:
    s, env, src = results["settings"], results["environment"], results["source"]
    T = s["context"]
    out = [
        f"# Results: a released model past its context ({src.get('name') or src['path'].split('/')[-1]})",
        "",
        f"- Command: `{results['command']}`",
        f"- Date: {results['created']}; git commit {env['git_commit'] or 'unknown'}"
        f"{' (with uncommitted changes)' if env['git_dirty'] else ''}; torch {env['torch']}; Python "
        f"{results['python']}; {env['device']}; {env['cpu_count']} CPUs; {env['platform']}",
        f"- Model: `{src['path']}`"
        + (f", sha256 `{src['sha256']}`" if src.get("sha256") else "")
        + f"; layers {results['model']['layer_codes']}, head dim {results['model']['head_dim']}, RoPE base "
        f"{results['model']['rope_base']:g}; trained context T = {T}.",
        f"- Evaluation tokens: sha256 `{results['tokens_sha256']}` (the corpus is this Python's standard library, "
        "so another Python gives other tokens).",
        f"- Scale: {s['windows']} sequence(s) of {2 * T} tokens for the extension rows, {s['ablation_windows']} "
        f"window(s) of {s['ablation_len']} tokens for the ablations; {_scored(results)}. "
        f"Wall time of this invocation {results['wall_time_s'] / 60:.1f} min; one {2 * T}-token sequence took "
        f"{_seconds(results, 'extension')} and one ablation window {_seconds(results, 'ablation')} here"
        f" (wall time on a machine shared with other work). {_one_window(results)}",
        _full_scale(results),
        "",
    ]
    pending = [r for r in results["rows"] if _windows(results, r) < _wanted(results, r)]
    if pending:
        out += [
            f"**Partial run**: {len(pending)} row(s) have fewer windows than asked ({', '.join(pending[:8])}"
            f"{', ...' if len(pending) > 8 else ''}); the command above, run again without `--no-train`, evaluates "
            "them (the saved evaluations are kept).",
            "",
        ]
    out += _extension(results, figures, assets) + _ablations(results) + _beside(results) + _claims(results)
    return "\n".join(out)


def _one_window(results: dict[str, Any]) -> str:
    if max(results["settings"]["windows"], results["settings"]["ablation_windows"]) > 1:
        return "± is the std over windows (sequences); a row with one window shows no spread."
    return "With one window per row no spread over windows can be given: each number is one sequence's."


def _full_scale(results: dict[str, Any]) -> str:
    full = results.get("full_scale")
    if not full:
        return ""
    sections = [info["section"] for info in results["rows"].values()]
    ext, abl = sections.count("extension") * full["windows"], sections.count("ablation") * full["ablation_windows"]
    out = (
        f"- Full scale (the defaults): `{full['command']}`, {full['windows']} sequences of 2T and "
        f"{full['ablation_windows']} ablation windows: {ext} + {abl} evaluations"
    )
    secs = [_mean_seconds(results, s) for s in ("extension", "ablation")]
    if all(x is not None for x in secs):
        out += f", about {(ext * secs[0] + abl * secs[1]) / 3600:.1f} h at the times above"
    return out + "."


def _mean_seconds(results: dict[str, Any], section: str) -> float | None:
    xs = [u["seconds"] for u in results["units"].values() if results["rows"][u["row"]]["section"] == section]
    return float(np.mean(xs)) if xs else None


def _wanted(results: dict[str, Any], row: str) -> int:
    s = results["settings"]
    return s["windows"] if results["rows"][row]["section"] == "extension" else s["ablation_windows"]


def _scored(results: dict[str, Any]) -> str:
    return f"{len(results['units'])} (row, window) evaluations finished"


def _seconds(results: dict[str, Any], section: str) -> str:
    x = _mean_seconds(results, section)
    return "n/a" if x is None else f"{x:.0f} s"


def _extension(results: dict[str, Any], figures: list[str], assets: str) -> list[str]:
    T = results["settings"]["context"]
    edges = [0, T // 2, T, 3 * T // 2, 2 * T]
    rows = _rows(results, "extension")
    out = [
        "## Past the trained context, and zero-shot extension to 2x",
        "",
        f"Each sequence is the first {2 * T} tokens of one of the corpus's longest documents (one document per "
        "sequence) with three passkey sentences planted at random depths and three queries whose answers end at "
        f"{T} (1x), {3 * T // 2} (1.5x) and {2 * T} (2x) tokens, each asking a different key. Every schedule is "
        f"configured for {2 * T} tokens (factor 2) and reads the whole sequence; the loss is over the document's own "
        "tokens (the planted text and the token after each piece left out), the mean over sequences ± the std over "
        "them. Dynamic NTK (factor 1, the base grown with the length) over a 2x sequence rotates every position "
        "with its 2x base; YaRN has its attention factor 0.1 ln 2 + 1; NTK-by-parts is YaRN's frequencies with "
        "attention factor 1; llama3 has low/high frequency factors 1 and 4.",
        "",
        "| schedule | "
        + " | ".join(f"loss {a}-{b}" for a, b in zip(edges, edges[1:], strict=False))
        + " | passkey 1x | 1.5x | 2x |",
        "|---|" + "---:|" * (len(edges) + 2),
    ]
    for r in rows:
        cells = [_spread(window_means(results, r, a, b)) for a, b in zip(edges, edges[1:], strict=False)]
        hits = [u["hits"] for u in results["units"].values() if u["row"] == r]
        acc = [f"{sum(h[k] for h in hits)}/{len(hits)}" if hits else "pending" for k in range(3)]
        out.append(f"| {r} | " + " | ".join(cells + acc) + " |")
    out.append("")
    none = [u for u in results["units"].values() if u["row"] == "none"]
    if none:
        width = results["settings"]["bucket"]
        means = np.array([[s / max(1, c) for s, c in zip(u["sums"], u["counts"], strict=True)] for u in none]).mean(0)
        inside = means[1 : T // width]  # bucket 0 (the first tokens) is high for lack of context, not position
        above = [i for i in range(T // width, len(means)) if means[i] > inside.max()]
        broke = (
            f"first above the highest inside the context ({inside.max():.3f}) at position {above[0] * width}"
            if above
            else (f"never above the highest inside the context ({inside.max():.3f})")
        )
        out += [
            f"The unmodified model by position (buckets of {width}): lowest {inside.min():.3f} inside the context; "
            f"the last bucket inside {means[T // width - 1]:.3f}, the first past it {means[T // width]:.3f}, the highest "
            f"past it {means[T // width :].max():.3f} (at {int(np.argmax(means[T // width :])) * width + T}-"
            f"{(int(np.argmax(means[T // width :])) + 1) * width + T}); {broke}.",
            "",
        ]
    if "real.png" in figures:
        out += [f"![loss by position and by layer]({assets}/real.png)", ""]
    return out


def _kind(results: dict[str, Any], row: str) -> str:
    """ " (local)" / " (global)" after a one-layer row of a model with both kinds; "" otherwise."""
    local = results["model"].get("local_layers") or []
    if not local or not row.startswith("layer "):
        return ""
    return " (local)" if int(row.split()[1]) in local else " (global)"


def _ablations(results: dict[str, Any], title: str = "## Where position lives") -> list[str]:
    L = results["settings"]["ablation_len"]
    rows = _rows(results, "ablation")
    base = window_means(results, "unmodified", 0, L)
    out = [
        title,
        "",
        f"Windows of {L} tokens (the first tokens of the same long documents), each row against the unmodified "
        f"model on the same windows (unmodified: {_spread(base)}); change = row minus unmodified, per window, mean "
        "± std over windows. The lowest frequencies are removed with p-RoPE (their pairs are not rotated); the "
        "highest by making their frequencies ~0 (LongRoPE factors of 1e30)."
        + (
            " Local layers are the sliding-window ones, global the others; `local: ...` changes the local layers only."
            if results["model"].get("local_layers")
            else ""
        ),
        "",
        "| row | loss | change |",
        "|---|---:|---:|",
    ]
    layers = []
    for r in rows:
        if r == "unmodified":
            continue
        change = _paired(results, r, "unmodified", 0, L)
        line = f"| {r}{_kind(results, r)} | {_spread(window_means(results, r, 0, L))} | {_spread(change)} |"
        if r.startswith("layer "):
            layers.append((r, change, line))
        else:
            out.append(line)
    out += [line for _, _, line in layers]
    out.append("")
    done = [(r, float(np.mean(c))) for r, c, _ in layers if c]
    if done:
        top = sorted(done, key=lambda x: -x[1])[:3]
        out += [
            "Layers whose RoPE matters most (largest loss change when it is removed): "
            + "; ".join(f"{r} ({x:+.3f})" for r, x in top)
            + f". {sum(x > 0.01 for _, x in done)} of {len(done)} layers change the loss by more than +0.01.",
            "",
        ]
    low = _paired(results, "lowest 25% removed", "unmodified", 0, L)
    high = _paired(results, "highest 25% removed", "unmodified", 0, L)
    if low and high:
        reading = "agrees with" if np.mean(high) > np.mean(low) else "does not agree with"
        out += [
            'Barbero et al. 2024 ("Round and Round We Go") read Gemma\'s RoPE as high frequencies serving positional '
            "heads and low frequencies carrying meaning, and trained p-RoPE (the lowest frequencies removed) "
            f"without loss. Zero-shot here, removing the highest 25% changes the loss by {np.mean(high):+.3f} and the "
            f"lowest 25% by {np.mean(low):+.3f}: this {reading} the high frequencies being the positional ones. "
            "Their p-RoPE models were trained without the low frequencies; this one was not, so a zero-shot change "
            "is an upper bound on what a model trained that way would lose.",
            "",
        ]
    return out


def _beside(results: dict[str, Any]) -> list[str]:
    """The second model's ablations, and the two models' changes side by side."""
    other = results.get("beside")
    if not other:
        return []
    name, first = _name(other), _name(results)
    m = other["model"]
    L = results["settings"]["ablation_len"]
    out = _ablations(other, f"## Where position lives in {name}, beside {first}")
    out[1:1] = [
        "",
        f"Model: `{other['source']['path']}`"
        + (f", sha256 `{other['source']['sha256']}`" if other["source"].get("sha256") else "")
        + f"; layers {m['layer_codes']}"
        + (
            f" (layers {', '.join(map(str, m['local_layers']))} local, window {m['window']})"
            if m["local_layers"]
            else ""
        )
        + f", head dim {m['head_dim']}, RoPE bases {', '.join(f'{b:g}' for b in m['rope_bases'])}. Its own "
        f"tokenizer on the same documents: tokens sha256 `{other['tokens_sha256']}`; {len(other['units'])} "
        f"(row, window) evaluations finished, one window took {_seconds(other, 'ablation')}.",
    ]
    shared = [r for r in _rows(results, "ablation") if r in other["rows"] and not r.startswith("layer ")]
    shared = [r for r in shared if r != "unmodified"]
    out += [
        f"Side by side, change against each model's unmodified loss at {L} tokens:",
        "",
        f"| row | {first} | {name} |",
        "|---|---:|---:|",
    ]
    for r in shared:
        out.append(
            f"| {r} | {_spread(_paired(results, r, 'unmodified', 0, L))} | {_spread(_paired(other, r, 'unmodified', 0, L))} |"
        )
    for label, part in ((first, results), (name, other)):
        for kind, layers in _layer_groups(part).items():
            xs = [np.mean(c) for r in layers if (c := _paired(part, r, "unmodified", 0, L))]
            if xs:
                out.append(
                    f"| {label}: one {kind}layer to NoPE, mean over {len(xs)} layers | "
                    + (f"{np.mean(xs):.3f} | |" if part is results else f" | {np.mean(xs):.3f} |")
                )
    return [*out, ""]


def _name(results: dict[str, Any]) -> str:
    return results["source"].get("name") or results["source"]["path"].split("/")[-1]


def _layer_groups(results: dict[str, Any]) -> dict[str, list[str]]:
    """ "" -> every one-layer row, or "local " / "global " -> theirs for a model with both kinds."""
    layers = [r for r in _rows(results, "ablation") if r.startswith("layer ")]
    if not results["model"].get("local_layers"):
        return {"": layers}
    groups: dict[str, list[str]] = {"local ": [], "global ": []}
    for r in layers:
        groups[_kind(results, r).strip(" ()") + " "].append(r)
    return groups


def _claims(results: dict[str, Any]) -> list[str]:
    T = results["settings"]["context"]
    past = {r: window_means(results, r, T, 2 * T) for r in ("none", "YaRN", "linear (PI)", "dynamic NTK")}
    out = ["## Published claims, checked on this model", ""]
    if all(past[r] for r in ("YaRN", "linear (PI)", "dynamic NTK")):
        y, p, d = (float(np.mean(past[r])) for r in ("YaRN", "linear (PI)", "dynamic NTK"))
        verdict = "holds" if y < p and y < d else "does not hold"
        out.append(
            f"- {CLAIMS['yarn']}: **{verdict}** here (loss at {T}-{2 * T}: YaRN {_spread(past['YaRN'])}, PI "
            f"{_spread(past['linear (PI)'])}, dynamic NTK {_spread(past['dynamic NTK'])}; paired YaRN - PI "
            f"{_spread(_paired(results, 'YaRN', 'linear (PI)', T, 2 * T))}, YaRN - dynamic "
            f"{_spread(_paired(results, 'YaRN', 'dynamic NTK', T, 2 * T))})."
        )
    else:
        out.append(f"- {CLAIMS['yarn']}: pending.")
    pi = _paired(results, "linear (PI)", "none", 0, T)
    if pi:
        verdict = "holds" if np.mean(pi) > 0 else "does not hold"
        out.append(
            f"- {CLAIMS['pi']}: **{verdict}** here (loss at 0-{T}: PI {_spread(window_means(results, 'linear (PI)', 0, T))} "
            f"vs unmodified {_spread(window_means(results, 'none', 0, T))}; paired change {_spread(pi)})."
        )
    else:
        out.append(f"- {CLAIMS['pi']}: pending.")
    if past["none"]:
        inside = window_means(results, "none", T // 2, T)
        rise = [a - b for a, b in zip(past["none"], inside, strict=True)]
        verdict = "holds" if np.mean(rise) > SHARP else "does not hold"
        out.append(
            f"- {CLAIMS['plain']}: **{verdict}** here (loss at {T}-{2 * T} {_spread(past['none'])} vs "
            f"{T // 2}-{T} {_spread(inside)}: a rise of {_spread(rise)} nats; 'sharply' read as more than {SHARP:g} nat)."
        )
    else:
        out.append(f"- {CLAIMS['plain']}: pending.")
    return [*out, ""]


def plot_real(results: dict[str, Any], path: Any) -> None:
    from posenc.io import atomic_write
    from posenc.report.figures import pyplot, variant_colors

    plt = pyplot()
    T, width = results["settings"]["context"], results["settings"]["bucket"]
    other = results.get("beside")
    fig, axes = plt.subplots(1, 3 if other else 2, figsize=(21 if other else 14, 4.5))
    ax = axes[0]
    rows = _rows(results, "extension")
    colors = variant_colors(plt, rows)
    for r in rows:
        units = [u for u in results["units"].values() if u["row"] == r]
        if not units:
            continue
        means = np.array([[s / max(1, c) for s, c in zip(u["sums"], u["counts"], strict=True)] for u in units]).mean(0)
        ax.plot((np.arange(len(means)) + 0.5) * width, means, "-", color=colors[r], label=r)
    ax.axvline(T, color="gray", ls="--", lw=1)
    ax.set_xlabel("position")
    ax.set_ylabel("loss")
    ax.set_title(f"loss by position, schedules for 2x (T = {T})")
    ax.legend(fontsize=8)
    for bx, part in zip(axes[1:], [results, other] if other else [results], strict=True):
        _layer_bars(bx, part)
    fig.tight_layout()
    atomic_write(path, lambda f: fig.savefig(f, dpi=110, format="png"))
    plt.close(fig)


def _layer_bars(bx: Any, results: dict[str, Any]) -> None:
    """One bar per layer: the loss change when that layer's RoPE is removed (local layers hatched)."""
    L = results["settings"]["ablation_len"]
    layers = [r for r in _rows(results, "ablation") if r.startswith("layer ")]
    changes = [_paired(results, r, "unmodified", 0, L) for r in layers]
    idx = [int(r.split()[1]) for r in layers]
    bars = bx.bar(
        idx,
        [np.mean(c) if c else np.nan for c in changes],
        yerr=[np.std(c, ddof=1) if len(c) > 1 else 0 for c in changes],
    )
    for bar, r in zip(bars, layers, strict=True):
        if _kind(results, r) == " (local)":
            bar.set_hatch("//")
            bar.set_alpha(0.6)
    bx.set_xlabel("layer turned to NoPE" + (" (hatched: local)" if results["model"].get("local_layers") else ""))
    bx.set_ylabel(f"loss change at {L} tokens")
    bx.set_title(f"{_name(results)}: one layer's RoPE removed")

"""The markdown report of a comparison, rendered from a results dict alone: the study-format table,
the study beside it, paired differences, extrapolation, per-position loss, samples and the
computed discussion (:mod:`posenc.report.claims`).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from posenc.io import atomic_write
from posenc.report.claims import discussion
from posenc.report.figures import have_matplotlib, plot_all
from posenc.report.revisions import revisions_markdown
from posenc.report.stats import (
    STUDY,
    fmt_diff,
    fmt_spread,
    kv_cache_bytes,
    paired_diff,
    spread,
    study_comparison,
)
from posenc.variants import description, label

#: The unit of a loss, by tokenizer.
UNITS: dict[str, str] = {"bytes": "byte (UTF-8 byte tokenizer)", "gpt2": "GPT-2 BPE token"}


def printable(text: str) -> str:
    """Samples of barely trained byte models hold control bytes; show them as U+FFFD."""
    return "".join(c if c.isprintable() or c in "\n\t" else "\ufffd" for c in text)


def study_table(results: dict[str, Any]) -> str:
    """The study's table format (model, train loss, validation loss) with a note on what was run."""
    agg = results["aggregate"]
    seeds = sorted({s for a in agg.values() for s in a["seeds"]})
    lines = [
        "| Model | Train Loss | Validation Loss | KV cache (bytes/token) |",
        "|-------|------------|-----------------|-----------------------:|",
    ]
    for v, a in agg.items():
        kv = kv_cache_bytes(results, v)
        lines.append(
            f"| {label(v)} | {fmt_spread(a['train_loss'])} | {fmt_spread(a['val_loss'])} | "
            f"{'n/a' if kv is None else f'{kv:,}'} |"
        )
    tokens = {a["tokens"] for a in agg.values()}
    params = sorted({a["params"] for a in agg.values()})
    lines += [
        "",
        f"Mean ± sample standard deviation over {len(seeds)} seed(s) ({', '.join(map(str, seeds))}); "
        f"{'/'.join(f'{t:,}' for t in sorted(tokens))} training tokens per run; "
        f"{' to '.join(sorted({f'{p / 1e6:.2f}M' for p in (params[0], params[-1])}))} parameters (non-embedding, as nanoGPT counts); "
        "train loss = mean over the last evaluation interval, validation loss = the final evaluation; "
        "KV cache = what one token adds to the cache over all layers in fp16 (keys and values of every KV "
        "head; MLA: its latent and shared rotary key; FoX also its float32 running sum of log forget gates, one per head).",
    ]
    return "\n".join(lines) + "\n"


def train_flags(cfg: dict[str, Any]) -> str:
    """The sweep preset's training settings as the flags of ``pretrain_owt.py``: recorded as flags
    (``train_args``, posenc 0.2) or as TrainConfig fields (``train``)."""
    if "train_args" in cfg:
        return " ".join(cfg["train_args"])
    flag_of = {"learning_rate": "lr"}
    return " ".join(f"--{flag_of.get(k, k).replace('_', '-')} {v}" for k, v in cfg["train"].items())


def _paired(results: dict[str, Any], a: str, b: str) -> str:
    return "0" if a == b else fmt_diff(paired_diff(results, a, b))


def _setup(results: dict[str, Any]) -> list[str]:
    cfg, tc, mc = results["config"], results["train_config"], results["model_config"]
    out: list[str] = []
    if results["preset"] not in ("cpu", "owt-16m"):
        out += [
            f"> **This page comes from the `{results['preset']}` preset: a smoke test with short runs, "
            "not the comparison.** Regenerate it from the full CPU sweep "
            "(`python examples/compare.py --preset cpu --render docs/results.md`); "
            "until then read no conclusion into the numbers below.",
            "",
        ]
    return out + [
        "Every number on this page is read from the results JSON written by `examples/compare.py`; "
        "only the study's published table is typed in (the constant `STUDY` in `posenc/report/stats.py`). "
        "Rerun the command below to reproduce it, or render another run with "
        "`python examples/compare.py --render docs/results.md --from <out>/results.json`.",
        "",
        *_provenance(results),
        f"- One run trains in {fmt_spread(spread([r['train_time_s'] for r in results['runs'].values()]), 0)} s.",
        f"- Training: `pretrain_owt.py --preset {cfg['train_preset']} {train_flags(cfg)}` with "
        f"`--seed` in {results['seeds']}: {tc['dataset']} corpus, {tc['tokenizer']} tokenizer, "
        f"{mc['n_layer']} layers, {mc['n_head']} heads, {mc['n_embd']} channels, context {results['block_size']}, "
        f"batch {tc['batch_size']} x {tc['grad_accum']}, {tc['max_iters']} steps, lr {tc['learning_rate']} "
        f"(cosine to {tc['min_lr']}). Same data order, seeds and shared initial weights for every variant.",
        "",
    ]


def _provenance(results: dict[str, Any]) -> list[str]:
    """Command, date, commit, machine and wall time of the sweep (of each sweep, when merged)."""
    parts = results.get("parts") or [results]
    lines = []
    for i, part in enumerate(parts):
        env = part["environment"]
        which = f"Sweep {i + 1} ({', '.join(part['variants'])}): " if len(parts) > 1 else ""
        lines += [
            f"- {which}Command: `{part['command']}`",
            f"  {'' if which else '- '}Date: {part['created']}; git commit {env['git_commit'] or 'unknown'}"
            f"{' (with uncommitted changes)' if env['git_dirty'] else ''}; torch {env['torch']}; "
            f"{env['device']}{' (' + env['gpu'] + ')' if env['gpu'] else ''}; {env['cpu_count']} CPUs, "
            f"{env['jobs']} run(s) at a time, {env['threads_per_job'] or 'default'} thread(s) each; {env['platform']}; "
            f"wall time {part['wall_time_s'] / 60:.1f} min for the {part['runs_trained']} run(s) it trained",
        ]
    if len(parts) == 1:  # one sweep: the layout of the page before merges existed
        lines[1] = lines[1].lstrip()
    repeated = results.get("repeated_runs") or {}
    if repeated:
        worst = max(max(v) - min(v) for v in repeated.values())
        lines.append(
            f"- Reproduction: {len(repeated)} run(s) ({', '.join(sorted(repeated))}) were trained again by a later "
            f"sweep; their validation losses differ by at most {worst:.1e} (the first sweep's runs are shown)."
        )
    return lines


def _beside_study(results: dict[str, Any], sc: dict[str, Any]) -> list[str]:
    if not sc["variants"]:
        return []
    agg, tc = results["aggregate"], results["train_config"]
    ref = "rope" if "rope" in sc["variants"] else sc["variants"][0]
    out = [
        "## Beside the study",
        "",
        f"The study: {STUDY['setting']} ({STUDY['source']}). Its losses are per GPT-2 token on "
        f"OpenWebText; these are per {UNITS.get(tc['tokenizer'], 'token')} on the "
        f"{tc['dataset']} corpus, so only orderings and signs compare, not values.",
        "",
        f"| Model | Study train | Study val | Study val − {label(ref)} | Study rank | Val here | "
        f"Val here − {label(ref)} (paired) | Rank here |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for v in sc["variants"]:
        st, sv = STUDY["rows"][v]
        out.append(
            f"| {label(v)} | {st:.4f} | {sv:.4f} | {sv - STUDY['rows'][ref][1]:+.4f} | {sc['study_rank'][v]} | "
            f"{fmt_spread(agg[v]['val_loss'])} | {_paired(results, v, ref)} | {sc['our_rank'][v]} |"
        )
    return out + [""]


def _paired_differences(results: dict[str, Any]) -> list[str]:
    comps = results["comparisons"]
    if not comps:
        return []
    out = [
        "## Paired differences",
        "",
        "Validation loss of A minus B, per seed (both trained on the same batches from the same shared "
        "initial weights), then mean ± std over seeds. *Separated*: every seed of one variant is below "
        "every seed of the other, i.e. the difference is larger than the seed spread.",
        "",
        "| A − B | Δ val (mean ± std) | seeds | std of A / std of B | separated |",
        "|---|---|---|---|---|",
    ]
    for c in comps:
        sa = "n/a" if c["std_a"] is None else f"{c['std_a']:.4f}"
        sb = "n/a" if c["std_b"] is None else f"{c['std_b']:.4f}"
        out.append(
            f"| {label(c['a'])} − {label(c['b'])} | {fmt_diff(c['diff'])} | {len(c['seeds'])} | {sa} / {sb} | "
            f"{'yes' if c['separated'] else 'no'} |"
        )
    return out + [""]


def _extrapolation(results: dict[str, Any], link: Any, figures: list[str]) -> list[str]:
    agg, T = results["aggregate"], results["block_size"]
    mults = list(next(iter(agg.values()))["extrapolation"])
    out = [
        "## Length extrapolation",
        "",
        f"Validation loss with contexts of 1x to {mults[-1]}x the training context ({T} tokens), each row one "
        f"KV-free forward from position 0 over the same {results['eval_tokens']:,} validation tokens "
        f"({results['config']['eval_windows']} fixed windows): a longer context sees the same targets with more "
        "history. n/a: the learned absolute table has no vectors beyond its length.",
        "",
        "| Model | " + " | ".join(f"{m}x ({int(m) * T})" for m in mults) + f" | {mults[-1]}x − 1x |",
        "|---|" + "---|" * (len(mults) + 1),
    ]
    for v, a in agg.items():
        e = a["extrapolation"]
        growth = "n/a" if e[mults[-1]] is None else f"{e[mults[-1]]['mean'] - e[mults[0]]['mean']:+.4f}"
        out.append(f"| {label(v)} | " + " | ".join(fmt_spread(e[m]) for m in mults) + f" | {growth} |")
    out.append("")
    if "extrapolation.png" in figures:
        out += [f"![length extrapolation]({link('extrapolation.png')})", ""]
    return out


def _per_position(results: dict[str, Any], link: Any, figures: list[str]) -> list[str]:
    agg, T = results["aggregate"], results["block_size"]
    k = max(1, T // 8)
    out = [
        "## Loss by position within the training context",
        "",
        f"Mean validation loss at each position of the 1x rows, averaged over windows and seeds; early = "
        f"positions 1-{k}, late = positions {T - k + 1}-{T}.",
        "",
        "| Model | early | late | late − early |",
        "|---|---|---|---|",
    ]
    for v, a in agg.items():
        out.append(
            f"| {label(v)} | {fmt_spread(a['early_loss'])} | {fmt_spread(a['late_loss'])} | "
            f"{a['late_loss']['mean'] - a['early_loss']['mean']:+.4f} |"
        )
    out.append("")
    if "per_position.png" in figures:
        out += [f"![per-position loss]({link('per_position.png')})", ""]
    if "curves.png" in figures:
        out += ["## Loss curves", "", f"![loss curves]({link('curves.png')})", ""]
    return out


def _samples(results: dict[str, Any]) -> list[str]:
    out = [
        "## Samples",
        "",
        "From the final checkpoint of the first seed, with the KV cache, temperature 0.8, "
        "top-k 200, the same prompts and sampling seed for every variant.",
        "",
    ]
    first = results["seeds"][0]
    for v in results["aggregate"]:
        r = results["runs"].get(f"{v}/s{first}")
        if r and r["samples"]:
            out += [
                f"**{label(v)}**",
                "",
                "````text",
                *[printable(s).replace("````", "'```") for s in r["samples"]],
                "````",
                "",
            ]
    return out


def render_markdown(results: dict[str, Any], assets: str | None, figures: list[str]) -> str:
    """The full page. Figures named in ``figures`` are linked from ``assets/`` (beside the page
    when ``assets`` is None)."""
    agg = results["aggregate"]
    link = (lambda name: f"{assets}/{name}") if assets else (lambda name: name)
    sc = study_comparison(results)
    out: list[str] = ["# Results: positional encodings compared", "", *_setup(results)]
    out += ["## The study's table, reproduced", "", study_table(results)]
    out += ["Variants: " + "; ".join(f"**{label(v)}** (`{v}`): {description(v)}" for v in agg) + ".", ""]
    out += _beside_study(results, sc)
    out += _paired_differences(results)
    out += _extrapolation(results, link, figures)
    out += _per_position(results, link, figures)
    out += _samples(results)
    out += ["## Discussion", "", *discussion(results, sc), ""]
    out += [
        "## Further studies",
        "",
        "Each is its own page, rendered from its own json by `examples/compare.py --study NAME --render PAGE`:",
        "",
        "- [The learning-rate study](results-lr.md) (`--study lr`): loss against the peak rate for every variant, "
        "and the table at the shared and at each variant's best rate.",
        "- [Context extension and length extrapolation](results-extension.md) (`--study extension`): RoPE "
        "zero-shot under each schedule and fine-tuned at 4x, beside the encodings designed to extrapolate, 1x-16x.",
        "- [Passkey retrieval by length and depth](results-synthetic.md) (`--study synthetic`): a "
        "length-generalisation probe that loss cannot show.",
        "",
    ]
    return "\n".join(out + revisions_markdown(results))


def _figures(results: dict[str, Any], folder: Path, figures: bool | None) -> list[str]:
    if figures is False or (figures is None and not have_matplotlib()):
        return []
    return plot_all(results, folder)


def write_outputs(results: dict[str, Any], out: str | os.PathLike, *, figures: bool | None = None) -> list[str]:
    """table.md, report.md and the figures in ``out``; returns the figures' names.

    ``figures``: True draws them (ImportError without matplotlib), False draws none, None draws
    them when matplotlib is installed.
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    drawn = _figures(results, out, figures)
    atomic_write(out / "table.md", study_table(results))
    atomic_write(out / "report.md", render_markdown(results, None, drawn))
    return drawn


def render_page(
    results: dict[str, Any],
    page: str | os.PathLike,
    source: str | os.PathLike | None = None,
    *,
    figures: bool | None = None,
) -> list[str]:
    """``page`` plus ``<page stem>/`` beside it with the figures and a copy of results.json (not
    rewritten when ``source`` is that copy); returns the figures' names (``figures`` as in
    :func:`write_outputs`)."""
    page = Path(page)
    assets = page.with_suffix("")
    assets.mkdir(parents=True, exist_ok=True)
    drawn = _figures(results, assets, figures)
    target = assets / "results.json"
    if source is None or Path(source).resolve() != target.resolve():
        atomic_write(target, json.dumps(results, indent=1))
    atomic_write(page, render_markdown(results, assets.name, drawn))
    return drawn

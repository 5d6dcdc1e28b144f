"""The discussion of a comparison: statements computed from a results dict, each saying only what
its numbers show.

Each claim is one function of the results returning one markdown bullet, or ``None`` when the
variants it reads were not run; :func:`discussion` lists them in order.
"""

from __future__ import annotations

import statistics
from typing import Any

from posenc.report.stats import STUDY, fmt_diff, qk_norm_readings, study_comparison
from posenc.variants import label

#: The pairs whose difference is the acceptance criterion: larger than the seed spread or not.
KEY_PAIRS: tuple[tuple[str, str], ...] = (("rope", "nope"), ("rope", "absolute"))


def seed_spread(results: dict[str, Any]) -> str:
    """The range and median over variants of the seed standard deviation of the validation loss."""
    stds = [a["val_loss"]["std"] for a in results["aggregate"].values() if a["val_loss"]["std"] is not None]
    n_seeds = len(results["seeds"])
    if not stds:
        return (
            "- **Seed spread.** One seed per variant: no spread can be estimated, so no difference below "
            "can be called larger than seed noise."
        )
    return (
        f"- **Seed spread.** Over {n_seeds} seeds the standard deviation of the final validation loss "
        f"is {min(stds):.4f} to {max(stds):.4f} (median {statistics.median(stds):.4f}) across variants. "
        f"With {n_seeds} seeds these spreads are themselves rough estimates."
    )


def pair_verdict(results: dict[str, Any], a: str, b: str) -> str | None:
    """The paired difference a - b and whether it is larger than the seed spread."""
    c = next((c for c in results["comparisons"] if (c["a"], c["b"]) == (a, b)), None)
    if c is None:
        return None
    d = c["diff"]
    verdict = (
        "larger than the seed spread (every seed separated)"
        if c["separated"]
        else "not larger than the seed spread (the per-seed ranges overlap)"
        if d["n"] > 1
        else "of unknown significance (one seed)"
    )
    return (
        f"- **{label(a)} vs {label(b)}.** Validation loss {label(a)} − {label(b)} = "
        f"{fmt_diff(d)} (paired over {d['n']} seed(s)): {verdict}."
    )


def study_agreement(sc: dict[str, Any]) -> str | None:
    """Both orderings by validation loss and how many pairwise orderings agree (``sc`` from
    :func:`~posenc.report.stats.study_comparison`)."""
    if not sc["variants"]:
        return None

    def order(rank: dict[str, int]) -> str:
        return " < ".join(label(v) for v in sorted(rank, key=rank.get))

    disagreements = ", ".join(f"{label(a)} vs {label(b)}" for a, b in sc["disagree"])
    return (
        f"- **Agreement with the study.** By validation loss the study orders its models "
        f"{order(sc['study_rank'])}; here: {order(sc['our_rank'])}. {len(sc['agree'])} of {sc['pairs']} "
        f"pairwise orderings agree" + (f": disagreements {disagreements}" if sc["disagree"] else "") + "."
    )


def qk_norm_meaning(results: dict[str, Any], study: dict[str, Any] = STUDY) -> str | None:
    """Which QK-norm variant is on the same side of the absolute model as the study's "QK Norm"."""
    agg = results["aggregate"]
    if "qknorm" not in study["rows"] or "absolute" not in agg:
        return None
    study_gap = study["rows"]["qknorm"][1] - study["rows"]["absolute"][1]
    base = agg["absolute"]["val_loss"]["mean"]
    cands = [v for v in ("qknorm", "absolute_qknorm", "nope_qknorm") if v in agg]
    parts = [f"{label(v)} ({v}) {agg[v]['val_loss']['mean'] - base:+.4f}" for v in cands]
    same = [v for v in cands if (agg[v]["val_loss"]["mean"] - base > 0) == (study_gap > 0)]
    return (
        f'- **What "QK Norm" was.** The study\'s QK Norm model is {study_gap:+.4f} from its GPT (absolute) '
        f"model. Here, relative to {label('absolute')}: "
        + "; ".join(parts)
        + f". Same sign as the study: {', '.join(label(v) for v in same) or 'none'}."
    )


def extrapolation_growth(results: dict[str, Any]) -> dict[str, float]:
    """Per variant evaluated at every context: mean loss at the largest context minus at 1x."""
    agg = results["aggregate"]
    mults = list(next(iter(agg.values()))["extrapolation"])
    return {
        v: a["extrapolation"][mults[-1]]["mean"] - a["extrapolation"][mults[0]]["mean"]
        for v, a in agg.items()
        if a["extrapolation"][mults[-1]] is not None
    }


def beyond_context(results: dict[str, Any]) -> str | None:
    """Which variants gain from a context longer than the training one, and which loses most."""
    agg = results["aggregate"]
    mults = list(next(iter(agg.values()))["extrapolation"])
    growth = extrapolation_growth(results)
    if not growth:
        return None
    ranked = sorted(growth, key=growth.get)
    better = [v for v in ranked if growth[v] < 0]
    return (
        f"- **Beyond the training context** ({mults[-1]}x − 1x, same target tokens): "
        + ", ".join(f"{label(v)} {growth[v]:+.4f}" for v in ranked)
        + ". "
        + (
            f"Loss falls with the longer context for {', '.join(label(v) for v in better)}; "
            if better
            else "No variant gains from the longer context; "
        )
        + f"it rises most for {label(ranked[-1])}. The study measured no context but its own."
        + (
            f" {label('absolute')}'s learned table cannot be evaluated past {results['block_size']} positions."
            if "absolute" in agg and "absolute" not in growth
            else ""
        )
    )


def position_in_context(results: dict[str, Any]) -> str:
    """For how many variants late positions have lower loss than early ones."""
    agg = results["aggregate"]
    falls = [v for v, a in agg.items() if a["late_loss"]["mean"] < a["early_loss"]["mean"]]
    return (
        f"- **Position within the context.** Late positions have lower loss than early ones for "
        f"{len(falls)} of {len(agg)} variants"
        + (f" (not for {', '.join(label(v) for v in agg if v not in falls)})" if len(falls) < len(agg) else "")
        + (
            ": more history makes prediction easier, as it should."
            if len(falls) == len(agg)
            else "; where loss does not fall with position, the model uses its history poorly."
        )
    )


def scale(results: dict[str, Any], study: dict[str, Any] = STUDY) -> str:
    """How much smaller these runs are than the study's."""
    agg = results["aggregate"]
    tok = max(a["tokens"] for a in agg.values())
    params = max(a["params"] for a in agg.values())
    return (
        f"- **Scale.** These runs use {params / 1e6:.2f}M parameters and {tok:,} tokens each, "
        f"{study['params'] / params:.0f}x fewer parameters and {study['tokens'] / tok:,.0f}x fewer tokens "
        "than the study, on a different corpus and tokenizer; orderings that hold here need not hold at its "
        "scale, and the reverse."
    )


def qk_norm_agreement(results: dict[str, Any], study: dict[str, Any] = STUDY) -> str | None:
    """The study's ordering agreement under each reading of its QK Norm row, and which reading the
    numbers favour (the most agreeing pairs; a tie is reported as one)."""
    readings = qk_norm_readings(results, study)
    if len(readings) < 2:
        return None
    parts = "; ".join(f"as {label(r['variant'])} (`{r['variant']}`): {r['agree']} of {r['pairs']}" for r in readings)
    # the question is the model under the norm (absolute table or RoPE), whichever norm it uses
    by_base: dict[str, list[int]] = {}
    for r in readings:
        by_base.setdefault("absolute" if r["variant"].startswith("absolute") else "RoPE", []).append(r["agree"])
    ranked = sorted(by_base.items(), key=lambda kv: -min(kv[1]))
    if len(ranked) == 2 and min(ranked[0][1]) > max(ranked[1][1]):
        verdict = (
            f"every {ranked[0][0]} + QK-norm reading agrees more than every {ranked[1][0]} + QK-norm one, so the "
            f"data favour reading the row as {ranked[0][0]} + QK-norm"
        )
    else:
        verdict = "the data do not decide between an absolute + QK-norm and a RoPE + QK-norm reading"
    return (
        f"- **{len(readings)} readings of the study's QK Norm row.** Pairwise orderings that agree with the study when its "
        f"QK Norm model is read {parts}: {verdict}."
    )


#: Published claims about content-dependent positions, checked seed by seed: (claim, a, b, measure).
#: ``a`` beats ``b`` on the measure when its value is lower; ``b`` None: ``a``'s value is below 0.
#: Measures: "val" (validation loss), "16x" (loss at the largest context), "growth" (largest context
#: minus 1x).
PUBLISHED: tuple[tuple[str, str, str | None, str], ...] = (
    ("Lin et al. 2025 (FoX): the Forgetting Transformer has lower loss than RoPE", "fox", "rope", "val"),
    ("Lin et al. 2025 (FoX): FoX with RoPE has lower loss than RoPE", "fox_rope", "rope", "val"),
    ("Lin et al. 2025 (FoX): FoX extrapolates better than RoPE", "fox", "rope", "16x"),
    (
        "Tan et al. 2025: stick-breaking attention extrapolates with no positional encoding",
        "stickbreaking",
        None,
        "growth",
    ),
    ("Tan et al. 2025: stick-breaking attention extrapolates better than RoPE", "stickbreaking", "rope", "16x"),
    (
        "Xiao et al. 2024, gpt-oss: sinks stabilise windowed layers past the context",
        "rnope_swa_sinks",
        "rnope_swa",
        "16x",
    ),
    ("Xiao et al. 2024, gpt-oss: sinks help RoPE past the context", "rope_sinks", "rope", "16x"),
)


def _per_seed(results: dict[str, Any], v: str, measure: str) -> dict[int, float]:
    out = {}
    for r in results.get("runs", {}).values():
        if r["variant"] != v or r.get("val_loss") is None:
            continue
        ext = r["eval"]["extrapolation"]
        last, first = ext[list(ext)[-1]], ext[list(ext)[0]]
        value = {"val": r["val_loss"], "16x": last, "growth": None if last is None else last - first}[measure]
        if value is not None:
            out[r["seed"]] = value
    return out


def published_claims(results: dict[str, Any]) -> list[str]:
    """Each published claim whose variants were run: whether it holds in the mean, and in how many seeds."""
    out = []
    for claim, a, b, measure in PUBLISHED:
        xa = _per_seed(results, a, measure)
        xb = _per_seed(results, b, measure) if b is not None else dict.fromkeys(xa, 0.0)
        seeds = sorted(set(xa) & set(xb))
        if not seeds:
            continue
        ma, mb = statistics.fmean(xa[s] for s in seeds), statistics.fmean(xb[s] for s in seeds)
        wins = sum(xa[s] < xb[s] for s in seeds)
        what = {"val": "validation loss", "16x": "loss at the largest context", "growth": "largest context − 1x"}[
            measure
        ]
        numbers = f"{label(a)} {ma:+.4f}" if b is None else f"{label(a)} {ma:.4f} vs {label(b)} {mb:.4f}"
        split = "" if wins in (0, len(seeds)) else ": the seeds disagree, so this is within seed noise"
        out.append(
            f"- **{claim}:** {'holds' if ma < mb else 'does not hold'} here ({what}, mean over seeds: {numbers}); "
            f"in {wins} of {len(seeds)} seeds{split}."
        )
    return out


def discussion(results: dict[str, Any], sc: dict[str, Any] | None = None) -> list[str]:
    """The discussion bullets, in order; ``sc`` is :func:`~posenc.report.stats.study_comparison`
    of ``results`` (computed when not given)."""
    sc = study_comparison(results) if sc is None else sc
    claims = [
        seed_spread(results),
        *(pair_verdict(results, a, b) for a, b in KEY_PAIRS),
        study_agreement(sc),
        qk_norm_meaning(results),
        qk_norm_agreement(results),
        beyond_context(results),
        *published_claims(results),
        position_in_context(results),
        scale(results),
    ]
    return [c for c in claims if c is not None]

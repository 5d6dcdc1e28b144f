"""Statistics over the runs of a comparison: spreads over seeds, per-variant aggregates, paired
differences and the agreement of orderings with the study's published table.

Everything here reads the plain dicts of a ``results.json`` (``runs`` keyed ``"<variant>/s<seed>"``,
each with ``train_loss``, ``val_loss``, ``tokens``, ``params``, ``seed``, ``curve`` and ``eval``) and
returns plain dicts, so a report can be rebuilt from the JSON alone.
"""

from __future__ import annotations

import statistics
from typing import Any

import numpy as np

#: The reference study's published table (one run each; ~16.03M parameters, ~900M OpenWebText
#: GPT-2 tokens, fp16). The only hand-typed numbers of a report.
STUDY: dict[str, Any] = {
    "source": "the reference study's published table",
    "setting": "16.03M parameters, ~900M OpenWebText tokens (GPT-2 BPE), fp16, one run each",
    "params": 16.03e6,
    "tokens": 900e6,
    "rows": {  # variant -> (train loss, validation loss)
        "absolute": (4.2067, 4.1138),
        "nope": (4.4082, 4.2856),
        "rope": (4.0554, 3.9634),
        "qknorm": (4.3752, 4.263),
        "rnope": (4.0745, 3.9817),
    },
}
#: Pairs (a, b) whose paired difference a - b is reported; the first two are the acceptance
#: criterion (differences larger than the seed spread).
PAIRS: tuple[tuple[str, str], ...] = (
    ("rope", "nope"),
    ("rope", "absolute"),
    ("rnope", "rope"),
    ("qknorm", "rope"),
    ("alibi", "rope"),
    ("sinusoidal", "absolute"),
    ("absolute_qknorm", "absolute"),
    ("nope_qknorm", "nope"),
    ("absolute", "nope"),
)


def spread(values: list[float | None]) -> dict[str, Any] | None:
    """Mean, sample std (None for one value), n, min, max and the values, ignoring ``None``s;
    ``None`` when no value is left."""
    vals = [v for v in values if v is not None]
    if not vals:
        return None
    return {
        "mean": statistics.fmean(vals),
        "std": statistics.stdev(vals) if len(vals) > 1 else None,
        "n": len(vals),
        "min": min(vals),
        "max": max(vals),
        "values": vals,
    }


def fmt_spread(s: dict[str, Any] | None, digits: int = 4) -> str:
    """``mean ± std`` (``mean`` for one value, ``n/a`` for none)."""
    if s is None:
        return "n/a"
    if s["std"] is None:
        return f"{s['mean']:.{digits}f}"
    return f"{s['mean']:.{digits}f} ± {s['std']:.{digits}f}"


def fmt_diff(d: dict[str, Any] | None) -> str:
    """A spread of differences, signed: ``+mean ± std``."""
    if d is None:
        return "n/a"
    return f"{d['mean']:+.4f}" + ("" if d["std"] is None else f" ± {d['std']:.4f}")


def early_late(per_position: list[float]) -> tuple[float, float]:
    """Mean loss over the first and the last eighth of the positions."""
    k = max(1, len(per_position) // 8)
    return statistics.fmean(per_position[:k]), statistics.fmean(per_position[-k:])


def kv_cache_bytes(results: dict[str, Any], variant: str) -> int | None:
    """KV-cache bytes one token adds to the variant's model (all layers, fp16), as its first run's
    summary recorded them (results of posenc 0.2 are completed when loaded:
    :func:`posenc.studies.table.complete_results`); None when unknown."""
    run = next((r for r in results["runs"].values() if r["variant"] == variant), None)
    return None if run is None else run.get("kv_cache_bytes")


def aggregate(runs: dict[str, dict[str, Any]], variants: list[str], seeds: list[int]) -> dict[str, Any]:
    """Per variant (in ``variants`` order, skipping those without runs): spreads over seeds of the
    final losses, the extrapolation and the early/late loss; mean per-position curves; the loss
    curve as a spread per evaluation step."""
    agg: dict[str, Any] = {}
    for v in variants:
        rs = [runs[f"{v}/s{s}"] for s in seeds if f"{v}/s{s}" in runs]
        if not rs:
            continue
        curve_steps = sorted({p["step"] for r in rs for p in r["curve"]})
        curve = []
        for step in curve_steps:
            pts = [p for r in rs for p in r["curve"] if p["step"] == step]
            curve.append(
                {
                    "step": step,
                    "tokens": pts[0]["tokens"],
                    "train_loss": spread([p["train_loss"] for p in pts]),
                    "val_loss": spread([p["val_loss"] for p in pts]),
                }
            )
        ext = {m: spread([r["eval"]["extrapolation"][m] for r in rs]) for m in rs[0]["eval"]["extrapolation"]}
        pp = np.mean([r["eval"]["per_position"] for r in rs], axis=0).tolist()
        ppl = (
            np.mean([r["eval"]["per_position_long"] for r in rs], axis=0).tolist()
            if rs[0]["eval"]["per_position_long"]
            else None
        )
        el = [early_late(r["eval"]["per_position"]) for r in rs]
        agg[v] = {
            "train_loss": spread([r["train_loss"] for r in rs]),
            "val_loss": spread([r["val_loss"] for r in rs]),
            "tokens": rs[0]["tokens"],
            "params": rs[0]["params"],
            "seeds": [r["seed"] for r in rs],
            "extrapolation": ext,
            "per_position": pp,
            "per_position_long": ppl,
            "early_loss": spread([e for e, _ in el]),
            "late_loss": spread([lt for _, lt in el]),
            "curve": curve,
        }
    return agg


def compare_pairs(
    runs: dict[str, dict[str, Any]], variants: list[str], seeds: list[int], pairs: tuple[tuple[str, str], ...] = PAIRS
) -> list[dict[str, Any]]:
    """Paired differences a - b of the validation loss over the seeds both variants ran (same data
    order and seed), and whether the per-seed ranges are disjoint ("separated")."""
    out = []
    for a, b in pairs:
        if a not in variants or b not in variants:
            continue
        common = [s for s in seeds if f"{a}/s{s}" in runs and f"{b}/s{s}" in runs]
        if not common:
            continue
        va = [runs[f"{a}/s{s}"]["val_loss"] for s in common]
        vb = [runs[f"{b}/s{s}"]["val_loss"] for s in common]
        diff = spread([x - y for x, y in zip(va, vb)])
        separated = max(va) < min(vb) or max(vb) < min(va)
        out.append(
            {
                "a": a,
                "b": b,
                "seeds": common,
                "diff": diff,
                "separated": len(common) > 1 and separated,
                "std_a": spread(va)["std"],
                "std_b": spread(vb)["std"],
            }
        )
    return out


def paired_diff(results: dict[str, Any], a: str, b: str) -> dict[str, Any] | None:
    """Spread of the validation loss a - b, per seed over the seeds both ran."""
    runs = results["runs"]
    seeds = [s for s in results["seeds"] if f"{a}/s{s}" in runs and f"{b}/s{s}" in runs]
    return spread([runs[f"{a}/s{s}"]["val_loss"] - runs[f"{b}/s{s}"]["val_loss"] for s in seeds])


def _rank(values: dict[str, float]) -> dict[str, int]:
    return {v: i + 1 for i, v in enumerate(sorted(values, key=values.get))}


def study_comparison(
    results: dict[str, Any], study: dict[str, Any] = STUDY, reading: dict[str, str] | None = None
) -> dict[str, Any]:
    """The variants both here and in the study, their rank by validation loss in each (1 = lowest),
    and which of their pairs are ordered the same way (``agree``) or not (``disagree``).
    ``reading`` maps a study row to the variant that stands for it here (default: the same name)."""
    agg, rows = results["aggregate"], study["rows"]
    reading = reading or {}
    common = [v for v in rows if reading.get(v, v) in agg]
    study_val = {v: rows[v][1] for v in common}
    ours_val = {v: agg[reading.get(v, v)]["val_loss"]["mean"] for v in common}
    pairs = [(a, b) for i, a in enumerate(common) for b in common[i + 1 :]]
    agree = [(a, b) for a, b in pairs if (study_val[a] < study_val[b]) == (ours_val[a] < ours_val[b])]
    return {
        "variants": common,
        "study_rank": _rank(study_val),
        "our_rank": _rank(ours_val),
        "pairs": len(pairs),
        "agree": agree,
        "disagree": [p for p in pairs if p not in agree],
    }


#: What the study's "QK Norm" row may have been: its text says only "query and key vectors
#: normalized before attention", beside a standard (absolute-position) GPT.
QK_NORM_READINGS: tuple[str, ...] = ("qknorm", "absolute_qknorm", "qknorm_l2", "absolute_qknorm_l2")


def qk_norm_readings(results: dict[str, Any], study: dict[str, Any] = STUDY) -> list[dict[str, Any]]:
    """For every reading of the study's QK Norm row that this sweep trained: the pairwise ordering
    agreement with the study when that variant stands for the row."""
    out = []
    for variant in QK_NORM_READINGS:
        if variant in results["aggregate"]:
            sc = study_comparison(results, study, {"qknorm": variant})
            out.append(
                {"variant": variant, "agree": len(sc["agree"]), "pairs": sc["pairs"], "disagree": sc["disagree"]}
            )
    return out


def merge_results(parts: list[dict[str, Any]]) -> dict[str, Any]:
    """One results dict from sweeps of the same preset (e.g. a later sweep of new variants): the
    union of their runs, with aggregates and paired differences recomputed. Sweeps whose training
    settings differ are refused: their numbers would not compare."""
    first = parts[0]
    for other in parts[1:]:
        for key in ("preset", "config", "block_size", "eval_tokens"):
            if other[key] != first[key]:
                raise ValueError(f"merge_results: sweeps differ in {key!r}: {first[key]!r} vs {other[key]!r}")
    merged = dict(first)
    merged["runs"] = {}
    variants: list[str] = []
    seeds: list[int] = []
    repeated: dict[str, list[float]] = {}  # runs trained again by a later sweep: the first one is kept
    for part in parts:
        repeated |= part.get("repeated_runs") or {}  # a part that is itself a merge keeps its own record
        for key, run in part["runs"].items():
            if key in merged["runs"]:
                repeated.setdefault(key, [merged["runs"][key]["val_loss"]]).append(run["val_loss"])
            else:
                merged["runs"][key] = run
        variants += [v for v in part["variants"] if v not in variants]
        seeds += [s for s in part["seeds"] if s not in seeds]
    merged["variants"], merged["seeds"] = variants, sorted(seeds)
    merged["parts"] = [  # one entry per sweep, also through a part that is itself a merge
        sweep
        for part in parts
        for sweep in part.get("parts")
        or [{k: part[k] for k in ("command", "created", "environment", "wall_time_s", "runs_trained", "variants")}]
    ]
    merged["repeated_runs"] = repeated
    merged["wall_time_s"] = sum(part["wall_time_s"] for part in parts)
    merged["runs_trained"] = sum(part["runs_trained"] for part in parts)
    merged["aggregate"] = aggregate(merged["runs"], variants, merged["seeds"])
    merged["comparisons"] = compare_pairs(merged["runs"], variants, merged["seeds"])
    return merged


def order_changes(shared: dict[str, float], best: dict[str, float]) -> list[dict[str, Any]]:
    """Pairs of variants ordered differently by mean validation loss at the shared and the best rates."""
    names = [v for v in shared if v in best]
    out = []
    for i, a in enumerate(names):
        for b in names[i + 1 :]:
            if (shared[a] < shared[b]) != (best[a] < best[b]):
                first, second = (a, b) if best[a] < best[b] else (b, a)
                out.append({"better_at_best": first, "worse_at_best": second})
    return out

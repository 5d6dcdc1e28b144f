"""Revising a page: some variants' rows retrained, the others kept, and the revision recorded.

When a change of the library moves only some variants (a corrected initialisation, say), the
rows of those variants are retrained and :func:`revise` puts them into the study's json in place
of the old ones; every other row stays as it was, bit for bit. Variants the old json lacks are
added. A new json with every row of the old one (a full rerun) replaces it whole, keeping its
history. The revised json records the
revision -- when, the command, why, how much each revised row moved and which of the page's
computed sentences changed -- and every page renders its revisions (:func:`revisions_markdown`).
It works for every study's json: results.json (``table``), lr.json, extension.json and
synthetic.json.

    compare --render docs/results.md --from docs/results/results.json --revise out/new/results.json \\
        --why "FIRE and T5 retrained with the 0.3 initialisation and scale"
"""

from __future__ import annotations

import datetime
import json
import statistics
from typing import Any

#: The fields of the runs' training that must agree for two jsons to be merged.
_PLACEMENT = ("out_dir", "seed", "device")


def _kind(results: dict[str, Any]) -> str:
    return results.get("kind", "table")


def _check_compatible(old: dict[str, Any], new: dict[str, Any], full: bool = False) -> None:
    """Refuse jsons that cannot share a page; a full rerun (``full``) may have other seeds, since it
    replaces every row."""
    if _kind(old) != _kind(new):
        raise ValueError(f"cannot revise a {_kind(old)} page with a {_kind(new)} json")
    for key in ("preset", "block_size"):
        if old.get(key) != new.get(key):
            raise ValueError(f"the two jsons differ in {key!r}: {old.get(key)!r} vs {new.get(key)!r}")
    if old.get("seeds") != new.get("seeds") and not full:
        raise ValueError(f"the two jsons differ in their seeds: {old.get('seeds')} vs {new.get('seeds')}")
    if _kind(old) == "table":
        a, b = ({k: v for k, v in r["train_config"].items() if k not in _PLACEMENT} for r in (old, new))
        if a != b:
            diff = sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k))
            raise ValueError(f"the two sweeps trained differently: {diff}")


def _mean(xs: list[float | None]) -> float | None:
    xs = [x for x in xs if x is not None]
    return statistics.fmean(xs) if xs else None


def _with_variants(old: dict[str, Any], variants: list[str]) -> dict[str, Any]:
    """A copy of ``old`` whose variant list ends with those of ``variants`` it did not have."""
    out = json.loads(json.dumps(old))
    out["variants"] = [*old["variants"], *(v for v in variants if v not in old["variants"])]
    return out


def _replace_table(old: dict[str, Any], new: dict[str, Any], variants: list[str]) -> dict[str, Any]:
    from posenc.report.stats import aggregate, compare_pairs

    out = _with_variants(old, variants)
    out["runs"] = {k: r for k, r in old["runs"].items() if r["variant"] not in variants}
    out["runs"] |= {k: r for k, r in new["runs"].items() if r["variant"] in variants}
    out["aggregate"] = aggregate(out["runs"], out["variants"], out["seeds"])
    out["comparisons"] = compare_pairs(out["runs"], out["variants"], out["seeds"])
    return out


def _replace_lr(old: dict[str, Any], new: dict[str, Any], variants: list[str]) -> dict[str, Any]:
    from posenc.report.stats import order_changes

    out = _with_variants(old, variants)
    out["runs"] = {k: r for k, r in old["runs"].items() if r["variant"] not in variants}
    out["runs"] |= {k: r for k, r in new["runs"].items() if r["variant"] in variants}
    for key in ("phase1", "best_lr", "beyond_grid", "at_shared", "at_best"):
        kept = {v: x for v, x in (old.get(key) or {}).items() if v not in variants}
        out[key] = kept | {v: x for v, x in (new.get(key) or {}).items() if v in variants}
    means = lambda t: {v: r["val_loss"]["mean"] for v, r in t.items() if r["val_loss"]}  # noqa: E731
    out["order_changes"] = order_changes(means(out["at_shared"]), means(out["at_best"]))
    return out


def _replace_rows(old: dict[str, Any], new: dict[str, Any], variants: list[str]) -> dict[str, Any]:
    """extension.json: the extrapolating rows of ``variants``."""
    out = json.loads(json.dumps(old))
    for key, row in new["rows"].items():
        if row["section"] == "extrapolating" and row["name"] in variants:
            out["rows"][key] = row
    return out


def _replace_synthetic(old: dict[str, Any], new: dict[str, Any], variants: list[str]) -> dict[str, Any]:
    out = _with_variants(old, variants)
    if "counting" in new and "counting" not in out:  # a page from before the counting probe
        out["counting"] = {**new["counting"], "runs": {}, "mean_accuracy": {}}
    for part, source in ((out, new), (out.get("counting"), new.get("counting"))):
        if source is None:
            continue
        # a variant may have passkey rows and no counting ones (counted only for some variants)
        here = [v for v in variants if v in source["mean_accuracy"]]
        part["runs"] = {k: r for k, r in part["runs"].items() if r["variant"] not in here}
        part["runs"] |= {k: r for k, r in source["runs"].items() if r["variant"] in here}
        part["mean_accuracy"] |= {v: source["mean_accuracy"][v] for v in here}
    return out


REPLACE = {"table": _replace_table, "lr": _replace_lr, "extension": _replace_rows, "synthetic": _replace_synthetic}


def moved(results: dict[str, Any], variant: str) -> dict[str, Any]:
    """The headline numbers of one variant's rows on a page of this kind."""
    kind = _kind(results)
    if kind == "table":
        a = results["aggregate"][variant]
        return {"val_loss": a["val_loss"]["mean"], "loss at 16x": (a["extrapolation"].get("16") or {}).get("mean")}
    if kind == "lr":
        shared, best = results["at_shared"][variant], results["at_best"][variant]
        return {"val_loss at the shared rate": shared["val_loss"]["mean"], "best rate": best["lr"]}
    if kind == "extension":
        loss = results["rows"][f"extrapolating/{variant}"]["loss"]
        return {f"loss at {m}x": loss[m] for m in ("1", "4", "16")}
    grid = results["mean_accuracy"][variant]
    return {"accuracy at 1x": _mean(grid[0]), f"accuracy at {results['probe']['multipliers'][-1]}x": _mean(grid[-1])}


def _sentences(results: dict[str, Any]) -> list[str]:
    """The page's prose: its lines that are not table rows, figures or headings."""
    from posenc.report.markdown import render_markdown
    from posenc.report.studies import RENDERERS

    results = {k: v for k, v in results.items() if k != "revisions"}  # the history is not the page's claims
    if _kind(results) == "table":
        text = render_markdown(results, None, [])
    else:
        text = RENDERERS[_kind(results)][0](results, [], "")
    skip = ("|", "#", "![", "- Command", "- Date", "- Wall time", "- One run", "- Sweep", "  Date")
    prose, fenced = [], False
    for line in text.splitlines():
        if line.lstrip().startswith("```"):  # generated samples: text, not claims
            fenced = not fenced
        elif not fenced and line.strip() and not line.lstrip().startswith(skip) and not _heading(line):
            prose.append(line)
    return prose


def _heading(line: str) -> bool:
    """A sample's bold heading (``**GPT FoX**``): a label, not a sentence."""
    return line.startswith("**") and line.endswith("**")


def _variants(results: dict[str, Any]) -> list[str]:
    if _kind(results) == "extension":
        return [r["name"] for r in results["rows"].values() if r["section"] == "extrapolating"]
    return list(results["variants"])


def revise(old: dict[str, Any], new: dict[str, Any], why: str, command: str = "") -> dict[str, Any]:
    """``old`` with the rows of ``new``'s variants replaced by ``new``'s (or added, for variants
    ``old`` lacks), and the revision recorded."""
    full = set(old.get("rows", old.get("variants"))) <= set(new.get("rows", new.get("variants")))
    _check_compatible(old, new, full)
    names = _variants(new)
    variants = [v for v in names if v in _variants(old)]
    added = [v for v in names if v not in _variants(old)]
    if full:
        out = json.loads(json.dumps(new))  # a full rerun: the new json, with the old one's history
    else:
        out = REPLACE[_kind(old)](old, new, variants + added)
    before, after = _sentences(old), _sentences(out)
    out["revisions"] = [
        *old.get("revisions", []),
        {
            "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
            "command": command,
            "source": {k: new.get(k) for k in ("command", "created")},
            "why": why,
            "variants": variants,
            "added": added,
            "moved": {v: {"before": moved(old, v), "after": moved(out, v)} for v in variants},
            "sentences_changed": [[a, b] for a, b in _changed(before, after)],
        },
    ]
    return out


def _changed(before: list[str], after: list[str]) -> list[tuple[str, str]]:
    """(old, new) sentence pairs that differ: a bullet is matched to the bullet of the same bold
    title (``- **Seed spread.**``), other lines by position among the lines that changed."""
    gone = [s for s in before if s not in after]
    came = [s for s in after if s not in before]
    pairs = []
    for s in list(gone):
        twin = next((t for t in came if _title(t) is not None and _title(t) == _title(s)), None)
        if twin is not None:
            pairs.append((s, twin))
            gone.remove(s)
            came.remove(twin)
    pairs += list(zip(gone, came))
    pairs += [(s, "") for s in gone[len(came) :]] + [("", s) for s in came[len(gone) :]]
    return pairs


def _title(line: str) -> str | None:
    """The bold title a bullet starts with, or None."""
    body = line.lstrip()
    if not body.startswith("- **"):
        return None
    end = body.find("**", 4)
    return body[4:end] if end > 0 else None

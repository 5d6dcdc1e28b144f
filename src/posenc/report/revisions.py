"""The "Revisions" section of a page whose json was revised (:mod:`posenc.report.revise`)."""

from __future__ import annotations

from typing import Any

from posenc.variants import label


def revisions_markdown(results: dict[str, Any]) -> list[str]:
    """The section every page ends with when its json was revised."""

    revisions = results.get("revisions") or []
    if not revisions:
        return []
    out = ["## Revisions", ""]
    for r in revisions:
        done = []
        if r["variants"]:
            done.append(", ".join(label(v, default=v) for v in r["variants"]) + " retrained")
        if r.get("added"):
            done.append(", ".join(label(v, default=v) for v in r["added"]) + " added")
        out += [f"**{r['date']}: {'; '.join(done)}.** {r['why']}", ""]
        if r["command"]:
            out += [
                f"- Command: `{r['command']}`; the new rows from `{r['source']['command']}` ({r['source']['created']})."
            ]
        for v, m in r["moved"].items():
            parts = [f"{k} {_fmt(m['before'].get(k))} -> {_fmt(x)}" for k, x in m["after"].items()]
            out.append(f"- {label(v, default=v)}: " + "; ".join(parts) + ".")
        changed = r["sentences_changed"]
        out.append(
            f"- Sentences of this page that changed ({len(changed)}):"
            if changed
            else "- No other sentence of this page changed."
        )
        for a, b in changed:
            out += [f"  - before: {a or '(none)'}", f"    after: {b or '(none)'}"]
        out.append("")
    return out


def _fmt(x: Any) -> str:
    if x is None:
        return "n/a"
    return f"{x:g}" if isinstance(x, float) and x < 1e-2 else (f"{x:.4f}" if isinstance(x, float) else str(x))

"""Revising a page (posenc.report.revise): the rows of some variants replaced, every other row kept
bit for bit, and the revision -- what moved, which sentences changed -- recorded and rendered. On
the committed jsons of every study, with the new rows made by shifting the old ones."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest

from posenc import sweep as compare
from posenc.report.revise import revise
from posenc.report.revisions import revisions_markdown
from posenc.report.stats import aggregate

DOCS = Path(__file__).resolve().parent.parent / "docs"
COMMITTED = {
    "table": DOCS / "results" / "results.json",
    "lr": DOCS / "results-lr" / "lr.json",
    "extension": DOCS / "results-extension" / "extension.json",
    "synthetic": DOCS / "results-synthetic" / "synthetic.json",
}


def shifted(old: dict, kind: str, variant: str, by: float) -> dict:
    """A 'new' json of ``variant`` alone: its rows with every loss (or accuracy) moved by ``by``."""
    new = copy.deepcopy(old)
    new["variants"] = [variant]
    new["command"], new["created"] = "the new sweep", "2026-12-04 00:00 UTC"
    if kind == "extension":
        row = new["rows"][f"extrapolating/{variant}"]
        row["loss"] = {m: None if x is None else x + by for m, x in row["loss"].items()}
        new["rows"] = {f"extrapolating/{variant}": row}
        return new
    if kind == "synthetic":
        new["mean_accuracy"][variant] = [[min(1.0, a + by) for a in r] for r in new["mean_accuracy"][variant]]
        for run in new["runs"].values():
            if run["variant"] == variant:
                run["accuracy"] = [[min(1.0, a + by) for a in r] for r in run["accuracy"]]
        return new
    for run in new["runs"].values():
        if run["variant"] == variant and run.get("val_loss") is not None:
            run["val_loss"] += by
            if kind == "table":  # the loss at 16x the context moves twice as far: its growth changes
                ext = run["eval"]["extrapolation"]
                ext["16"] = None if ext["16"] is None else ext["16"] + 2 * by
    if kind == "lr":
        for table in ("at_shared", "at_best"):
            new[table][variant]["val_loss"]["mean"] += by
    return new


@pytest.mark.parametrize("kind", sorted(COMMITTED))
def test_a_revision_replaces_only_its_variants_and_is_recorded(kind, tmp_path):
    old = json.loads(COMMITTED[kind].read_text())
    revised = revise(old, shifted(old, kind, "fire", 0.25), "a test", "the command")
    assert len(revised["revisions"]) == len(old.get("revisions", [])) + 1
    r = revised["revisions"][-1]
    assert r["variants"] == ["fire"] and r["why"] == "a test" and r["source"]["command"] == "the new sweep"
    before, after = r["moved"]["fire"]["before"], r["moved"]["fire"]["after"]
    assert before != after and before.keys() == after.keys()
    if kind == "table":
        assert after["val_loss"] == pytest.approx(before["val_loss"] + 0.25)
        kept = {k: v for k, v in old["runs"].items() if v["variant"] != "fire"}
        assert all(revised["runs"][k] == v for k, v in kept.items())  # every other run as it was
        assert revised["aggregate"]["rope"] == old["aggregate"]["rope"]
    if kind == "extension":
        assert revised["rows"]["zero-shot/plain"] == old["rows"]["zero-shot/plain"]
    page = tmp_path / "page.md"
    json_path = tmp_path / "old.json"
    json_path.write_text(json.dumps(old))
    new_path = tmp_path / "new.json"
    new_path.write_text(json.dumps(shifted(old, kind, "fire", 0.25)))
    argv = ["--render", str(page), "--from", str(json_path), "--revise", str(new_path), "--why", "a test"]
    assert compare.run(argv) == 0
    text = page.read_text()
    assert "## Revisions" in text and "GPT FIRE retrained.** a test" in text
    assert "\n".join(revisions_markdown(revised)).split("- Command")[0] in text


def test_a_table_revision_names_the_sentences_it_changed():
    old = json.loads(COMMITTED["table"].read_text())
    revised = revise(old, shifted(old, "table", "fire", -1.0), "fire became the best", "")
    changed = revised["revisions"][-1]["sentences_changed"]
    assert changed and any("FIRE" in a or "FIRE" in b for a, b in changed)
    same = revise(old, shifted(old, "table", "fire", 0.0), "nothing moved", "")
    assert same["revisions"][-1]["sentences_changed"] == []  # the control: no move, no changed sentence


def test_a_json_of_another_study_or_training_is_refused():
    old = json.loads(COMMITTED["table"].read_text())
    with pytest.raises(ValueError, match="cannot revise a table page with a lr json"):
        revise(old, json.loads(COMMITTED["lr"].read_text()), "x")
    other = shifted(old, "table", "fire", 0.0)
    other["train_config"] = dict(other["train_config"], max_iters=5)
    with pytest.raises(ValueError, match="max_iters"):
        revise(old, other, "x")
    other = shifted(old, "table", "fire", 0.0)
    other["seeds"] = [0]
    with pytest.raises(ValueError, match="seeds"):
        revise(old, other, "x")


def renamed(new: dict, kind: str, src: str, dst: str) -> dict:
    """``new`` (rows of ``src`` alone) with its rows presented as those of ``dst``."""
    text = json.dumps(new).replace(f'"{src}"', f'"{dst}"').replace(f"{src}/s", f"{dst}/s")
    text = text.replace(f"extrapolating/{src}", f"extrapolating/{dst}").replace(f"{src}-s", f"{dst}-s")
    return json.loads(text)


@pytest.mark.parametrize(("kind", "src"), [("table", "gqa"), ("synthetic", "rope"), ("extension", "alibi")])
def test_a_variant_the_page_lacks_is_added_beside_the_others(kind, src):
    old = json.loads(COMMITTED[kind].read_text())
    new = renamed(shifted(old, kind, src, 0.0), kind, src, "newcomer")  # a variant no page has
    revised = revise(old, new, "newcomer added", "")
    r = revised["revisions"][-1]
    assert r["variants"] == [] and r["added"] == ["newcomer"] and r["moved"] == {}
    if kind == "extension":
        assert revised["rows"]["extrapolating/newcomer"]["loss"] == old["rows"][f"extrapolating/{src}"]["loss"]
        assert all(revised["rows"][k] == v for k, v in old["rows"].items())
    else:
        assert revised["variants"] == [*old["variants"], "newcomer"]
        table = "mean_accuracy" if kind == "synthetic" else "aggregate"
        assert revised[table]["newcomer"] == old[table][src]
    assert "newcomer added.** newcomer added" in "\n".join(revisions_markdown(revised))


def test_a_full_rerun_replaces_the_page_and_keeps_its_history():
    old = json.loads(COMMITTED["table"].read_text())
    old = revise(old, shifted(old, "table", "t5", 0.0), "an earlier revision")
    new = shifted(old, "table", "fire", 0.25)
    new["variants"] = old["variants"]  # every variant rerun, FIRE moved
    new["aggregate"] = aggregate(new["runs"], new["variants"], new["seeds"])
    new.pop("revisions")
    revised = revise(old, new, "rerun", "")
    assert {k: v for k, v in revised.items() if k != "revisions"} == new  # the rerun's own json
    assert [r["why"] for r in revised["revisions"][-2:]] == ["an earlier revision", "rerun"]
    last = revised["revisions"][-1]
    assert last["variants"] == old["variants"] and last["added"] == []
    assert last["moved"]["fire"]["after"]["val_loss"] == pytest.approx(
        last["moved"]["fire"]["before"]["val_loss"] + 0.25
    )
    assert last["moved"]["rope"]["after"] == last["moved"]["rope"]["before"]


def test_a_full_rerun_may_bring_other_seeds_and_a_partial_one_may_not():
    """A full rerun replaces every row, so it may have more seeds (the extension page went from
    one seed to three); a revision of some rows must share the page's seeds."""
    old = json.loads(COMMITTED["extension"].read_text())
    new = copy.deepcopy(old)
    new["seeds"] = [*old["seeds"], 99]
    new.pop("revisions", None)
    assert revise(old, new, "more seeds")["seeds"] == new["seeds"]
    partial = copy.deepcopy(new)
    partial["rows"] = {k: r for k, r in new["rows"].items() if k == "extrapolating/fire"}
    with pytest.raises(ValueError, match="seeds"):
        revise(old, partial, "x")

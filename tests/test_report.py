"""posenc.report from a results dict: the committed docs page is reproduced byte for byte from its
results.json, the statistics are recomputed from the runs, every discussion claim moves with the
numbers it reads, and the study's orderings are compared correctly."""

from __future__ import annotations

import copy
import json
import re
import sys
from pathlib import Path

import pytest

from posenc.report import (
    FIGURES,
    STUDY,
    aggregate,
    claims,
    compare_pairs,
    discussion,
    early_late,
    figures,
    fmt_diff,
    fmt_spread,
    kv_cache_bytes,
    markdown,
    merge_results,
    qk_norm_readings,
    render_markdown,
    render_page,
    spread,
    study_comparison,
    study_table,
    write_outputs,
)
from posenc.variants import CONTENT_DEPENDENT, label

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "docs" / "results" / "results.json"
PAGE = ROOT / "docs" / "results.md"


@pytest.fixture(scope="module")
def committed() -> dict:
    return json.loads(RESULTS.read_text())


@pytest.fixture
def results(committed) -> dict:
    return copy.deepcopy(committed)


def test_the_committed_page_is_rendered_byte_for_byte(committed):
    assert render_markdown(committed, "results", list(FIGURES)) == PAGE.read_text()


def test_aggregate_and_pairs_are_recomputed_from_the_runs(committed):
    runs, variants, seeds = committed["runs"], committed["variants"], committed["seeds"]
    assert aggregate(runs, variants, seeds) == committed["aggregate"]
    assert compare_pairs(runs, variants, seeds) == committed["comparisons"]


def test_render_page_writes_the_page_figures_and_json(committed, tmp_path):
    page = tmp_path / "docs" / "results.md"
    page.parent.mkdir()
    assert render_page(committed, page, figures=True) == list(FIGURES)
    assert page.read_text() == PAGE.read_text()
    for name in FIGURES:
        assert (tmp_path / "docs" / "results" / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert json.loads((tmp_path / "docs" / "results" / "results.json").read_text()) == committed


def test_without_figures_the_page_links_none(committed, tmp_path, monkeypatch):
    monkeypatch.setattr(markdown, "have_matplotlib", lambda: False)
    assert write_outputs(committed, tmp_path) == []
    report = (tmp_path / "report.md").read_text()
    assert "![" not in report and "## Length extrapolation" in report
    assert (tmp_path / "table.md").read_text().startswith("| Model | Train Loss | Validation Loss |")
    assert not list(tmp_path.glob("*.png"))


def test_missing_matplotlib_says_what_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    with pytest.raises(ImportError, match=r"pip install 'posenc\[train\]'"):
        figures.pyplot()
    assert figures.have_matplotlib() is False


def test_spread_early_late_and_formats():
    s = spread([1.0, None, 3.0])
    assert s == {"mean": 2.0, "std": 2**0.5, "n": 2, "min": 1.0, "max": 3.0, "values": [1.0, 3.0]}
    assert spread([None]) is None and spread([2.0])["std"] is None
    assert early_late([4.0] * 8 + [1.0] * 8) == (4.0, 1.0)
    assert fmt_spread(s) == "2.0000 ± 1.4142" and fmt_spread(spread([2.0])) == "2.0000" and fmt_spread(None) == "n/a"
    assert fmt_diff(spread([-0.5, -0.25])) == "-0.3750 ± 0.1768" and fmt_diff(spread([0.1])) == "+0.1000"


def _run(variant: str, seed: int, val: float) -> dict:
    return {"variant": variant, "seed": seed, "val_loss": val}


def test_compare_pairs_separates_only_disjoint_seed_ranges():
    runs = {f"rope/s{s}": _run("rope", s, v) for s, v in enumerate((1.0, 1.1, 1.2))}
    runs |= {f"nope/s{s}": _run("nope", s, v) for s, v in enumerate((1.3, 1.4, 1.5))}
    runs |= {f"absolute/s{s}": _run("absolute", s, v) for s, v in enumerate((1.15, 0.9, 1.6))}
    pairs = {(c["a"], c["b"]): c for c in compare_pairs(runs, ["rope", "nope", "absolute"], [0, 1, 2])}
    assert list(pairs) == [("rope", "nope"), ("rope", "absolute"), ("absolute", "nope")]
    assert pairs[("rope", "nope")]["separated"] and pairs[("rope", "nope")]["diff"]["mean"] == pytest.approx(-0.3)
    assert not pairs[("rope", "absolute")]["separated"]
    # one seed is never "separated": no spread to exceed
    one = compare_pairs(runs, ["rope", "nope"], [0])
    assert one[0]["seeds"] == [0] and one[0]["separated"] is False and one[0]["std_a"] is None


def _hand_made(val: dict[str, float]) -> dict:
    return {"aggregate": {v: {"val_loss": {"mean": x}} for v, x in val.items()}}


def test_study_comparison_counts_agreeing_orderings():
    # the study orders rope < absolute < nope; here rope < nope < absolute; alibi is not in the study
    sc = study_comparison(_hand_made({"rope": 1.0, "absolute": 2.0, "nope": 1.5, "alibi": 0.1}))
    assert sc["variants"] == ["absolute", "nope", "rope"]
    assert sc["study_rank"] == {"rope": 1, "absolute": 2, "nope": 3}
    assert sc["our_rank"] == {"rope": 1, "nope": 2, "absolute": 3}
    assert sc["pairs"] == 3 and sc["agree"] == [("absolute", "rope"), ("nope", "rope")]
    assert sc["disagree"] == [("absolute", "nope")]
    reversed_ = study_comparison(_hand_made({"rope": 3.0, "absolute": 2.0, "nope": 1.0}))
    assert reversed_["agree"] == [] and len(reversed_["disagree"]) == 3
    study = {"rows": {"a": (0.0, 1.0), "b": (0.0, 2.0)}}
    assert study_comparison(_hand_made({"a": 5.0, "b": 6.0}), study)["agree"] == [("a", "b")]
    assert study_comparison(_hand_made({"nothing": 1.0}))["pairs"] == 0


def test_qk_norm_readings_stand_each_variant_in_for_the_study_row():
    # study: rope < rnope < absolute < qknorm < nope. Absolute + QK-norm placed between absolute and
    # nope agrees on every pair; RoPE + QK-norm placed first disagrees on the pairs it jumps.
    val = {"rope": 1.0, "rnope": 1.1, "absolute": 1.2, "nope": 1.5, "qknorm": 0.5, "absolute_qknorm": 1.3}
    readings = {r["variant"]: r for r in qk_norm_readings(_hand_made(val))}
    assert set(readings) == {"qknorm", "absolute_qknorm"}
    assert readings["absolute_qknorm"]["agree"] == 10 and readings["absolute_qknorm"]["pairs"] == 10
    assert readings["qknorm"]["agree"] == 7  # below rope, rnope and absolute: three pairs flip


def test_merge_results_unions_runs_and_recomputes(committed):
    keep = ["rope", "nope"]
    one_sweep = {k: v for k, v in copy.deepcopy(committed).items() if k not in ("parts", "repeated_runs")}
    a = copy.deepcopy(one_sweep) | {"variants": ["rope"]}
    b = copy.deepcopy(one_sweep) | {"variants": ["nope"], "command": "python examples/compare.py --variants nope"}
    a["runs"] = {k: r for k, r in committed["runs"].items() if r["variant"] == "rope"}
    b["runs"] = {k: r for k, r in committed["runs"].items() if r["variant"] == "nope"}
    merged = merge_results([a, b])
    assert merged["variants"] == keep and set(merged["aggregate"]) == set(keep)
    assert merged["aggregate"]["rope"] == committed["aggregate"]["rope"]
    assert [p["command"] for p in merged["parts"]] == [a["command"], b["command"]]
    page = render_markdown(merged, None, [])
    assert "Sweep 1 (rope): Command" in page and "Sweep 2 (nope): Command" in page
    with pytest.raises(ValueError, match="'block_size'"):
        merge_results([a, b | {"block_size": 64}])
    # a run trained again by a later sweep: the first is kept, the difference is reported
    again = copy.deepcopy(a) | {"command": "again"}
    again["runs"]["rope/s0"]["val_loss"] += 1e-5
    twice = merge_results([a, again])
    assert twice["runs"]["rope/s0"]["val_loss"] == a["runs"]["rope/s0"]["val_loss"]
    assert set(twice["repeated_runs"]) == {"rope/s0", "rope/s1", "rope/s2"}
    assert "differ by at most 1.0e-05" in render_markdown(twice, None, [])
    # a merge of a merge keeps one entry per sweep and the runs trained twice
    c = copy.deepcopy(one_sweep) | {"variants": ["alibi"], "command": "third"}
    c["runs"] = {k: r for k, r in committed["runs"].items() if r["variant"] == "alibi"}
    nested = merge_results([twice, c])
    assert [p["command"] for p in nested["parts"]] == [a["command"], "again", "third"]
    assert nested["repeated_runs"] == twice["repeated_runs"] and nested["variants"] == ["rope", "alibi"]


# -- each claim moves with the numbers it reads


def _swap_val(r: dict, a: str, b: str) -> None:
    agg = r["aggregate"]
    agg[a]["val_loss"], agg[b]["val_loss"] = agg[b]["val_loss"], agg[a]["val_loss"]


def _widen_stds(r: dict) -> None:
    for a in r["aggregate"].values():
        a["val_loss"]["std"] *= 3


def _overlap(r: dict) -> None:
    for c in r["comparisons"]:
        c["separated"] = False


def _qknorm_better_than_absolute(r: dict) -> None:
    r["aggregate"]["absolute_qknorm"]["val_loss"]["mean"] = r["aggregate"]["absolute"]["val_loss"]["mean"] + 0.5


def _alibi_degrades_most(r: dict) -> None:
    e = r["aggregate"]["alibi"]["extrapolation"]
    e[max(e, key=int)]["mean"] = e["1"]["mean"] + 5.0  # the largest context


def _rope_loss_rises_with_position(r: dict) -> None:
    a = r["aggregate"]["rope"]
    a["late_loss"]["mean"] = a["early_loss"]["mean"] + 1.0


def _bigger_runs(r: dict) -> None:
    for a in r["aggregate"].values():
        a["params"] *= 4
        a["tokens"] *= 10


CLAIMS = [
    ("Seed spread", _widen_stds),
    ("GPT RoPE vs GPT NoPE", _overlap),
    ("Agreement with the study", lambda r: _swap_val(r, "rope", "nope")),
    ('What "QK Norm" was', _qknorm_better_than_absolute),
    ("Beyond the training context", _alibi_degrades_most),
    ("Position within the context", _rope_loss_rises_with_position),
    ("Scale", _bigger_runs),
]


def _bullet(lines: list[str], title: str) -> str:
    [line] = [x for x in lines if x.startswith(f"- **{title}")]
    return line


@pytest.mark.parametrize(("title", "change"), CLAIMS, ids=[t for t, _ in CLAIMS])
def test_each_claim_changes_when_its_numbers_change(results, title, change):
    before = discussion(results)
    change(results)
    after = discussion(results)
    assert _bullet(after, title) != _bullet(before, title)


def test_the_claims_say_what_the_committed_numbers_show(results):
    sc = study_comparison(results)
    text = "\n".join(discussion(results, sc))
    assert f"{len(sc['agree'])} of 10 pairwise orderings agree" in text
    pair = next(c for c in results["comparisons"] if (c["a"], c["b"]) == ("rope", "nope"))
    assert (
        f"GPT RoPE − GPT NoPE = {fmt_diff(pair['diff'])} (paired over 3 seed(s)): larger than the seed spread" in text
    )
    assert "GPT's learned table cannot be evaluated past 128 positions" in text
    here = "GPT QK Norm < GPT RoPE < GPT RNoPE < GPT < GPT NoPE."
    assert f"; here: {here} {len(sc['agree'])} of 10" in text
    _swap_val(results, "rope", "nope")
    swapped = _bullet(discussion(results), "Agreement with the study")
    assert "; here: GPT QK Norm < GPT NoPE < GPT RNoPE < GPT < GPT RoPE. " in swapped


def test_one_seed_and_missing_variants():
    def agg(mean: float, late: float) -> dict:
        def one(x: float) -> dict:
            return {"mean": x, "std": None, "n": 1}

        return {
            "val_loss": one(mean),
            "tokens": 1000,
            "params": 2e6,
            "extrapolation": {"1": one(mean), "2": None},
            "early_loss": one(2.0),
            "late_loss": one(late),
        }

    r = {
        "seeds": [0],
        "block_size": 16,
        "comparisons": [],
        "aggregate": {"absolute": agg(2.0, 1.0), "alibi": agg(1.5, 3.0)},
    }
    lines = discussion(r)
    assert lines[0] == claims.seed_spread(r) and "One seed per variant" in lines[0]
    assert claims.pair_verdict(r, "rope", "nope") is None and claims.beyond_context(r) is None
    assert f"1 of 2 variants (not for {label('alibi')})" in claims.position_in_context(r)
    assert f"{STUDY['params'] / 2e6:.0f}x fewer parameters" in claims.scale(r)


def test_published_claims_are_checked_seed_by_seed(results):
    results["runs"] = {k: r for k, r in results["runs"].items() if r["variant"] not in CONTENT_DEPENDENT}
    for run in results["runs"].values():  # stand-ins: ALiBi's runs as FoX's, NoPE's as stick-breaking's
        run["variant"] = {"alibi": "fox", "nope": "stickbreaking"}.get(run["variant"], run["variant"])
    lines = claims.published_claims(results)
    runs = {(r["variant"], r["seed"]): r for r in results["runs"].values()}
    fox = [runs[("fox", s)]["val_loss"] for s in results["seeds"]]
    rope = [runs[("rope", s)]["val_loss"] for s in results["seeds"]]
    wins = sum(a < b for a, b in zip(fox, rope, strict=True))
    verdict = "holds" if sum(fox) < sum(rope) else "does not hold"
    assert (
        f"- **Lin et al. 2025 (FoX): the Forgetting Transformer has lower loss than RoPE:** {verdict} here "
        f"(validation loss, mean over seeds: GPT FoX {sum(fox) / 3:.4f} vs GPT RoPE {sum(rope) / 3:.4f}); "
        f"in {wins} of 3 seeds." in lines
    )
    growth = [runs[("stickbreaking", s)]["eval"]["extrapolation"] for s in results["seeds"]]
    growth = [e["16"] - e["1"] for e in growth]
    [sb] = [line for line in lines if "with no positional encoding" in line]
    assert f"in {sum(g < 0 for g in growth)} of 3 seeds" in sb and f"{sum(growth) / 3:+.4f}" in sb
    assert not any("sinks" in line for line in lines)  # variants not run: no claim
    assert set(lines) <= set(discussion(results))


def test_kv_cache_bytes_beside_the_loss(committed):
    # cpu sizes: 4 layers, 4 heads of 32; fp16 keys and values per token
    mha = 4 * 2 * 4 * 32 * 2
    assert kv_cache_bytes(committed, "rope") == kv_cache_bytes(committed, "absolute") == mha == 2048
    assert kv_cache_bytes(committed, "gqa") == mha // 2  # 2 KV heads for 4 query heads
    assert kv_cache_bytes(committed, "mla") == 4 * (128 + 16) * 2  # latent (rank 128) + shared rotary key (16)
    assert kv_cache_bytes(committed, "not-a-variant") is None
    assert re.search(r"^\| GPT MLA \| [^|]+ \| [^|]+ \| 1,152 \|$", study_table(committed), re.M)


def test_kv_cache_bytes_are_read_from_the_runs_summary(results):
    for run in results["runs"].values():
        if run["variant"] == "rope":
            run["kv_cache_bytes"] = 1234  # what the run recorded, not what its layers would give now
    assert kv_cache_bytes(results, "rope") == 1234


def test_results_of_0_2_gain_kv_cache_bytes_when_loaded(committed, results):
    from posenc.studies.table import complete_results

    for run in results["runs"].values():  # 0.2's records: no kv_cache_bytes, one attention, its options flat
        if run["variant"] not in ("rope", "absolute", "nope", "alibi", "gqa", "mla"):
            continue  # a variant 0.2 lacked (one with cached features) keeps its record
        del run["kv_cache_bytes"]
        first = run["architecture"]["layers"][0]["attention"]
        options = {k: v for k, v in first.items() if k != "name"}
        run["architecture"] = {"attention": first["name"], "attention_options": options, "layers": ["P"] * 4}
    results["runs"]["rope/s0"].pop("architecture")  # before architectures were recorded: MHA
    assert kv_cache_bytes(results, "mla") is None
    completed = complete_results(results)
    assert [r["kv_cache_bytes"] for r in completed["runs"].values()] == [
        r["kv_cache_bytes"] for r in committed["runs"].values()
    ]
    assert render_markdown(completed, "results", list(FIGURES)) == PAGE.read_text()

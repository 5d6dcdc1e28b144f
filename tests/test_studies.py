"""The named studies (``compare --study lr | extension | synthetic``) end to end at the 'test'
preset, their pure parts (best rates, ordering changes, the passkey task, the zero-shot
schedules) on hand-made inputs, and pages whose numbers come from each study's json."""

from __future__ import annotations

import itertools
import json
import math
import os
import re

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from posenc import GPT, GPTConfig, jobs
from posenc import sweep as compare
from posenc.encodings.rope_scaling import validate_scaling
from posenc.report.studies import render_study
from posenc.studies import counting, extension, lr, synthetic
from posenc.train import RunSpec


def study(out, data_dir, *flags: str) -> dict:
    argv = ["--preset", "test", "--jobs", "1", "--threads", "1", "--out", str(out), "--data-dir", str(data_dir)]
    assert compare.run([*argv, *flags]) == 0
    name = flags[flags.index("--study") + 1]
    return json.loads((out / f"{name}.json").read_text())


@pytest.fixture(scope="module")
def studies(tmp_path_factory, data_dir):
    out = tmp_path_factory.mktemp("studies")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny models: a second thread only adds contention
    try:
        return {
            "out": out,
            "lr": study(out, data_dir, "--study", "lr", "--variants", "rope", "nope", "--lrs", "1e-3", "6e-3"),
            "extension": study(out, data_dir, "--study", "extension", "--variants", "alibi", "nope"),
            "synthetic": study(out, data_dir, "--study", "synthetic", "--variants", "rope", "nope"),
        }
    finally:
        torch.set_num_threads(threads)


# -- lr -------------------------------------------------------------------------------------------


def test_lr_study_trains_the_grid_then_seeds_at_the_best_rate(studies):
    r = studies["lr"]
    shared = r["shared_lr"]  # the tiny preset's 3e-3 joins the grid: the shared rate is always a candidate
    assert r["grid"] == sorted({1e-3, 6e-3, shared})
    for v in ("rope", "nope"):
        losses = {float(k): x for k, x in r["phase1"][v].items()}
        assert r["best_lr"][v] == min(losses, key=losses.get)
        for lr_ in {shared, r["best_lr"][v]}:
            assert r["runs"][f"{v}/lr{lr_:g}/s1"]["val_loss"] is not None  # phase 2: every seed at both rates
        assert r["at_shared"][v]["val_loss"]["n"] == r["at_best"][v]["val_loss"]["n"] == 2
        assert r["at_best"][v]["val_loss"]["mean"] <= r["at_shared"][v]["val_loss"]["mean"] + 1.0
    # runs at the shared rate are the table's own folders; the others carry their rate
    assert r["runs"][f"rope/lr{shared:g}/s0"]["folder"].endswith("runs/rope-s0")
    assert r["runs"]["rope/lr0.001/s0"]["folder"].endswith("runs/rope-lr0.001-s0")
    spec = RunSpec.load(studies["out"] / "runs" / "rope-lr0.001-s0")
    assert (spec.train.learning_rate, spec.train.min_lr) == (0.001, 0.0001)


def test_lr_study_rerun_trains_nothing(studies, data_dir, capsys):
    again = study(studies["out"], data_dir, "--study", "lr", "--variants", "rope", "nope", "--lrs", "1e-3", "6e-3")
    assert again["phase1"] == studies["lr"]["phase1"]
    counts = re.findall(r": (\d+) run\(s\) to train", capsys.readouterr().out)
    assert len(counts) >= 2 and set(counts) == {"0"}


def test_best_rates_count_a_diverged_run_as_worst():
    losses = {"a": {1.0: 2.0, 2.0: None}, "b": {1.0: 3.0, 2.0: 2.5}, "c": {1.0: None, 2.0: 4.0}}
    assert lr.best_rates(losses) == {"a": 1.0, "b": 2.0, "c": 2.0}


@pytest.mark.parametrize(
    "losses, nxt",
    [
        ({1.0: 3.0, 2.0: 2.0}, 4.0),  # best at the top: one step up
        ({1.0: 2.0, 2.0: 3.0, 4.0: 3.5}, 0.5),  # best at the bottom: one step down
        ({1.0: 3.0, 2.0: 2.0, 4.0: 2.5}, None),  # inside: the answer
        ({1.0: 3.0, 2.0: None}, 0.5),  # the top diverged: the best is the bottom one
        ({1.0: None, 2.0: None}, None),  # nothing finite: no direction
        ({2.0: 1.0}, None),  # one rate: no direction
    ],
)
def test_beyond_edge_steps_past_a_best_rate_on_the_edge(losses, nxt):
    assert lr.beyond_edge(losses) == nxt


def test_lr_study_steps_past_the_edge_until_the_best_is_inside_or_the_steps_run_out(studies):
    r = studies["lr"]
    for v, by_lr in r["phase1"].items():
        rates = sorted(map(float, by_lr))
        past = r["beyond_grid"].get(v, [])
        assert sorted(set(rates) - set(r["grid"])) == past and len(past) <= r["edge_steps"]
        run = sorted(r["grid"])
        for x in sorted(past, key=lambda x: abs(math.log(x / r["shared_lr"]))):  # in the order they ran
            assert lr.beyond_edge({y: by_lr[f"{y:g}"] for y in run}) == pytest.approx(x)
            run.append(x)
        nxt = lr.beyond_edge({y: by_lr[f"{y:g}"] for y in run})
        assert nxt is None or len(past) == r["edge_steps"]


def test_order_changes_names_each_reordered_pair():
    shared = {"a": 1.0, "b": 2.0, "c": 3.0}
    assert lr.order_changes(shared, shared) == []
    assert lr.order_changes(shared, {"a": 1.0, "b": 3.5, "c": 3.0}) == [{"better_at_best": "c", "worse_at_best": "b"}]


def test_a_diverged_run_is_finished_not_resumed(tmp_path):
    assert jobs._finished(tmp_path, jobs.EXIT_NONFINITE, "rope", 0)
    assert (tmp_path / jobs.DIVERGED).exists()
    spec = compare.sweep_from_args(compare.parse_args(["--preset", "test"]), "").spec("rope", 0, tmp_path)
    assert jobs.plan_run(tmp_path, spec) is False
    assert not jobs._finished(tmp_path / "x", 2, "rope", 0)  # a user error still stops the sweep


# -- extension ------------------------------------------------------------------------------------


def test_extension_study_has_every_row_on_the_same_tokens(studies, data_dir):
    r = studies["extension"]
    names = {(row["section"], row["name"]) for row in r["rows"].values()}
    assert names == (
        {("zero-shot", n) for n in extension.ZERO_SHOT}
        | {("fine-tuned", n) for n in extension.FINE_TUNES}
        | {("extrapolating", v) for v in ("alibi", "nope")}
    )
    for row in r["rows"].values():
        assert set(row["loss"]) == {str(m) for m in extension.MULTIPLIERS}
        assert all(math.isfinite(x) for x in row["loss"].values())
        assert row["seeds"] == r["seeds"] and len(r["seeds"]) > 1  # every row at every seed, its mean shown
        for m, x in row["loss"].items():
            assert x == pytest.approx(sum(b[m] for b in row["loss_by_seed"].values()) / len(r["seeds"]))
    by_seed = r["rows"]["zero-shot/plain"]["loss_by_seed"]
    assert by_seed["0"] != by_seed["1"]  # each seed's own RoPE run
    # zero-shot plain is the base run; at 1x every schedule but p-RoPE is the plain model
    plain = r["rows"]["zero-shot/plain"]["loss"]
    for name in ("linear", "yarn", "llama3"):
        assert r["rows"][f"zero-shot/{name}"]["loss"]["1"] == plain["1"]
    # the fine-tunes ran at 4x the context from the base run, each with its schedule
    for (name, scaling), seed in itertools.product(extension.FINE_TUNES.items(), r["seeds"]):
        folder = studies["out"] / "runs" / f"extend-{name}-s{seed}"
        assert RunSpec.load(folder).train.init_from == str(studies["out"] / "runs" / f"rope-s{seed}")
        summary = json.loads((folder / "summary.json").read_text())
        assert summary["config"]["block_size"] == extension.FACTOR * r["block_size"]
        pe = GPTConfig.from_dict(summary["config"]).layers[0].pe
        expected = scaling(r["block_size"])
        if expected is not None:  # stored as the schedule reads it: Hugging Face's defaults filled in
            expected = validate_scaling({"max_position_embeddings": summary["config"]["block_size"]} | expected)
        assert (None if pe.scaling is None else dict(pe.scaling)) == expected
        assert summary["steps"] == r["finetune"]["steps"]
        assert RunSpec.load(folder).train.data_dir == str(data_dir)  # compare's data, as every run gets


def test_every_run_gets_compares_data_and_device(tmp_path):
    sweep = compare.sweep_from_args(compare.parse_args(["--data-files", "a.txt", "b.txt", "--device", "cpu"]), "")
    spec = sweep.spec("rope", 0, tmp_path)
    assert (spec.train.data_files, spec.train.dataset, spec.train.device) == (("a.txt", "b.txt"), "files", "cpu")
    assert spec.train.out_dir == str(tmp_path) and spec.train.seed == 0


def test_the_real_study_evaluates_on_every_thread_unless_told():
    """It trains nothing, so it runs one evaluation at a time here: one job, torch's default threads."""
    sweep = compare.sweep_from_args(compare.parse_args(["--study", "real", "--device", "cpu"]), "")
    assert (sweep.jobs, sweep.threads) == (1, None)
    told = compare.sweep_from_args(compare.parse_args(["--study", "real", "--device", "cpu", "--threads", "1"]), "")
    assert told.threads == 1
    table = compare.sweep_from_args(compare.parse_args(["--device", "cpu"]), "")  # trains runs side by side
    assert table.jobs == min(4, os.cpu_count() or 1)


@pytest.mark.parametrize("name", sorted(extension.ZERO_SHOT))
def test_zero_shot_schedules_change_the_model_past_the_context(name):
    T = 8
    config = GPTConfig.from_preset("tiny", pe="rope", block_size=T)
    torch.manual_seed(0)
    model = GPT(config).eval()
    with torch.no_grad():  # sharper attention than at initialisation, so positions matter to the logits
        for pname, p in model.named_parameters():
            if "c_attn" in pname:
                p.mul_(8)
    idx = torch.randint(0, config.vocab_size, (1, 2 * T))
    changes = extension.ZERO_SHOT[name](2, T)
    scaled = GPT(config.with_encoding("rope", **changes) if changes else config).eval()
    scaled.load_state_dict(model.state_dict())
    with torch.no_grad():
        diff = (model(idx)[0] - scaled(idx)[0]).abs().max().item()
    if name == "plain":
        assert diff == 0
    else:
        assert diff > 1e-5, f"{name} at 2x the context left the model unchanged"


# -- synthetic ------------------------------------------------------------------------------------


@settings(max_examples=30, deadline=None)
@given(batch=st.integers(1, 5), length=st.integers(6, 80), seed=st.integers(0, 1000), lo=st.floats(0, 0.9))
def test_passkey_batch_plants_one_key_and_asks_for_it(batch, length, seed, lo):
    x, y, depth = synthetic.passkey_batch(batch, length, torch.Generator().manual_seed(seed), (lo, lo + 0.1))
    k = synthetic.KEY_LEN
    assert x.shape == y.shape == (batch, length)
    for row in range(batch):
        marks = (x[row] == synthetic.KEY_MARK).nonzero().flatten().tolist()
        assert len(marks) == 1 and x[row, -k - 1] == synthetic.QUERY_MARK
        value = x[row, marks[0] + 1 : marks[0] + 1 + k]
        assert torch.equal(x[row, -k:], value) and bool((value < synthetic.VALUE_VOCAB).all())
        # only the value is scored, predicted from the query marker on
        assert torch.equal(y[row, -k - 1 : -1], value) and bool((y[row, : -k - 1] == -1).all()) and y[row, -1] == -1
        room = length - 2 * (k + 1)  # the key starts at one of room + 1 slots: depth is rounded to 1/room
        slack = 0.5 / max(room, 1) + 1e-6
        assert lo - slack <= depth[row] <= lo + 0.1 + slack or room == 0  # no room: the key is at depth 0


def test_passkey_needs_room():
    with pytest.raises(ValueError, match="at least 6 tokens, got length=5"):
        synthetic.passkey_batch(1, 5, torch.Generator())


def run_program(tokens: list[int]) -> int:
    """An independent interpreter of a counting program: the printed variable's value."""
    values, i = {}, 0
    while tokens[i] != counting.PRINT:
        if tokens[i] == counting.PASS:
            i += 1
            continue
        var, op = tokens[i], tokens[i + 1]
        assert var < counting.N_VARS and op in (counting.SET, counting.INC)
        assert op == counting.SET or var in values  # only a variable already set is incremented
        values[var] = 0 if op == counting.SET else values[var] + 1
        assert values[var] <= counting.MAX_VAL
        i += 2
    assert i == len(tokens) - 3
    return values[tokens[i + 1]]


@settings(max_examples=30, deadline=None)
@given(batch=st.integers(1, 4), length=st.integers(counting.MIN_LEN, 300), seed=st.integers(0, 1000))
def test_counting_programs_are_answered_by_their_own_count(batch, length, seed):
    x, y = counting.counting_batch(batch, length, torch.Generator().manual_seed(seed))
    assert x.shape == y.shape == (batch, length)
    for row in x.tolist():
        assert row[-1] == counting.VALUE0 + run_program(row)
    assert torch.equal(y[:, -2], x[:, -1]) and bool((y[:, :-2] == -1).all()) and bool((y[:, -1] == -1).all())
    with pytest.raises(ValueError, match=f"at least {counting.MIN_LEN} tokens, got length=5"):
        counting.counting_batch(1, 5, torch.Generator())


def test_counting_majority_floor_is_the_most_common_answer():
    gen = torch.Generator().manual_seed(0)
    answers = [run_program(counting._program(64, gen)[0]) for _ in range(500)]
    assert counting.majority_accuracy(64, samples=500) == max(answers.count(a) for a in set(answers)) / 500


def test_the_probe_is_learnable(one_thread):
    # a small NoPE model learns retrieval at the training length well above chance (1/256)
    probe = synthetic.ProbeConfig(train_len=16, steps=200, n_embd=32, batch_size=32, test_per_cell=32, depth_bins=2)
    model, info = synthetic.train_probe("nope", probe, 0)
    grid = synthetic.accuracy_grid(model, probe, 0)
    assert len(grid) == len(probe.multipliers) and all(len(row) == probe.depth_bins for row in grid)
    assert sum(grid[0]) / probe.depth_bins > 0.5, (info, grid)


def test_synthetic_study_records_each_run_and_continues(studies, data_dir, capsys):
    r = studies["synthetic"]
    assert set(r["runs"]) == {f"{v}/s{s}" for v in ("rope", "nope") for s in (0, 1)}
    assert set(r["counting"]["runs"]) == set(r["runs"]) and len(r["counting"]["majority"]) == len(
        r["probe"]["multipliers"]
    )
    saved = studies["out"] / "synthetic" / "rope-s0.json"
    assert json.loads(saved.read_text())["accuracy"] == r["runs"]["rope/s0"]["accuracy"]
    again = study(studies["out"], data_dir, "--study", "synthetic", "--variants", "rope", "nope")
    assert again["runs"] == r["runs"]  # kept, not retrained


def test_synthetic_probes_in_worker_processes_equal_those_trained_in_process(studies, data_dir, tmp_path):
    r = studies["synthetic"]  # --jobs 1 --threads 1
    workers = study(tmp_path, data_dir, "--study", "synthetic", "--variants", "rope", "nope", "--jobs", "2")
    assert workers["environment"]["jobs"] == 2 and list(workers["runs"]) == list(r["runs"])
    drop = lambda run: {k: x for k, x in run.items() if k != "train_time_s"}  # noqa: E731
    assert {k: drop(x) for k, x in workers["runs"].items()} == {k: drop(x) for k, x in r["runs"].items()}


# -- pages -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["lr", "extension", "synthetic"])
def test_pages_come_from_the_json(studies, tmp_path, kind):
    results = studies[kind]
    page = tmp_path / f"results-{kind}.md"
    render_study(results, page, figures=False)
    text = page.read_text()
    assert results["command"] in text
    assert json.loads((tmp_path / f"results-{kind}" / f"{kind}.json").read_text()) == results
    if kind == "lr":
        best = results["best_lr"]["rope"]
        assert re.search(rf"\| GPT RoPE \|.*\*\*{results['phase1']['rope'][f'{best:g}']:.4f}\*\*", text)
    elif kind == "extension":
        assert f"{results['rows']['fine-tuned/yarn']['loss']['4']:.4f}" in text
    else:
        assert "Kazemnejad et al. 2023: NoPE generalises better than RoPE" in text
        assert "## Counting" in text and "| *the most common answer, always* |" in text


def test_a_study_page_renders_from_its_json_alone(studies, tmp_path, capsys):
    source = studies["out"] / "lr.json"
    assert compare.run(["--render", str(tmp_path / "lr.md"), "--from", str(source)]) == 0
    render_study(json.loads(source.read_text()), tmp_path / "direct.md")  # as on disk: later tests rewrite it
    assert (tmp_path / "lr.md").read_text() == (tmp_path / "direct.md").read_text().replace("direct/", "lr/")
    both = [str(source), str(studies["out"] / "synthetic.json")]
    assert compare.run(["--render", str(tmp_path / "x.md"), "--from", *both]) == 2
    assert "merges table results only" in capsys.readouterr().err


def test_pages_change_when_the_json_does(studies, tmp_path):
    results = json.loads(json.dumps(studies["extension"]))
    results["rows"]["zero-shot/yarn"]["loss"]["16"] = 0.1234
    render_study(results, tmp_path / "p.md", figures=False)
    assert re.search(
        r"zero-shot schedule: yarn \|.*\*\*0\.1234 ± [\d.]+\*\* \|$", (tmp_path / "p.md").read_text(), re.M
    )


def test_lr_page_says_when_the_one_seed_best_rate_is_worse_over_seeds(studies, tmp_path):
    results = json.loads(json.dumps(studies["lr"]))
    v = "rope"
    assert results["best_lr"][v] != results["shared_lr"]  # the tiny preset's answer: two different tables
    render_study(results, tmp_path / "a.md", figures=False)
    assert "one seed's choice does not hold" not in (tmp_path / "a.md").read_text()
    results["at_best"][v]["val_loss"]["mean"] = results["at_shared"][v]["val_loss"]["mean"] + 0.1
    render_study(results, tmp_path / "b.md", figures=False)
    assert "one seed's choice does not hold: GPT RoPE (seeds " in (tmp_path / "b.md").read_text()


def test_lr_no_train_reports_what_has_finished(studies, data_dir, tmp_path):
    # in the study's own folder: every run finished, the same answer as the full study
    again = study(
        studies["out"], data_dir, "--study", "lr", "--variants", "rope", "nope", "--lrs", "1e-3", "6e-3", "--no-train"
    )
    assert again["phase1"] == studies["lr"]["phase1"] and again["best_lr"] == studies["lr"]["best_lr"]
    # in an empty folder: nothing is trained, every run is pending, and the page says so
    empty = study(tmp_path / "new", data_dir, "--study", "lr", "--variants", "rope", "--lrs", "1e-3", "--no-train")
    assert not (tmp_path / "new" / "runs").exists()
    assert all(r["pending"] for r in empty["runs"].values()) and empty["best_lr"] == {}
    assert empty["at_shared"] is None and empty["at_best"] is None
    render_study(empty, tmp_path / "lr.md", figures=False)
    assert "**Phase 1 is not finished:** 2 of 2 runs are pending" in (tmp_path / "lr.md").read_text()


def test_no_train_is_for_the_lr_study():
    with pytest.raises(SystemExit):
        compare.parse_args(["--study", "synthetic", "--no-train"])


@pytest.mark.parametrize("variant", ["rope", "absolute", "rnope_swa_sinks", "gqa"])
def test_probe_models_are_the_flat_configs_of_before(variant):
    probe = synthetic.PROBE_PRESETS["cpu"]
    sizes = dict(n_layer=probe.n_layer, n_head=probe.n_head, n_embd=probe.n_embd, block_size=probe.train_len)
    flat = GPTConfig(pe=variant, vocab_size=synthetic.VOCAB, bias=False, dropout=0.0, **sizes)
    assert synthetic.build_model(variant, probe, seed=0).config == flat

"""posenc.sweep (``posenc compare``, examples/compare.py) end to end at the 'test' preset (tiny model, 6 steps, every default variant x 2 seeds):
same data order and shared initialisation across variants, continuation of an interrupted sweep
(bitwise, CPU fp32), the evaluation beyond the training context, and a rendered page whose
numbers come from results.json."""

from __future__ import annotations

import json
import re
import shutil
import statistics
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from posenc import GPT
from posenc import sweep as compare
from posenc.config import GPTConfig
from posenc.data import prepare
from posenc.train import RunSpec, train
from posenc.variants import label

ROOT = Path(__file__).resolve().parent.parent
SEEDS = (0, 1)
VARIANTS = compare.DEFAULT_VARIANTS


@pytest.fixture(scope="module")
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny matmuls: threads only add contention on a shared 2-core machine
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def swept(tmp_path_factory, one_thread):
    root = tmp_path_factory.mktemp("compare")
    data = prepare(root / "data", source="embedded", tokenizer="bytes", progress=False)
    out = root / "out"
    argv = [
        "--preset",
        "test",
        "--jobs",
        "1",
        "--threads",
        "1",
        "--out",
        str(out),
        "--data-dir",
        str(data),
        "--render",
        str(root / "docs" / "results.md"),
    ]
    assert compare.run(argv) == 0
    return {
        "root": root,
        "out": out,
        "data": data,
        "argv": argv,
        "results": json.loads((out / "results.json").read_text()),
    }


def test_every_variant_and_seed_ran_and_learned(swept):
    results = swept["results"]
    assert results["variants"] == list(VARIANTS) and results["seeds"] == list(SEEDS)
    assert set(results["runs"]) == {f"{v}/s{s}" for v in VARIANTS for s in SEEDS}
    for key, run in results["runs"].items():
        curve = run["curve"]
        assert curve[0]["step"] == 0 and curve[-1]["val_loss"] == run["val_loss"], key
        assert run["val_loss"] < curve[0]["val_loss"], f"{key}: validation loss did not fall"
    # the variants are what their names say
    runs = results["runs"]
    arch = {key: run["architecture"] for key, run in runs.items()}

    def table(key):  # the input table's name
        return (arch[key]["embedding"]["input_pe"] or {}).get("name")

    def layers(key, part, field):
        return {layer[part][field] for layer in arch[key]["layers"]}

    assert (table("absolute_qknorm/s0"), layers("absolute_qknorm/s0", "attention", "qk_norm")) == ("absolute", {"rms"})
    assert layers("absolute_qknorm/s0", "pe", "name") == {"nope"}
    assert (table("nope_qknorm/s0"), layers("nope_qknorm/s0", "attention", "qk_norm")) == (None, {"rms"})
    assert layers("rope/s0", "attention", "qk_norm") == {None} and table("sinusoidal/s0") == "sinusoidal"
    assert layers("mla/s0", "attention", "name") == {"mla"} and layers("gqa/s0", "attention", "n_kv_head") == {2}
    assert runs["rnope/s0"]["layer_codes"] == "RRRN" and runs["qknorm/s0"]["qk_norm"] is True
    assert results["environment"]["torch"] == torch.__version__


def test_same_data_order_and_shared_initialisation_across_variants(swept):
    """Every variant of a seed ran the same training configuration (hence the same batches, keyed
    by seed and step), and the script's ``torch.manual_seed(seed); GPT(config)`` gives every
    variant the same initial values for every parameter the architectures share."""
    runs = swept["results"]["runs"]
    wte = {}
    for seed in SEEDS:
        configs = {v: json.loads((Path(runs[f"{v}/s{seed}"]["folder"]) / "summary.json").read_text()) for v in VARIANTS}
        train = {v: {k: x for k, x in c["train_config"].items() if k != "out_dir"} for v, c in configs.items()}
        assert all(t == train["rope"] for t in train.values())
        assert train["rope"]["seed"] == seed
        params = {}
        for v, c in configs.items():
            torch.manual_seed(seed)
            params[v] = dict(GPT(GPTConfig.from_dict(c["config"])).named_parameters())
        for v, p in params.items():
            shared = {n for n in set(p) & set(params["rope"]) if p[n].shape == params["rope"][n].shape}
            assert {"wte.weight", "blocks.0.attn.c_proj.weight", "blocks.3.mlp.c_proj.weight"} <= shared, v
            if v not in ("mla", "gqa"):  # their q/k/v projections have other shapes (MLA: other names)
                assert "blocks.0.attn.c_attn.weight" in shared, v
            for name in shared:
                assert torch.equal(p[name], params["rope"][name]), f"{v} seed {seed}: {name} differs from rope's"
        wte[seed] = params["rope"]["wte.weight"]
    assert not torch.equal(wte[SEEDS[0]], wte[SEEDS[1]])  # control: another seed starts elsewhere


def test_extrapolation_and_per_position(swept):
    results = swept["results"]
    T = results["block_size"]
    for key, run in results["runs"].items():
        ext = run["eval"]["extrapolation"]
        assert list(ext) == ["1", "2", "4", "8", "16"], key
        if (run["architecture"]["embedding"]["input_pe"] or {}).get("name") == "absolute":  # the table ends at T
            assert ext["1"] is not None and all(ext[m] is None for m in ("2", "4", "8", "16")), key
        else:  # the sinusoidal table, RoPE, ALiBi and NoPE are all evaluated at every length
            assert all(x is not None and 0 < x < 10 for x in ext.values()), key
        assert len(run["eval"]["per_position"]) == T
    agg = results["aggregate"]["sinusoidal"]["extrapolation"]
    assert agg["16"]["n"] == len(SEEDS)


def test_outputs_and_rendered_numbers_come_from_the_json(swept):
    out, root, results = swept["out"], swept["root"], swept["results"]
    for name in ("curves.png", "extrapolation.png", "per_position.png"):
        for folder in (out, root / "docs" / "results"):
            assert (folder / name).stat().st_size > 1000, folder / name
    table = (out / "table.md").read_text().splitlines()
    assert table[0] == "| Model | Train Loss | Validation Loss | KV cache (bytes/token) |"
    rows = {line.split("|")[1].strip(): line for line in table[2:] if line.startswith("| ")}
    assert set(rows) == {label(v) for v in VARIANTS}

    page = (root / "docs" / "results.md").read_text()
    # recompute the rope row from the per-run numbers: mean and sample std over seeds
    vals = [results["runs"][f"rope/s{s}"]["val_loss"] for s in SEEDS]
    expected = f"{statistics.fmean(vals):.4f} ± {statistics.stdev(vals):.4f}"
    assert re.search(rf"^\| GPT RoPE \| [^|]+ \| {re.escape(expected)} \| [0-9,]+ \|$", page, re.M), expected
    assert "4.2067" in page and "3.9634" in page  # the study's table, beside ours
    assert "smoke test" in page  # a small preset is labelled as such
    assert "![length extrapolation](results/extrapolation.png)" in page
    assert json.loads((root / "docs" / "results" / "results.json").read_text()) == results

    # rendering a changed JSON changes the page: nothing in it is fixed text
    changed = json.loads(json.dumps(results))
    changed["aggregate"]["rope"]["val_loss"]["mean"] = 1.2345
    path = root / "changed.json"
    path.write_text(json.dumps(changed))
    assert compare.run(["--render", str(root / "changed.md"), "--from", str(path)]) == 0
    assert re.search(r"^\| GPT RoPE \| [^|]+ \| 1\.2345 ± ", (root / "changed.md").read_text(), re.M)


def test_rerun_skips_finished_runs_and_resumes_an_interrupted_one(swept, one_thread):
    out, results = swept["out"], swept["results"]
    folder = Path(results["runs"]["alibi/s1"]["folder"])
    spec = RunSpec.load(folder)
    shutil.rmtree(folder)
    # an interrupted run: a checkpoint at step 3 and no summary
    assert train(spec.model, spec.train, stop_at=3, progress=False, log=lambda *a: None)["stopped"]
    assert not (folder / "summary.json").exists()

    assert compare.run(swept["argv"]) == 0
    again = json.loads((out / "results.json").read_text())
    assert again["runs_trained"] == 1  # only the interrupted run; the other 17 were skipped
    # CPU fp32 resume is exact: the same curve and losses as the uninterrupted run
    for key in ("curve", "val_loss", "train_loss"):
        assert again["runs"]["alibi/s1"][key] == results["runs"]["alibi/s1"][key], key
    assert again["runs"]["rope/s0"]["eval"] == results["runs"]["rope/s0"]["eval"]


def test_a_folder_trained_with_other_settings_is_refused(swept, capsys):
    argv = [
        "--preset",
        "quick",
        "--variants",
        "rope",
        "--seeds",
        "0",
        "--jobs",
        "1",
        "--out",
        str(swept["out"]),
        "--data-dir",
        str(swept["data"]),
    ]
    assert compare.run(argv) == 2
    err = capsys.readouterr().err
    assert "trained with other settings" in err and "\n  model.n_embd: 32 != 128\n" in err, err  # one line per field


def test_from_needs_render():
    with pytest.raises(SystemExit):
        compare.parse_args(["--from", "results.json"])


def test_the_example_script_renders_the_committed_results(tmp_path):
    """examples/compare.py is the same command: it renders docs/results/results.json into a page."""
    page = tmp_path / "results.md"
    out = subprocess.run(
        [
            sys.executable,
            str(ROOT / "examples" / "compare.py"),
            "--render",
            str(page),
            "--from",
            str(ROOT / "docs" / "results" / "results.json"),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    assert "| GPT RoPE |" in page.read_text() and (tmp_path / "results" / "extrapolation.png").stat().st_size > 1000

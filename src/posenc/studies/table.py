"""The table study: every variant under identical conditions, evaluated, into results.json.

Each (variant, seed) is one run -- the same data order, the same seeds and, wherever two
architectures share a parameter (name and shape), the same initial values (the model seeds each
weight by (seed, parameter name)) -- trained in this process or, with ``--jobs`` > 1, in worker
processes. Each finished run is evaluated by :func:`posenc.evaluate.evaluate_checkpoint` (loss at
1x-16x the context, per-position loss); :mod:`posenc.report` turns results.json into tables,
figures and the docs page. A sweep that is interrupted continues where it stopped: finished runs
(summary.json) are kept, unfinished runs are resumed (from their checkpoint, or from step 0).

Run folder: ``<out>/runs/<variant>-s<seed>/`` (a train run folder with its ``run.json``, plus
``eval.json``).
"""

from __future__ import annotations

import datetime
import json
import time
from pathlib import Path
from typing import Any

from posenc.evaluate import MULTIPLIERS, evaluate_checkpoint
from posenc.io import atomic_write
from posenc.jobs import Sweep, plan_run
from posenc.report import STUDY, aggregate, compare_pairs, render_page, study_table, write_outputs
from posenc.studies.common import environment, read_curve
from posenc.train.run import RunSpec
from posenc.train.runlog import read_summary
from posenc.variants import CONTENT_DEPENDENT

RESULTS_FORMAT = 1
#: The summary fields each run of results.json carries.
RUN_FIELDS: tuple[str, ...] = (
    "train_loss",
    "val_loss",
    "tokens",
    "steps",
    "params",
    "wall_time_s",
    "train_time_s",
    "samples",
    "layer_codes",
    "qk_norm",
    "kv_cache_bytes",
    "architecture",
)


def complete_results(results: dict[str, Any]) -> dict[str, Any]:
    """``results`` with each run's ``kv_cache_bytes`` (fp16 keys and values one token adds, all layers)
    where it lacks them: results.json of posenc 0.2 predates the summary recording them. Each is asked of
    the layers the run recorded (0.2's records: one attention for every layer, its options flat; runs
    from before architectures were recorded: multi-head attention with the sweep's sizes)."""
    runs = {
        k: r if r.get("kv_cache_bytes") is not None else r | {"kv_cache_bytes": _kv_bytes(results, r)}
        for k, r in results["runs"].items()
    }
    return results | {"runs": runs}


def _kv_bytes(results: dict[str, Any], run: dict[str, Any]) -> int:
    from posenc.attention import attention_config
    from posenc.encodings.base import ModelDims
    from posenc.layer import LayerSpec

    mc = results["model_config"]
    dims = ModelDims(n_embd=mc["n_embd"], n_head=mc["n_head"], block_size=mc["block_size"])
    arch = run.get("architecture") or {"attention": "mha", "layers": [None] * mc["n_layer"]}
    if arch["layers"] and isinstance(arch["layers"][0], dict) and "attention" in arch["layers"][0]:
        layers = [LayerSpec(attention=layer["attention"], pe=layer["pe"]) for layer in arch["layers"]]
        return sum(layer.cache_bytes_per_token(dims) for layer in layers)
    options = {k: v for k, v in (arch.get("attention_options") or {}).items() if v is not None}
    attention = attention_config(arch["attention"], **options)
    return len(arch["layers"]) * attention.cache_bytes_per_token(dims)


def collect(
    folders: dict[tuple[str, int], Path], evals: dict[tuple[str, int], dict[str, Any]]
) -> dict[str, dict[str, Any]]:
    """results.json's runs: each run's summary fields, its identity, curve and evaluation."""
    runs = {}
    for (v, s), folder in folders.items():
        summary = read_summary(folder)
        spec = RunSpec.load(folder)
        runs[f"{v}/s{s}"] = {
            "variant": v,
            "seed": s,
            "folder": str(folder),
            "identity": None if spec is None else spec.identity(),
            **{k: summary.get(k) for k in RUN_FIELDS},
            "curve": read_curve(folder),
            "eval": evals[(v, s)],
        }
    return runs


def run(sweep: Sweep) -> int:
    """``compare`` (``--study table``): train what is missing, evaluate every run, write results.json."""
    variants, seeds, preset = list(sweep.variants or DEFAULT_VARIANTS), list(sweep.seeds), sweep.preset
    jobs, folders = [], {}
    for v in variants:
        for s in seeds:
            folders[(v, s)] = folder = sweep.run_dir(v, s)
            if plan_run(folder, sweep.spec(v, s, folder)):
                jobs.append((v, s, folder))
    print(
        f"[compare] preset {sweep.name}: {len(variants)} variants x {len(seeds)} seeds; {len(jobs)} run(s) to train, "
        f"{sweep.jobs} at a time; results in {sweep.out}",
        flush=True,
    )
    evals: dict[tuple[str, int], dict[str, Any]] = {}

    def evaluate(v: str, s: int) -> None:
        if read_summary(folders[(v, s)]) is None:
            raise ValueError(f"{v} seed {s}: the loss became non-finite (see {folders[(v, s)] / 'train.out'})")
        evals[(v, s)] = evaluate_checkpoint(folders[(v, s)], windows=preset.eval_windows, device=sweep.device)
        ext = evals[(v, s)]["extrapolation"]
        print(
            f"[compare] {v} seed {s}: val {read_summary(folders[(v, s)])['val_loss']:.4f}; by context "
            + ", ".join(f"{m}x {'n/a' if x is None else f'{x:.4f}'}" for m, x in ext.items()),
            flush=True,
        )

    t0 = time.time()
    if code := sweep.train(jobs, evaluate):
        return code
    wall = time.time() - t0
    for v, s in folders:
        if (v, s) not in evals:
            evaluate(v, s)
    results = _results(sweep, variants, seeds, folders, evals, wall, len(jobs))
    atomic_write(sweep.out / "results.json", json.dumps(results, indent=1))
    write_outputs(results, sweep.out)
    print(f"[compare] wrote {sweep.out / 'results.json'}, table.md, report.md and figures in {wall / 60:.1f} min")
    print(study_table(results))
    if sweep.render:
        render_page(results, Path(sweep.render))
        print(f"[compare] wrote {sweep.render}")
    return 0


def _results(sweep: Sweep, variants, seeds, folders, evals, wall: float, trained: int) -> dict[str, Any]:
    runs = collect(folders, evals)
    first = read_summary(folders[(variants[0], seeds[0])])
    e0 = evals[(variants[0], seeds[0])]
    results = {
        "format": RESULTS_FORMAT,
        "created": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "command": sweep.command,
        "preset": sweep.name,
        "variants": variants,
        "seeds": seeds,
        "config": sweep.preset.to_dict() | {"multipliers": list(MULTIPLIERS)},
        "train_config": first["train_config"],
        "model_config": first["config"],
        "block_size": first["config"]["block_size"],
        "eval_tokens": e0["eval_tokens"],
        "per_position_long_width": e0["per_position_long_width"],
        "environment": environment(sweep.device, sweep.jobs, sweep.threads),
        "wall_time_s": wall,
        "runs_trained": trained,
        "study": STUDY,
        "runs": runs,
    }
    results["aggregate"] = aggregate(runs, variants, seeds)
    results["comparisons"] = compare_pairs(runs, variants, seeds)
    return complete_results(results)  # a run folder of 0.2 kept by the sweep: its summary lacks kv_cache_bytes


#: The variants a sweep trains by default, the rows of docs/results.md: the study's five, four controls,
#: the attentions (MLA, GQA), the score biases (T5, KERPLE, FIRE), both QK-norm readings with
#: the L2 norm, and the windowed hybrid and content-dependent positions (FoX, CoPE, stick-breaking,
#: sinks) (names of posenc.variants).
DEFAULT_VARIANTS: tuple[str, ...] = (
    "absolute",
    "nope",
    "rope",
    "qknorm",
    "rnope",
    "sinusoidal",
    "alibi",
    "absolute_qknorm",
    "nope_qknorm",
    "mla",
    "gqa",
    "t5",
    "kerple",
    "fire",
    "qknorm_l2",
    "absolute_qknorm_l2",
    *CONTENT_DEPENDENT,
)

"""Train every positional-encoding variant under identical conditions, evaluate, write results.json.

Each (variant, seed) is one ``posenc train`` run -- the same data order, the same seeds and,
wherever two architectures share a parameter (name and shape), the same initial values (the model seeds each
weight by (seed, parameter name)) -- trained in this process or, with ``--jobs`` > 1, in worker
processes. Each finished run is evaluated by :func:`posenc.evaluate.evaluate_checkpoint` (loss at
1x-16x the context, per-position loss); :mod:`posenc.report` turns results.json into tables,
figures and the docs page. A sweep that is interrupted continues where it stopped: finished runs
(summary.json) are kept, unfinished runs with a checkpoint are resumed.

Run folder: ``<out>/runs/<variant>-s<seed>/`` (a train run folder, plus ``compare_run.json``, the
flags it was started with, and ``eval.json``).
"""

from __future__ import annotations

import argparse
import datetime
import importlib
import json
import os
import platform
import shlex
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import torch

from posenc.config import VARIANTS
from posenc.evaluate import MULTIPLIERS, evaluate_checkpoint
from posenc.io import atomic_write
from posenc.jobs import plan_run, train_jobs
from posenc.report import STUDY, aggregate, compare_pairs, merge_results, render_page, study_table, write_outputs
from posenc.studies import STUDIES
from posenc.train.args import guarded
from posenc.train.config import resolve_device
from posenc.train.runlog import read_log, read_summary

RESULTS_FORMAT = 1
#: The variants a sweep trains by default, the rows of docs/results.md: the study's five, four controls,
#: the attentions (MLA, GQA), the score biases (T5, KERPLE, FIRE) and both QK-norm readings with
#: the L2 norm (names of posenc.VARIANTS or of FLAG_VARIANTS).
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
)

#: Variants defined by train flags rather than by a name of posenc.VARIANTS: attention choices
#: (with RoPE) and the L2 form of QK-norm (Henry et al. 2020) for both readings of the study's row.
FLAG_VARIANTS: dict[str, tuple[str, ...]] = {
    "gqa": ("--pe", "rope", "--n-kv-head", "2"),  # 2 KV heads for 4 query heads at the cpu and owt-16m widths
    "mla": ("--pe", "rope", "--attention", "mla"),  # MLA + decoupled RoPE, default ranks
    "qknorm_l2": ("--pe", "qknorm", "--qk-norm-type", "l2"),
    # RNoPE whose RoPE layers attend within a window of a quarter of the cpu context (128)
    "rnope_swa": ("--layer-pattern", "rrrN", "--sliding-window", "32"),
    "absolute_qknorm_l2": ("--pe", "absolute_qknorm", "--qk-norm-type", "l2"),
}

#: Sweep presets: a train preset, flags on top of it, the seeds, and the evaluation (``eval_windows``
#: validation windows of max(multipliers) x block_size tokens). ``cpu``: 16 variants x 3 seeds in
#: about two hours on 2 cores (a run is 130-150 s there); ``quick``: a smoke test in minutes; ``test``: the unit tests';
#: ``owt-16m``: the study.
SWEEP_PRESETS: dict[str, dict[str, Any]] = {
    "cpu": dict(
        train_preset="cpu",
        train_args=("--max-iters", "800", "--batch-size", "16", "--eval-interval", "100", "--eval-iters", "16"),
        seeds=(0, 1, 2),
        eval_windows=16,
    ),
    "quick": dict(
        train_preset="cpu",
        train_args=("--max-iters", "100", "--batch-size", "16", "--eval-interval", "25", "--eval-iters", "8"),
        seeds=(0, 1),
        eval_windows=8,
    ),
    "owt-16m": dict(train_preset="owt-16m", train_args=(), seeds=(0, 1, 2), eval_windows=16),
    "test": dict(
        train_preset="tiny",
        train_args=(
            "--max-iters",
            "6",
            "--batch-size",
            "4",
            "--grad-accum",
            "1",
            "--eval-interval",
            "3",
            "--eval-iters",
            "2",
            "--num-samples",
            "1",
            "--sample-tokens",
            "8",
        ),
        seeds=(0, 1),
        eval_windows=2,
    ),
}


def parser(prog: str | None = None) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=prog,
        description="Train every positional-encoding variant with the same data, seeds and initialisation; "
        "write tables, plots and results.json; optionally render docs/results.md.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument(
        "--preset",
        choices=sorted(SWEEP_PRESETS),
        default=None,
        help="sweep preset; default: owt-16m on CUDA, cpu otherwise",
    )
    p.add_argument(
        "--study",
        choices=STUDIES,
        default="table",
        help="table: every variant, the study's table; lr: learning-rate sweep; extension: RoPE context "
        "extension; synthetic: passkey retrieval by length and depth (each writes <out>/<study>.json)",
    )
    p.add_argument("--quick", action="store_true", help="the 'quick' preset: a smoke test in minutes")
    p.add_argument(
        "--variants",
        nargs="+",
        choices=sorted(VARIANTS) + sorted(FLAG_VARIANTS),
        default=None,
        help=f"default: {' '.join(DEFAULT_VARIANTS)}",
    )
    p.add_argument("--seeds", nargs="+", type=int, default=None, help="default: the preset's")
    p.add_argument(
        "--lrs", nargs="+", type=float, default=None, help="--study lr: the grid (default 1e-3 2e-3 4e-3 8e-3)"
    )
    p.add_argument(
        "--lr-edge-steps",
        type=int,
        default=2,
        metavar="N",
        help="--study lr: when a variant's best rate is the highest or lowest it has run, try the rate 2x past it, "
        "up to N times (default 2; 0 keeps to the grid)",
    )
    p.add_argument(
        "--no-train",
        action="store_true",
        help="--study lr: write lr.json and the page from the runs already finished (the others pending), training none",
    )
    p.add_argument("--out", default=None, help="results folder; default: out/compare-<preset>")
    p.add_argument("--device", default=None, help="device of the runs and of the evaluation")
    p.add_argument("--data-dir", default=None, help="prepared shards, passed to every run")
    p.add_argument("--data-files", nargs="+", default=None, help="local corpus files, passed to every run")
    p.add_argument(
        "--jobs",
        type=int,
        default=None,
        help="runs trained at once, each in its own process; default: 1 on CUDA, else min(4, CPUs). 1 trains in this process",
    )
    p.add_argument("--threads", type=int, default=None, help="torch threads per run; default: CPUs // jobs")
    p.add_argument(
        "--render",
        default=None,
        metavar="MD",
        help="write this markdown page (e.g. docs/results.md), its figures and a copy of results.json in <page stem>/ beside it",
    )
    p.add_argument(
        "--from",
        dest="from_json",
        default=None,
        nargs="+",
        metavar="JSON",
        help="with --render: render existing results.json file(s) instead of running a sweep; several are "
        "merged (sweeps of the same preset, e.g. new variants trained later). A study's json (lr.json, "
        "extension.json, synthetic.json) renders that study's page",
    )
    return p


def parse_args(argv: list[str] | None = None, prog: str | None = None) -> argparse.Namespace:
    p = parser(prog)
    args = p.parse_args(argv)
    if args.quick and args.preset not in (None, "quick"):
        p.error(f"--quick is the 'quick' preset; drop --preset {args.preset}")
    if args.from_json and not args.render:
        p.error("--from needs --render")
    if args.no_train and args.study != "lr":
        p.error(f"--no-train is for --study lr, not --study {args.study}")
    if args.lr_edge_steps < 0:
        p.error(f"--lr-edge-steps must be >= 0, got {args.lr_edge_steps}")
    for name in ("jobs", "threads"):
        if getattr(args, name) is not None and getattr(args, name) < 1:
            p.error(f"--{name} must be >= 1, got {getattr(args, name)}")
    return args


# -- planning: the train flags of every (variant, seed) ------------------------------------------


def run_dir(out: Path, variant: str, seed: int) -> Path:
    return out / "runs" / f"{variant}-s{seed}"


def train_argv(
    preset: dict[str, Any],
    variant: str,
    seed: int,
    folder: Path,
    args: argparse.Namespace,
    extra: tuple[str, ...] = (),
) -> list[str]:
    """The ``posenc train`` flags of one run: the preset's, the variant's, then ``extra`` (a study's)."""
    flags = FLAG_VARIANTS.get(variant, ("--pe", variant))
    argv = [
        "--preset",
        preset["train_preset"],
        *preset["train_args"],
        *flags,
        *extra,
        "--seed",
        str(seed),
        "--out-dir",
        str(folder),
        "--no-progress",
    ]
    return argv + passed_on(args)


def passed_on(args: argparse.Namespace) -> list[str]:
    """The compare flags every run it trains gets as well: the data and the device."""
    argv = []
    if args.data_dir:
        argv += ["--data-dir", args.data_dir]
    if args.data_files:
        argv += ["--data-files", *args.data_files]
    if args.device:
        argv += ["--device", args.device]
    return argv


# -- collection --------------------------------------------------------------------------------------


def read_curve(folder: Path) -> list[dict[str, Any]]:
    """The evaluation records of log.jsonl: step, tokens, interval-mean train loss, validation loss."""
    return [
        {k: r[k] for k in ("step", "tokens", "train_loss", "val_loss")}
        for r in read_log(folder)
        if r.get("kind") == "eval"
    ]


def environment(device: torch.device, jobs: int, threads: int | None) -> dict[str, Any]:
    def git(*cmd: str) -> str | None:
        try:
            return subprocess.run(["git", *cmd], capture_output=True, text=True, timeout=10, check=True).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            return None

    status = git("status", "--porcelain")
    return {
        "git_commit": git("rev-parse", "HEAD"),
        "git_dirty": None if status is None else bool(status),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "machine": platform.machine(),
        "processor": platform.processor() or None,
        "cpu_count": os.cpu_count(),
        "device": str(device),
        "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
        "jobs": jobs,
        "threads_per_job": threads,
    }


def collect(
    folders: dict[tuple[str, int], Path], evals: dict[tuple[str, int], dict[str, Any]]
) -> dict[str, dict[str, Any]]:
    runs = {}
    for (v, s), folder in folders.items():
        summary = read_summary(folder)
        runs[f"{v}/s{s}"] = {
            "variant": v,
            "seed": s,
            "folder": str(folder),
            "argv": json.loads((folder / "compare_run.json").read_text())["argv"],
            **{
                k: summary[k]
                for k in (
                    "train_loss",
                    "val_loss",
                    "tokens",
                    "steps",
                    "params",
                    "wall_time_s",
                    "train_time_s",
                    "samples",
                    "pe",
                    "layer_codes",
                    "qk_norm",
                    "architecture",
                )
            },
            "curve": read_curve(folder),
            "eval": evals[(v, s)],
        }
    return runs


def main(argv: list[str] | None = None, prog: str | None = None) -> int:
    args = parse_args(argv, prog)
    if args.from_json:
        sources = [Path(f) for f in args.from_json]
        parts = [json.loads(f.read_text()) for f in sources]
        kinds = {part.get("kind", "table") for part in parts}
        if kinds != {"table"}:  # a study's json (lr.json, ...): its own page, one at a time
            if len(parts) > 1:
                raise ValueError(f"--from merges table results only; got {len(parts)} files of kinds {sorted(kinds)}")
            from posenc.report.studies import render_study

            figures = render_study(parts[0], Path(args.render))
        else:
            results = parts[0] if len(parts) == 1 else merge_results(parts)
            figures = render_page(results, Path(args.render), sources[0] if len(parts) == 1 else None)
        print(
            f"[compare] wrote {args.render} from {', '.join(map(str, sources))}"
            + ("" if figures else " (no figures: matplotlib is not installed)")
        )
        return 0

    device = resolve_device(args.device or "auto")
    name = "quick" if args.quick else args.preset or ("owt-16m" if device.type == "cuda" else "cpu")
    preset = SWEEP_PRESETS[name]
    variants = args.variants or list(DEFAULT_VARIANTS)
    seeds = args.seeds if args.seeds is not None else list(preset["seeds"])
    out = Path(args.out or f"out/compare-{name}")
    cpus = os.cpu_count() or 1
    n_jobs = args.jobs or (1 if device.type == "cuda" else min(4, cpus))
    threads = args.threads or (None if n_jobs == 1 else max(1, cpus // n_jobs))
    if threads is not None:  # in-process training, or the evaluation that runs beside the training processes
        torch.set_num_threads(threads)
    command = (prog or "python examples/compare.py") + (
        " " + shlex.join(argv if argv is not None else sys.argv[1:])
    ).rstrip()
    if args.study != "table":
        study = importlib.import_module(f"posenc.studies.{args.study}")
        return study.run(args, name, preset, out, device, n_jobs, threads, command)

    jobs, folders = [], {}
    for v in variants:
        for s in seeds:
            folders[(v, s)] = folder = run_dir(out, v, s)
            todo = plan_run(folder, train_argv(preset, v, s, folder, args), args.device)
            if todo is not None:
                jobs.append((v, s, folder, todo))
    print(
        f"[compare] preset {name}: {len(variants)} variants x {len(seeds)} seeds; {len(jobs)} run(s) to train, "
        f"{n_jobs} at a time; results in {out}",
        flush=True,
    )

    evals: dict[tuple[str, int], dict[str, Any]] = {}

    def on_done(v: str, s: int) -> None:
        if read_summary(folders[(v, s)]) is None:
            raise ValueError(f"{v} seed {s}: the loss became non-finite (see {folders[(v, s)] / 'train.out'})")
        evals[(v, s)] = evaluate_checkpoint(folders[(v, s)], windows=preset["eval_windows"], device=device)
        ext = evals[(v, s)]["extrapolation"]
        print(
            f"[compare] {v} seed {s}: val {read_summary(folders[(v, s)])['val_loss']:.4f}; by context "
            + ", ".join(f"{m}x {'n/a' if x is None else f'{x:.4f}'}" for m, x in ext.items()),
            flush=True,
        )

    t0 = time.time()
    code = train_jobs(jobs, n_jobs, threads, on_done)
    if code:
        return code
    wall = time.time() - t0

    for key, folder in folders.items():
        if key not in evals:
            evals[key] = evaluate_checkpoint(folder, windows=preset["eval_windows"], device=device)
    runs = collect(folders, evals)
    first = read_summary(folders[(variants[0], seeds[0])])
    e0 = evals[(variants[0], seeds[0])]
    results = {
        "format": RESULTS_FORMAT,
        "created": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "command": command,
        "preset": name,
        "variants": variants,
        "seeds": seeds,
        "config": {k: list(v) if isinstance(v, tuple) else v for k, v in preset.items()}
        | {"multipliers": list(MULTIPLIERS)},
        "train_config": first["train_config"],
        "model_config": first["config"],
        "block_size": first["config"]["block_size"],
        "eval_tokens": e0["eval_tokens"],
        "per_position_long_width": e0["per_position_long_width"],
        "environment": environment(device, n_jobs, threads),
        "wall_time_s": wall,
        "runs_trained": len(jobs),
        "study": STUDY,
        "runs": runs,
    }
    results["aggregate"] = aggregate(runs, variants, seeds)
    results["comparisons"] = compare_pairs(runs, variants, seeds)
    atomic_write(out / "results.json", json.dumps(results, indent=1))
    write_outputs(results, out)
    print(f"[compare] wrote {out / 'results.json'}, table.md, report.md and figures in {wall / 60:.1f} min", flush=True)
    print(study_table(results))
    if args.render:
        render_page(results, Path(args.render))
        print(f"[compare] wrote {args.render}")
    return 0


def run(argv: list[str] | None = None, prog: str | None = None) -> int:
    return guarded(lambda: main(argv, prog))

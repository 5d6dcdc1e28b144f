"""``compare``: train every positional-encoding variant under identical conditions, evaluate, and
write a study's json and page. This module is that command line, and the only one here that parses
argv: it resolves its flags into a :class:`~posenc.jobs.Sweep` (the typed settings object, which lives
in :mod:`posenc.jobs` with the run folders it trains) and calls one study of :data:`posenc.studies.STUDIES`
(``table`` by default: :mod:`posenc.studies.table`). ``--render PAGE --from JSON`` redraws a page
from a study's json alone.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shlex
import sys
from pathlib import Path

import torch

from posenc.flags import Parser
from posenc.jobs import Sweep, SweepPreset
from posenc.report import merge_results, render_page
from posenc.studies import STUDIES
from posenc.studies import lr as lr_study
from posenc.studies import real as real_study
from posenc.studies.table import DEFAULT_VARIANTS, complete_results
from posenc.train.args import PLACEMENT_FLAGS, guarded
from posenc.train.config import resolve_device
from posenc.variants import variant_names

__all__ = ["DEFAULT_VARIANTS", "SWEEP_PRESETS", "main", "parse_args", "parser", "run", "sweep_from_args"]

#: Sweep presets: a train preset, TrainConfig fields on top of it, the seeds, and the evaluation
#: (``eval_windows`` validation windows of max(multipliers) x block_size tokens). ``cpu``: 3 seeds of
#: each variant (a run is 130-150 s on 2 cores; 16 variants took about two hours); ``quick``: a smoke test in
#: minutes; ``test``: the unit tests'; ``owt-16m``: the study.
SWEEP_PRESETS: dict[str, SweepPreset] = {
    "cpu": SweepPreset("cpu", dict(max_iters=800, batch_size=16, eval_interval=100, eval_iters=16), (0, 1, 2), 16),
    "quick": SweepPreset("cpu", dict(max_iters=100, batch_size=16, eval_interval=25, eval_iters=8), (0, 1), 8),
    "owt-16m": SweepPreset("owt-16m", {}, (0, 1, 2), 16),
    "test": SweepPreset(
        "tiny",
        dict(max_iters=6, batch_size=4, grad_accum=1, eval_interval=3, eval_iters=2, num_samples=1, sample_tokens=8),
        (0, 1),
        2,
    ),
}


def parser(prog: str | None = None) -> argparse.ArgumentParser:
    p = Parser(
        prog=prog,
        description="Train every positional-encoding variant with the same data, seeds and initialisation; "
        "write tables, plots and results.json; optionally render docs/results.md.",
    )
    p.add_argument(
        "--preset",
        choices=sorted(SWEEP_PRESETS),
        default=None,
        help="sweep preset; default: owt-16m on CUDA, cpu otherwise",
    )
    p.add_argument(
        "--study",
        choices=sorted(STUDIES),
        default="table",
        help="table: every variant, the study's table; lr: learning-rate sweep; extension: RoPE context "
        "extension; synthetic: passkey retrieval by length and depth; real: a released model (SmolLM2-135M) past "
        "its context, schedules at 2x, where position lives (each writes <out>/<study>.json)",
    )
    p.add_argument("--quick", action="store_true", help="the 'quick' preset: a smoke test in minutes")
    p.add_argument(
        "--variants",
        nargs="+",
        choices=variant_names(),
        default=None,
        metavar="PE",
        help=f"variants to train, of {', '.join(variant_names())} (default: {' '.join(DEFAULT_VARIANTS)})",
    )
    _study_flags(p)
    p.add_argument(
        "--revise",
        default=None,
        metavar="JSON",
        help="with --render and one --from: replace the rows of this json's variants in the --from json (the "
        "others stay), record the revision (--why, what moved, which sentences changed) and render the page",
    )
    p.add_argument("--why", default=None, help="with --revise: why the rows were retrained (shown on the page)")
    p.add_argument("--out", default=None, help="results folder; default: out/compare-<preset>")
    p.add_argument(
        "--device",
        default=None,
        help="device of the runs and of the evaluation (default: cuda when there is one, else cpu)",
    )
    p.add_argument("--data-dir", default=None, help="prepared shards, passed to every run")
    p.add_argument("--data-files", nargs="+", default=None, help="local corpus files, passed to every run")
    p.add_argument(
        "--jobs",
        type=int,
        default=None,
        help="runs trained at once, each in its own process; default: 1 on CUDA or for --study real (which trains nothing), else min(4, CPUs). 1 trains in this process",
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


def _study_flags(p: argparse.ArgumentParser) -> None:
    seeds = ", ".join(f"{name} {' '.join(map(str, preset.seeds))}" for name, preset in SWEEP_PRESETS.items())
    p.add_argument("--seeds", nargs="+", type=int, default=None, help=f"default: the preset's ({seeds})")
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
        help="--study lr or real: write the json and the page from the runs (evaluations) already finished, the "
        "others pending, running none",
    )
    real = real_study.Settings()
    p.add_argument(
        "--model", default=None, help=f"--study real: a GGUF file or model folder (default: {real_study.MODEL})"
    )
    p.add_argument(
        "--windows", type=int, default=None, help=f"--study real: sequences of 2x the context ({real.windows})"
    )
    p.add_argument("--ablation-windows", type=int, default=None, help=f"--study real: ({real.ablation_windows})")
    p.add_argument("--ablation-len", type=int, default=None, help=f"--study real: tokens ({real.ablation_len})")
    p.add_argument("--context", type=int, default=None, help="--study real: the trained context (the model's)")
    p.add_argument("--rows", nargs="+", default=None, help="--study real: evaluate only these rows (default: all)")
    p.add_argument(
        "--beside",
        default=None,
        help=f"--study real: a second model (GGUF file, folder or name) whose ablations run beside ({real.beside}; "
        "'none': no second model)",
    )


def parse_args(argv: list[str] | None = None, prog: str | None = None) -> argparse.Namespace:
    p = parser(prog)
    args = p.parse_args(argv)
    if args.quick and args.preset not in (None, "quick"):
        p.error(f"--quick is the 'quick' preset; drop --preset {args.preset}")
    if args.from_json and not args.render:
        p.error("--from needs --render")
    if args.revise and (not args.from_json or len(args.from_json) != 1 or not args.why):
        p.error("--revise needs --render, one --from json and --why")
    if args.no_train and args.study not in ("lr", "real"):
        p.error(f"--no-train is for --study lr or real, not --study {args.study}")
    if args.lr_edge_steps < 0:
        p.error(f"--lr-edge-steps must be >= 0, got {args.lr_edge_steps}")
    for name in ("jobs", "threads"):
        if getattr(args, name) is not None and getattr(args, name) < 1:
            p.error(f"--{name} must be >= 1, got {getattr(args, name)}")
    return args


def sweep_from_args(args: argparse.Namespace, command: str) -> Sweep:
    """The typed settings of one invocation: the preset, folder, device, parallelism, seeds and data."""
    device = resolve_device(args.device or "auto")
    name = "quick" if args.quick else args.preset or ("owt-16m" if device.type == "cuda" else "cpu")
    preset = SWEEP_PRESETS[name]
    cpus = os.cpu_count() or 1
    # the real study trains nothing: its evaluations run one at a time in this process, on every thread
    n_jobs = args.jobs or (1 if device.type == "cuda" or args.study == "real" else min(4, cpus))
    threads = args.threads or (None if n_jobs == 1 else max(1, cpus // n_jobs))
    settings = None
    if args.study == "lr":
        settings = lr_study.Settings(
            grid=tuple(args.lrs or lr_study.LR_GRID), edge_steps=args.lr_edge_steps, no_train=args.no_train
        )
    if args.study == "real":
        given = {k: getattr(args, k) for k in ("model", "windows", "ablation_windows", "ablation_len", "context")}
        given |= {"evaluate": not args.no_train, "rows": None if args.rows is None else tuple(args.rows)}
        if args.beside is not None:
            given["beside"] = None if args.beside == "none" else args.beside
        base = real_study.QUICK if name == "quick" else real_study.Settings()
        settings = dataclasses.replace(base, **{k: v for k, v in given.items() if v is not None or k == "beside"})
    return Sweep(
        name=name,
        preset=preset,
        out=Path(args.out or f"out/compare-{name}"),
        device=device,
        jobs=n_jobs,
        threads=threads,
        seeds=tuple(args.seeds if args.seeds is not None else preset.seeds),
        variants=None if args.variants is None else tuple(args.variants),
        data_dir=args.data_dir,
        data_files=tuple(args.data_files or ()),
        run_device=args.device,
        render=args.render,
        command=command,
        settings=settings,
    )


def render_from(sources: list[Path], page: Path, revision: tuple[Path, str, str] | None = None) -> int:
    """Redraw a page from existing json: results.json (several are merged), or one study's json;
    with ``revision`` (new json, why, command), that json's rows revised first (:mod:`posenc.report.revise`)."""
    parts = [json.loads(f.read_text()) for f in sources]
    if revision is not None:
        from posenc.report.revise import revise

        new, why, command = revision
        parts = [revise(parts[0], json.loads(new.read_text()), why, command)]
    kinds = {part.get("kind", "table") for part in parts}
    if kinds != {"table"}:  # a study's json (lr.json, ...): its own page, one at a time
        if len(parts) > 1:
            raise ValueError(f"--from merges table results only; got {len(parts)} files of kinds {sorted(kinds)}")
        from posenc.report.studies import render_study

        figures = render_study(parts[0], page)
    else:
        results = complete_results(parts[0] if len(parts) == 1 else merge_results(parts))
        figures = render_page(results, page, sources[0] if len(sources) == 1 and revision is None else None)
    print(
        f"[compare] wrote {page} from {', '.join(map(str, sources))}"
        + ("" if figures else " (no figures: matplotlib is not installed)")
    )
    return 0


def main(argv: list[str] | None = None, prog: str | None = None) -> int:
    args = parse_args(argv, prog)
    command = (prog or "python examples/compare.py") + (
        " " + shlex.join(argv if argv is not None else sys.argv[1:])
    ).rstrip()
    if args.from_json:
        revision = None if args.revise is None else (Path(args.revise), args.why, command)
        return render_from([Path(f) for f in args.from_json], Path(args.render), revision)
    sweep = sweep_from_args(args, command)
    if sweep.threads is not None:  # in-process training, or the evaluation that runs beside the training processes
        torch.set_num_threads(sweep.threads)
    return STUDIES[args.study](sweep)


def run(argv: list[str] | None = None, prog: str | None = None) -> int:
    return guarded(lambda: main(argv, prog), PLACEMENT_FLAGS)

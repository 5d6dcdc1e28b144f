"""Train every positional encoding under identical conditions, then compare them.

Each variant is trained by ``examples/pretrain_owt.py`` with the same data order, the same seeds
and -- wherever two architectures share a parameter name -- the same initial values (the model
seeds each weight by (seed, parameter name)). The final checkpoints are then evaluated here:
validation loss at 1x, 2x, 4x and 8x the training context with the KV-free full forward on fixed
validation windows, and the loss at every position within the training context.

    python examples/compare.py                                  # CPU preset: 9 variants x 3 seeds, ~35 min on 2 cores
    python examples/compare.py --quick                          # a smoke test, minutes
    python examples/compare.py --preset owt-16m                 # the study's runs on a GPU (27 x ~900M tokens)
    python examples/compare.py --preset cpu --render docs/results.md   # run, then write the docs page
    python examples/compare.py --render docs/results.md --from out/compare-cpu/results.json

Outputs in --out (default out/compare-<preset>): runs/<variant>-s<seed>/ (each a pretrain_owt.py
run folder, plus eval.json), results.json (every number and the exact configuration), table.md
(the study's format), report.md, curves.png, extrapolation.png, per_position.png. A sweep that
is interrupted continues where it stopped: finished runs (summary.json) are kept, unfinished
runs with a checkpoint are resumed with --resume.
"""

from __future__ import annotations

import argparse
import datetime
import importlib.util
import json
import os
import platform
import shlex
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from posenc import GPT
from posenc.checkpoint import CheckpointError, load_checkpoint, read_manifest
from posenc.config import GPTConfig
from posenc.data import DataError, load_split
from posenc.training import resolve_device, resolve_dtype

SCRIPT = Path(__file__).resolve().with_name("pretrain_owt.py")
RESULTS_FORMAT = 1

# -----------------------------------------------------------------------------------------------
# what is compared

#: variant -> pretrain_owt.py flags. The last two settle what the study's "QK Norm" could mean:
#: ``qknorm`` is RoPE + QK-norm; QK-norm can also be put on the absolute or the NoPE model.
VARIANTS: dict[str, tuple[str, ...]] = {
    "absolute": ("--pe", "absolute"),
    "nope": ("--pe", "nope"),
    "rope": ("--pe", "rope"),
    "qknorm": ("--pe", "qknorm"),
    "rnope": ("--pe", "rnope"),
    "sinusoidal": ("--pe", "sinusoidal"),
    "alibi": ("--pe", "alibi"),
    "absolute_qknorm": ("--pe", "absolute", "--qk-norm"),
    "nope_qknorm": ("--pe", "nope", "--qk-norm"),
}
LABELS: dict[str, str] = {  # the study's row names, extended in its style
    "absolute": "GPT", "nope": "GPT NOPE", "rope": "GPT ROPE", "qknorm": "GPT QK Norm", "rnope": "GPT RNOPE",
    "sinusoidal": "GPT Sinusoidal", "alibi": "GPT ALiBi", "absolute_qknorm": "GPT + QK Norm",
    "nope_qknorm": "GPT NOPE + QK Norm",
}  # fmt: skip
DESCRIPTIONS: dict[str, str] = {
    "absolute": "learned absolute position table (GPT-2)",
    "nope": "no positional encoding",
    "rope": "RoPE on every layer",
    "qknorm": "RoPE + QK-norm (RMS) on every layer",
    "rnope": "RoPE on three layers, NoPE on every fourth",
    "sinusoidal": "fixed sinusoidal table at the input",
    "alibi": "ALiBi distance bias on every layer",
    "absolute_qknorm": "learned absolute table + QK-norm (RMS)",
    "nope_qknorm": "NoPE + QK-norm (RMS)",
}

#: Compare presets: a pretrain_owt.py preset, flags on top of it, the seeds, and the evaluation
#: (``eval_windows`` validation windows of max(multipliers) x block_size tokens).
#: ``cpu``: sized for 9 variants x 3 seeds in under an hour on 2 cores (two runs at a time, one
#: thread each); ``quick``: a smoke test in minutes; ``test``: the unit test's; ``owt-16m``: the study.
COMPARE_PRESETS: dict[str, dict[str, Any]] = {
    "cpu": dict(train_preset="cpu", train_args=("--max-iters", "800", "--batch-size", "16", "--eval-interval", "100", "--eval-iters", "16"),
                seeds=(0, 1, 2), eval_windows=16),
    "quick": dict(train_preset="cpu", train_args=("--max-iters", "100", "--batch-size", "16", "--eval-interval", "25", "--eval-iters", "8"),
                  seeds=(0, 1), eval_windows=8),
    "owt-16m": dict(train_preset="owt-16m", train_args=(), seeds=(0, 1, 2), eval_windows=16),
    "test": dict(train_preset="tiny", train_args=("--max-iters", "6", "--batch-size", "4", "--grad-accum", "1",
                                                  "--eval-interval", "3", "--eval-iters", "2", "--num-samples", "1",
                                                  "--sample-tokens", "8"),
                 seeds=(0, 1), eval_windows=2),
}  # fmt: skip
MULTIPLIERS: tuple[int, ...] = (1, 2, 4, 8)
UNITS = {"bytes": "byte (UTF-8 byte tokenizer)", "gpt2": "GPT-2 BPE token"}

#: The reference study's published table (one run each; ~16.03M parameters, ~900M OpenWebText
#: GPT-2 tokens, fp16). The only hand-typed numbers here.
STUDY = {
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
#: Pairs (a, b) whose paired difference a - b is reported; the first two are the acceptance criterion (differences larger than the seed spread).
PAIRS: tuple[tuple[str, str], ...] = (
    ("rope", "nope"), ("rope", "absolute"), ("rnope", "rope"), ("qknorm", "rope"), ("alibi", "rope"),
    ("sinusoidal", "absolute"), ("absolute_qknorm", "absolute"), ("nope_qknorm", "nope"), ("absolute", "nope"),
)  # fmt: skip


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description="Train every positional-encoding variant with the same data, seeds and initialisation; "
        "write tables, plots and results.json; optionally render docs/results.md.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--preset", choices=sorted(COMPARE_PRESETS), default=None,
                   help="compare preset; default: owt-16m on CUDA, cpu otherwise")
    p.add_argument("--quick", action="store_true", help="the 'quick' preset: a smoke test in minutes")
    p.add_argument("--variants", nargs="+", choices=list(VARIANTS), default=None, help="default: all")
    p.add_argument("--seeds", nargs="+", type=int, default=None, help="default: the preset's")
    p.add_argument("--out", default=None, help="results folder; default: out/compare-<preset>")
    p.add_argument("--device", default=None, help="passed to pretrain_owt.py and used for the evaluation")
    p.add_argument("--data-dir", default=None, help="prepared shards, passed to pretrain_owt.py")
    p.add_argument("--data-files", nargs="+", default=None, help="local corpus files, passed to pretrain_owt.py")
    p.add_argument("--jobs", type=int, default=None,
                   help="runs trained at once, each in its own process; default: 1 on CUDA, else min(4, CPUs). "
                        "1 trains in this process")
    p.add_argument("--threads", type=int, default=None, help="torch threads per run; default: CPUs // jobs")
    p.add_argument("--render", default=None, metavar="MD",
                   help="write this markdown page (e.g. docs/results.md), its figures and a copy of results.json "
                        "in <page stem>/ beside it")
    p.add_argument("--from", dest="from_json", default=None, metavar="JSON",
                   help="with --render: render an existing results.json instead of running a sweep")
    args = p.parse_args(argv)
    if args.quick and args.preset not in (None, "quick"):
        p.error(f"--quick is the 'quick' preset; drop --preset {args.preset}")
    if args.from_json and not args.render:
        p.error("--from needs --render")
    for name in ("jobs", "threads"):
        if getattr(args, name) is not None and getattr(args, name) < 1:
            p.error(f"--{name} must be >= 1, got {getattr(args, name)}")
    return args


# -----------------------------------------------------------------------------------------------
# training: one pretrain_owt.py run per (variant, seed)


def run_dir(out: Path, variant: str, seed: int) -> Path:
    return out / "runs" / f"{variant}-s{seed}"


def train_argv(preset: dict[str, Any], variant: str, seed: int, folder: Path, args: argparse.Namespace) -> list[str]:
    argv = ["--preset", preset["train_preset"], *preset["train_args"], *VARIANTS[variant], "--seed", str(seed),
            "--out-dir", str(folder), "--no-progress"]  # fmt: skip
    if args.data_dir:
        argv += ["--data-dir", args.data_dir]
    if args.data_files:
        argv += ["--data-files", *args.data_files]
    if args.device:
        argv += ["--device", args.device]
    return argv


def _without_device(argv: list[str]) -> list[str]:
    if "--device" not in argv:
        return argv
    i = argv.index("--device")
    return argv[:i] + argv[i + 2 :]


def read_summary(folder: Path) -> dict[str, Any] | None:
    try:
        return json.loads((folder / "summary.json").read_text())
    except (OSError, ValueError):  # absent, or cut short by a kill while being written
        return None


def plan_run(folder: Path, argv: list[str], device: str | None) -> list[str] | None:
    """The pretrain_owt.py argv that brings ``folder`` to a finished run, or None when it is one.

    A folder made with other settings is refused rather than mixed into the comparison."""
    spec_path = folder / "compare_run.json"
    if spec_path.exists():
        saved = json.loads(spec_path.read_text())["argv"]
        if _without_device(saved) != _without_device(argv):
            raise ValueError(
                f"{folder} was trained with other settings ({shlex.join(saved)}); use another --out or remove it"
            )
    if read_summary(folder) is not None:
        return None
    folder.mkdir(parents=True, exist_ok=True)
    spec_path.write_text(json.dumps({"argv": argv}, indent=1))
    try:
        has_checkpoint = read_manifest(folder) is not None
    except CheckpointError:
        has_checkpoint = False
    if has_checkpoint:
        return ["--out-dir", str(folder), "--resume", "--no-progress"] + (["--device", device] if device else [])
    return argv


_script = None


def train_in_process(argv: list[str]) -> int:
    global _script
    if _script is None:
        spec = importlib.util.spec_from_file_location("pretrain_owt", SCRIPT)
        _script = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(_script)
    return _script.run(argv)


class Stop(Exception):
    def __init__(self, code: int) -> None:
        self.code = code


def _interrupt(signum, frame) -> None:  # noqa: ARG001
    raise KeyboardInterrupt  # SIGTERM stops the sweep like Ctrl-C: runs checkpoint, then exit


def run_sweep(jobs: list[tuple[str, int, Path, list[str]]], n_jobs: int, threads: int | None,
              on_done) -> None:  # fmt: skip
    """Train ``jobs`` (variant, seed, folder, argv), ``n_jobs`` at a time; ``on_done(variant, seed)``
    after each. A run that fails or is stopped ends the sweep (its checkpoint is kept)."""
    if n_jobs == 1:
        for variant, seed, folder, argv in jobs:
            print(f"[compare] train {variant} seed {seed}: pretrain_owt.py {shlex.join(argv)}", flush=True)
            code = train_in_process(argv)
            if code != 0:
                raise Stop(code)
            on_done(variant, seed)
        return

    env = dict(os.environ)
    if threads is not None:  # small models scale poorly over threads: parallel runs use the cores better
        env |= {"OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    pending, running = list(jobs), {}
    try:
        while pending or running:
            while pending and len(running) < n_jobs:
                variant, seed, folder, argv = pending.pop(0)
                log = open(folder / "train.out", "ab")
                proc = subprocess.Popen([sys.executable, str(SCRIPT), *argv], stdout=log, stderr=subprocess.STDOUT, env=env)
                running[proc] = (variant, seed, folder, log)
                print(f"[compare] train {variant} seed {seed} (log {folder / 'train.out'}): "
                      f"pretrain_owt.py {shlex.join(argv)}", flush=True)  # fmt: skip
            time.sleep(0.5)
            for proc in [p for p in running if p.poll() is not None]:
                variant, seed, folder, log = running.pop(proc)
                log.close()
                if proc.returncode != 0:
                    tail = (folder / "train.out").read_text(errors="replace").splitlines()[-5:]
                    print(f"[compare] {variant} seed {seed} exited with {proc.returncode}:\n  " + "\n  ".join(tail),
                          file=sys.stderr)  # fmt: skip
                    raise Stop(proc.returncode)
                on_done(variant, seed)
    except (KeyboardInterrupt, Stop) as e:
        # SIGTERM, not SIGINT: a run that already got the terminal's SIGINT would die at a second one
        for proc in running:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc, (_, _, _, log) in running.items():
            proc.wait()
            log.close()
        raise e if isinstance(e, Stop) else Stop(130) from None


# -----------------------------------------------------------------------------------------------
# evaluation of a finished run: length extrapolation and per-position loss


def validation_windows(tokens: np.ndarray, length: int, n: int) -> torch.Tensor:
    """``n`` windows of ``length + 1`` tokens at evenly spaced, fixed offsets: (n, length + 1) int64."""
    if len(tokens) < length + 1:
        raise DataError(f"the validation split has {len(tokens):,} tokens, fewer than {length + 1:,} for one window")
    starts = np.linspace(0, len(tokens) - length - 1, n).astype(np.int64)
    return torch.from_numpy(np.stack([np.asarray(tokens[s : s + length + 1], dtype=np.int64) for s in starts]))


@torch.no_grad()
def token_losses(model: GPT, windows: torch.Tensor, context: int, batch_tokens: int, device: torch.device,
                 dtype: torch.dtype) -> torch.Tensor:  # fmt: skip
    """Cross-entropy of every token of ``windows`` cut into rows of ``context`` tokens, each row
    one full forward (no KV cache) from position 0: (rows, context) float32. Every context sees
    the same target tokens, so the losses of different contexts are directly comparable."""
    n, span = windows.shape[0], windows.shape[1] - 1
    x = windows[:, :span].reshape(-1, context)  # (n * span / context, context)
    y = windows[:, 1:].reshape(-1, context)
    rows = max(1, batch_tokens // context)
    out = []
    autocast = torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32)
    for i in range(0, x.shape[0], rows):
        xb, yb = x[i : i + rows].to(device), y[i : i + rows].to(device)
        with autocast:
            logits, _ = model(xb, positions=torch.arange(context, device=device))
        loss = F.cross_entropy(logits.float().flatten(0, 1), yb.flatten(), reduction="none")
        out.append(loss.view(xb.shape).cpu())  # (rows, context)
    return torch.cat(out)


def evaluate_run(folder: Path, *, eval_windows: int, device: torch.device, batch_tokens: int = 16384,
                 multipliers: tuple[int, ...] = MULTIPLIERS, buckets: int = 64) -> dict[str, Any]:  # fmt: skip
    """Length extrapolation and per-position loss of the run's final checkpoint (cached in eval.json)."""
    manifest = read_manifest(folder)
    settings = {"eval_windows": eval_windows, "multipliers": list(multipliers), "buckets": buckets,
                "checkpoint_sha256": manifest["sha256"] if manifest else None}  # fmt: skip
    cache = folder / "eval.json"
    if cache.exists():
        saved = json.loads(cache.read_text())
        if saved.get("settings") == settings:
            return saved
    t0 = time.time()
    ckpt = load_checkpoint(folder, map_location="cpu")
    config = GPTConfig.from_dict(ckpt["config"])
    model = GPT(config)
    model.load_state_dict(ckpt["model"])
    model.to(device).eval()
    dtype = resolve_dtype(ckpt["train_config"]["dtype"], device)
    T, longest = config.block_size, max(multipliers) * config.block_size
    if any(longest % (m * T) for m in multipliers):
        raise ValueError(f"every context multiplier must divide the largest one, got {multipliers}")
    val = load_split(ckpt["data"]["data_dir"], "val", vocab_size=config.vocab_size, block_size=longest)
    windows = validation_windows(val, longest, eval_windows)
    # a learned table has no vectors past its length: those contexts are not applicable
    table = getattr(model.wpe, "max_positions", None) if model.wpe is not None else None
    extrapolation: dict[str, float | None] = {}
    per_position = per_position_long = None
    for m in multipliers:
        if table is not None and m * T > table:
            extrapolation[str(m)] = None
            continue
        losses = token_losses(model, windows, m * T, batch_tokens, device, dtype)  # (rows, m T)
        extrapolation[str(m)] = losses.mean().item()
        if m == 1:
            per_position = losses.mean(0).tolist()
        if m == max(multipliers):
            width = max(1, longest // buckets)
            per_position_long = losses.mean(0)[: width * (longest // width)].view(-1, width).mean(1).tolist()
    result = {
        "settings": settings, "block_size": T, "eval_tokens": int(windows.shape[0] * longest),
        "extrapolation": extrapolation, "per_position": per_position,
        "per_position_long": per_position_long, "per_position_long_width": max(1, longest // buckets),
        "eval_time_s": time.time() - t0,
    }  # fmt: skip
    tmp = cache.with_suffix(".tmp")
    tmp.write_text(json.dumps(result))
    os.replace(tmp, cache)
    return result


def read_curve(folder: Path) -> list[dict[str, Any]]:
    """The evaluation records of log.jsonl: step, tokens, interval-mean train loss, validation loss."""
    out = []
    for line in (folder / "log.jsonl").read_text().splitlines():
        try:
            r = json.loads(line)
        except ValueError:
            continue
        if r.get("kind") == "eval":
            out.append({k: r[k] for k in ("step", "tokens", "train_loss", "val_loss")})
    return out


# -----------------------------------------------------------------------------------------------
# aggregation over seeds


def spread(values: list[float | None]) -> dict[str, Any] | None:
    vals = [v for v in values if v is not None]
    if not vals:
        return None
    return {"mean": statistics.fmean(vals), "std": statistics.stdev(vals) if len(vals) > 1 else None,
            "n": len(vals), "min": min(vals), "max": max(vals), "values": vals}  # fmt: skip


def early_late(per_position: list[float]) -> tuple[float, float]:
    """Mean loss over the first and the last eighth of the positions."""
    k = max(1, len(per_position) // 8)
    return statistics.fmean(per_position[:k]), statistics.fmean(per_position[-k:])


def aggregate(runs: dict[str, dict[str, Any]], variants: list[str], seeds: list[int]) -> dict[str, Any]:
    agg: dict[str, Any] = {}
    for v in variants:
        rs = [runs[f"{v}/s{s}"] for s in seeds if f"{v}/s{s}" in runs]
        if not rs:
            continue
        curve_steps = sorted({p["step"] for r in rs for p in r["curve"]})
        curve = []
        for step in curve_steps:
            pts = [p for r in rs for p in r["curve"] if p["step"] == step]
            curve.append({"step": step, "tokens": pts[0]["tokens"],
                          "train_loss": spread([p["train_loss"] for p in pts]),
                          "val_loss": spread([p["val_loss"] for p in pts])})  # fmt: skip
        ext = {m: spread([r["eval"]["extrapolation"][m] for r in rs]) for m in rs[0]["eval"]["extrapolation"]}
        pp = np.mean([r["eval"]["per_position"] for r in rs], axis=0).tolist()
        ppl = np.mean([r["eval"]["per_position_long"] for r in rs], axis=0).tolist() if rs[0]["eval"]["per_position_long"] else None
        el = [early_late(r["eval"]["per_position"]) for r in rs]
        agg[v] = {
            "train_loss": spread([r["train_loss"] for r in rs]), "val_loss": spread([r["val_loss"] for r in rs]),
            "tokens": rs[0]["tokens"], "params": rs[0]["params"], "seeds": [r["seed"] for r in rs],
            "extrapolation": ext, "per_position": pp, "per_position_long": ppl,
            "early_loss": spread([e for e, _ in el]), "late_loss": spread([lt for _, lt in el]),
            "curve": curve,
        }  # fmt: skip
    return agg


def compare_pairs(runs: dict[str, dict[str, Any]], variants: list[str], seeds: list[int]) -> list[dict[str, Any]]:
    """Paired differences a - b of the validation loss over the seeds both variants ran (same data
    order and seed), and whether the per-seed ranges are disjoint ("separated")."""
    out = []
    for a, b in PAIRS:
        if a not in variants or b not in variants:
            continue
        common = [s for s in seeds if f"{a}/s{s}" in runs and f"{b}/s{s}" in runs]
        if not common:
            continue
        va = [runs[f"{a}/s{s}"]["val_loss"] for s in common]
        vb = [runs[f"{b}/s{s}"]["val_loss"] for s in common]
        diff = spread([x - y for x, y in zip(va, vb)])
        separated = max(va) < min(vb) or max(vb) < min(va)
        out.append({"a": a, "b": b, "seeds": common, "diff": diff, "separated": len(common) > 1 and separated,
                    "std_a": spread(va)["std"], "std_b": spread(vb)["std"]})  # fmt: skip
    return out


def environment(device: torch.device, jobs: int, threads: int | None) -> dict[str, Any]:
    root = SCRIPT.parent.parent

    def git(*cmd: str) -> str | None:
        try:
            return subprocess.run(["git", *cmd], cwd=root, capture_output=True, text=True, timeout=10, check=True).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            return None

    status = git("status", "--porcelain")
    return {
        "git_commit": git("rev-parse", "HEAD"), "git_dirty": None if status is None else bool(status),
        "torch": torch.__version__, "python": platform.python_version(), "platform": platform.platform(),
        "machine": platform.machine(), "processor": platform.processor() or None, "cpu_count": os.cpu_count(),
        "device": str(device), "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
        "jobs": jobs, "threads_per_job": threads,
    }  # fmt: skip


# -----------------------------------------------------------------------------------------------
# figures and markdown, from results.json alone


def _fmt(s: dict[str, Any] | None, digits: int = 4) -> str:
    if s is None:
        return "n/a"
    if s["std"] is None:
        return f"{s['mean']:.{digits}f}"
    return f"{s['mean']:.{digits}f} ± {s['std']:.{digits}f}"


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_all(results: dict[str, Any], folder: Path) -> list[str]:
    """curves.png, extrapolation.png and per_position.png in ``folder``; returns their names."""
    try:
        plt = _pyplot()
    except ImportError:
        print("matplotlib is not installed: no figures (pip install 'posenc[train]')", file=sys.stderr)
        return []
    folder.mkdir(parents=True, exist_ok=True)
    agg = results["aggregate"]
    colors = {v: plt.get_cmap("tab10")(i % 10) for i, v in enumerate(agg)}

    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5), sharey=True)
    for ax, key, title in zip(axes, ("train_loss", "val_loss"), ("train (mean over each eval interval)", "validation")):
        for v, a in agg.items():
            pts = [(p["tokens"], p[key]) for p in a["curve"] if p[key] is not None]
            if not pts:
                continue
            x = np.array([t for t, _ in pts])
            m = np.array([s["mean"] for _, s in pts])
            sd = np.array([s["std"] or 0.0 for _, s in pts])
            ax.plot(x, m, "o-", ms=3, color=colors[v], label=LABELS[v])
            ax.fill_between(x, m - sd, m + sd, color=colors[v], alpha=0.15)
        ax.set_title(title)
        ax.set_xlabel("tokens")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("loss (mean ± std over seeds)")
    axes[1].legend(fontsize=8)
    _save(fig, folder / "curves.png", plt)

    T = results["block_size"]
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    for v, a in agg.items():
        pts = [(int(m), s) for m, s in a["extrapolation"].items() if s is not None]
        axes[0].errorbar([m for m, _ in pts], [s["mean"] for _, s in pts], yerr=[s["std"] or 0.0 for _, s in pts],
                         fmt="o-", ms=4, capsize=3, color=colors[v], label=LABELS[v])  # fmt: skip
        if a["per_position_long"]:
            width = results["per_position_long_width"]
            xs = (np.arange(len(a["per_position_long"])) + 0.5) * width
            axes[1].plot(xs, a["per_position_long"], color=colors[v], label=LABELS[v])
    axes[0].set_xscale("log", base=2)
    axes[0].set_xlabel(f"evaluation context / training context ({T} tokens)")
    axes[0].set_ylabel("validation loss (same tokens at every context)")
    axes[0].set_title("length extrapolation (KV-free full forward)")
    axes[1].axvline(T, color="k", ls="--", lw=1)
    axes[1].set_xlabel("position in a window of the largest context")
    axes[1].set_ylabel(f"loss (mean over buckets of {results['per_position_long_width']} positions)")
    axes[1].set_title("loss by position at the largest context (dashed: training context)")
    for ax in axes:
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    _save(fig, folder / "extrapolation.png", plt)

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for v, a in agg.items():
        ax.plot(np.arange(1, len(a["per_position"]) + 1), a["per_position"], color=colors[v], lw=1, label=LABELS[v])
    ax.set_xscale("log")
    ax.set_xlabel("position within the training context (1 = first predicted token)")
    ax.set_ylabel("validation loss (mean over windows and seeds)")
    ax.set_title("per-position loss")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    _save(fig, folder / "per_position.png", plt)
    return ["curves.png", "extrapolation.png", "per_position.png"]


def _save(fig, path: Path, plt) -> None:
    fig.tight_layout()
    tmp = path.with_name(path.stem + ".tmp.png")
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    os.replace(tmp, path)


def study_table(results: dict[str, Any]) -> str:
    agg = results["aggregate"]
    seeds = sorted({s for a in agg.values() for s in a["seeds"]})
    lines = ["| Model | Train Loss | Validation Loss |", "|-------|------------|-----------------|"]
    for v, a in agg.items():
        lines.append(f"| {LABELS[v]} | {_fmt(a['train_loss'])} | {_fmt(a['val_loss'])} |")
    tokens = {a["tokens"] for a in agg.values()}
    params = sorted({a["params"] for a in agg.values()})
    lines += ["", f"Mean ± sample standard deviation over {len(seeds)} seed(s) ({', '.join(map(str, seeds))}); "
              f"{'/'.join(f'{t:,}' for t in sorted(tokens))} training tokens per run; "
              f"{' to '.join(sorted({f'{p / 1e6:.2f}M' for p in (params[0], params[-1])}))} parameters (non-embedding, as nanoGPT counts); "
              "train loss = mean over the last evaluation interval, validation loss = the final evaluation."]  # fmt: skip
    return "\n".join(lines) + "\n"


def _rank(values: dict[str, float]) -> dict[str, int]:
    return {v: i + 1 for i, v in enumerate(sorted(values, key=values.get))}


def study_comparison(results: dict[str, Any]) -> dict[str, Any]:
    agg, rows = results["aggregate"], STUDY["rows"]
    common = [v for v in rows if v in agg]
    study_val = {v: rows[v][1] for v in common}
    ours_val = {v: agg[v]["val_loss"]["mean"] for v in common}
    pairs = [(a, b) for i, a in enumerate(common) for b in common[i + 1 :]]
    agree = [(a, b) for a, b in pairs if (study_val[a] < study_val[b]) == (ours_val[a] < ours_val[b])]
    return {"variants": common, "study_rank": _rank(study_val), "our_rank": _rank(ours_val),
            "pairs": len(pairs), "agree": agree,
            "disagree": [p for p in pairs if p not in agree]}  # fmt: skip


def render_markdown(results: dict[str, Any], assets: str | None, figures: list[str]) -> str:
    """The full page: setup, the study-format table, the study beside it, paired differences,
    extrapolation, per-position loss, samples and a discussion whose numbers are all computed."""
    agg, cfg, env = results["aggregate"], results["config"], results["environment"]
    T = results["block_size"]
    link = (lambda name: f"{assets}/{name}") if assets else (lambda name: name)
    quick = results["preset"] not in ("cpu", "owt-16m")
    out: list[str] = ["# Results: positional encodings compared", ""]
    if quick:
        out += [f"> **This page comes from the `{results['preset']}` preset: a smoke test with short runs, "
                "not the comparison.** Regenerate it from the full CPU sweep "
                "(`python examples/compare.py --preset cpu --render docs/results.md`); "
                "until then read no conclusion into the numbers below.", ""]  # fmt: skip
    out += [
        "Every number on this page is read from the results JSON written by `examples/compare.py`; "
        "only the study's published table is typed in (the constant `STUDY` in that script). "
        "Rerun the command below to reproduce it, or render another run with "
        "`python examples/compare.py --render docs/results.md --from <out>/results.json`.",
        "",
        f"- Command: `{results['command']}`",
        f"- Date: {results['created']}; git commit {env['git_commit'] or 'unknown'}"
        f"{' (with uncommitted changes)' if env['git_dirty'] else ''}; torch {env['torch']}; "
        f"{env['device']}{' (' + env['gpu'] + ')' if env['gpu'] else ''}; {env['cpu_count']} CPUs, "
        f"{env['jobs']} run(s) at a time, {env['threads_per_job'] or 'default'} thread(s) each; {env['platform']}",
        f"- Sweep wall time: {results['wall_time_s'] / 60:.1f} min for the runs trained by this invocation "
        f"({results['runs_trained']} of {len(results['runs'])}); one run trains in "
        f"{_fmt(spread([r['train_time_s'] for r in results['runs'].values()]), 0)} s.",
        f"- Training: `pretrain_owt.py --preset {cfg['train_preset']} {' '.join(cfg['train_args'])}` with "
        f"`--seed` in {results['seeds']}: {results['train_config']['dataset']} corpus, "
        f"{results['train_config']['tokenizer']} tokenizer, {results['model_config']['n_layer']} layers, "
        f"{results['model_config']['n_head']} heads, {results['model_config']['n_embd']} channels, context {T}, "
        f"batch {results['train_config']['batch_size']} x {results['train_config']['grad_accum']}, "
        f"{results['train_config']['max_iters']} steps, lr {results['train_config']['learning_rate']} "
        f"(cosine to {results['train_config']['min_lr']}). Same data order, seeds and shared initial weights for every variant.",
        "",
        "## The study's table, reproduced", "", study_table(results),
    ]  # fmt: skip
    out += ["Variants: " + "; ".join(f"**{LABELS[v]}** (`{v}`): {DESCRIPTIONS[v]}" for v in agg) + ".", ""]

    sc = study_comparison(results)
    if sc["variants"]:
        ref = "rope" if "rope" in sc["variants"] else sc["variants"][0]
        out += ["## Beside the study", "",
                f"The study: {STUDY['setting']} ({STUDY['source']}). Its losses are per GPT-2 token on "
                f"OpenWebText; these are per {UNITS.get(results['train_config']['tokenizer'], 'token')} on the "
                f"{results['train_config']['dataset']} corpus, so only orderings and signs compare, not values.", "",
                f"| Model | Study train | Study val | Study val − {LABELS[ref]} | Study rank | Val here | "
                f"Val here − {LABELS[ref]} (paired) | Rank here |",
                "|---|---|---|---|---|---|---|---|"]  # fmt: skip
        for v in sc["variants"]:
            st, sv = STUDY["rows"][v]
            d = _paired(results, v, ref)
            out.append(f"| {LABELS[v]} | {st:.4f} | {sv:.4f} | {sv - STUDY['rows'][ref][1]:+.4f} | {sc['study_rank'][v]} | "
                       f"{_fmt(agg[v]['val_loss'])} | {d} | {sc['our_rank'][v]} |")  # fmt: skip
        out.append("")

    comps = results["comparisons"]
    if comps:
        out += ["## Paired differences", "",
                "Validation loss of A minus B, per seed (both trained on the same batches from the same shared "
                "initial weights), then mean ± std over seeds. *Separated*: every seed of one variant is below "
                "every seed of the other, i.e. the difference is larger than the seed spread.", "",
                "| A − B | Δ val (mean ± std) | seeds | std of A / std of B | separated |", "|---|---|---|---|---|"]  # fmt: skip
        for c in comps:
            sa = "n/a" if c["std_a"] is None else f"{c['std_a']:.4f}"
            sb = "n/a" if c["std_b"] is None else f"{c['std_b']:.4f}"
            out.append(f"| {LABELS[c['a']]} − {LABELS[c['b']]} | {_signed(c['diff'])} | {len(c['seeds'])} | {sa} / {sb} | "
                       f"{'yes' if c['separated'] else 'no'} |")  # fmt: skip
        out.append("")

    mults = list(next(iter(agg.values()))["extrapolation"])
    out += ["## Length extrapolation", "",
            f"Validation loss with contexts of 1x to {mults[-1]}x the training context ({T} tokens), each row one "
            f"KV-free forward from position 0 over the same {results['eval_tokens']:,} validation tokens "
            f"({results['config']['eval_windows']} fixed windows): a longer context sees the same targets with more "
            "history. n/a: the learned absolute table has no vectors beyond its length.", "",
            "| Model | " + " | ".join(f"{m}x ({int(m) * T})" for m in mults) + f" | {mults[-1]}x − 1x |",
            "|---|" + "---|" * (len(mults) + 1)]  # fmt: skip
    for v, a in agg.items():
        e = a["extrapolation"]
        growth = "n/a" if e[mults[-1]] is None else f"{e[mults[-1]]['mean'] - e[mults[0]]['mean']:+.4f}"
        out.append(f"| {LABELS[v]} | " + " | ".join(_fmt(e[m]) for m in mults) + f" | {growth} |")
    out.append("")
    if "extrapolation.png" in figures:
        out += [f"![length extrapolation]({link('extrapolation.png')})", ""]

    k = max(1, T // 8)
    out += ["## Loss by position within the training context", "",
            f"Mean validation loss at each position of the 1x rows, averaged over windows and seeds; early = "
            f"positions 1-{k}, late = positions {T - k + 1}-{T}.", "",
            "| Model | early | late | late − early |", "|---|---|---|---|"]  # fmt: skip
    for v, a in agg.items():
        out.append(f"| {LABELS[v]} | {_fmt(a['early_loss'])} | {_fmt(a['late_loss'])} | "
                   f"{a['late_loss']['mean'] - a['early_loss']['mean']:+.4f} |")  # fmt: skip
    out.append("")
    if "per_position.png" in figures:
        out += [f"![per-position loss]({link('per_position.png')})", ""]
    if "curves.png" in figures:
        out += ["## Loss curves", "", f"![loss curves]({link('curves.png')})", ""]

    out += ["## Samples", "", "From the final checkpoint of the first seed, with the KV cache, temperature 0.8, "
            "top-k 200, the same prompts and sampling seed for every variant.", ""]  # fmt: skip
    first = results["seeds"][0]
    for v in agg:
        r = results["runs"].get(f"{v}/s{first}")
        if r and r["samples"]:
            out += [f"**{LABELS[v]}**", "", "````text", *[printable(s).replace("````", "'```") for s in r["samples"]],
                    "````", ""]  # fmt: skip

    out += ["## Discussion", "", *discussion(results, sc), ""]
    return "\n".join(out)


def printable(text: str) -> str:
    """Samples of barely trained byte models hold control bytes; show them as U+FFFD."""
    return "".join(c if c.isprintable() or c in "\n\t" else "\ufffd" for c in text)


def _signed(d: dict[str, Any] | None) -> str:
    if d is None:
        return "n/a"
    return f"{d['mean']:+.4f}" + ("" if d["std"] is None else f" ± {d['std']:.4f}")


def _paired(results: dict[str, Any], a: str, b: str) -> str:
    """Validation loss a - b, per seed over the seeds both ran, as mean ± std."""
    if a == b:
        return "0"
    runs = results["runs"]
    seeds = [s for s in results["seeds"] if f"{a}/s{s}" in runs and f"{b}/s{s}" in runs]
    return _signed(spread([runs[f"{a}/s{s}"]["val_loss"] - runs[f"{b}/s{s}"]["val_loss"] for s in seeds]))


def discussion(results: dict[str, Any], sc: dict[str, Any]) -> list[str]:
    """Statements computed from the results; each says only what its numbers show."""
    agg, comps = results["aggregate"], {(c["a"], c["b"]): c for c in results["comparisons"]}
    lines: list[str] = []
    stds = [a["val_loss"]["std"] for a in agg.values() if a["val_loss"]["std"] is not None]
    n_seeds = len(results["seeds"])
    if stds:
        lines.append(f"- **Seed spread.** Over {n_seeds} seeds the standard deviation of the final validation loss "
                     f"is {min(stds):.4f} to {max(stds):.4f} (median {statistics.median(stds):.4f}) across variants. "
                     f"With {n_seeds} seeds these spreads are themselves rough estimates.")  # fmt: skip
    else:
        lines.append("- **Seed spread.** One seed per variant: no spread can be estimated, so no difference below "
                     "can be called larger than seed noise.")  # fmt: skip
    for a, b in (("rope", "nope"), ("rope", "absolute")):
        c = comps.get((a, b))
        if c is None:
            continue
        d = c["diff"]
        verdict = ("larger than the seed spread (every seed separated)" if c["separated"]
                   else "not larger than the seed spread (the per-seed ranges overlap)" if d["n"] > 1
                   else "of unknown significance (one seed)")  # fmt: skip
        lines.append(f"- **{LABELS[a]} vs {LABELS[b]}.** Validation loss {LABELS[a]} − {LABELS[b]} = "
                     f"{_signed(d)} "
                     f"(paired over {d['n']} seed(s)): {verdict}.")  # fmt: skip
    if sc["variants"]:
        order = lambda rank: " < ".join(LABELS[v] for v in sorted(rank, key=rank.get))  # noqa: E731
        lines.append(f"- **Agreement with the study.** By validation loss the study orders its models "
                     f"{order(sc['study_rank'])}; here: {order(sc['our_rank'])}. {len(sc['agree'])} of {sc['pairs']} "
                     f"pairwise orderings agree"
                     + (": disagreements " + ", ".join(f"{LABELS[a]} vs {LABELS[b]}" for a, b in sc["disagree"])
                        if sc["disagree"] else "") + ".")  # fmt: skip
    if "qknorm" in STUDY["rows"] and "absolute" in agg:
        study_gap = STUDY["rows"]["qknorm"][1] - STUDY["rows"]["absolute"][1]
        cands = [v for v in ("qknorm", "absolute_qknorm", "nope_qknorm") if v in agg]
        parts = [f"{LABELS[v]} ({v}) {agg[v]['val_loss']['mean'] - agg['absolute']['val_loss']['mean']:+.4f}" for v in cands]
        same = [v for v in cands if (agg[v]["val_loss"]["mean"] - agg["absolute"]["val_loss"]["mean"] > 0) == (study_gap > 0)]
        lines.append(f"- **What \"QK Norm\" was.** The study's QK Norm model is {study_gap:+.4f} from its GPT (absolute) "
                     f"model. Here, relative to {LABELS['absolute']}: " + "; ".join(parts)
                     + f". Same sign as the study: {', '.join(LABELS[v] for v in same) or 'none'}.")  # fmt: skip
    mults = list(next(iter(agg.values()))["extrapolation"])
    growth = {v: a["extrapolation"][mults[-1]]["mean"] - a["extrapolation"][mults[0]]["mean"]
              for v, a in agg.items() if a["extrapolation"][mults[-1]] is not None}  # fmt: skip
    if growth:
        ranked = sorted(growth, key=growth.get)
        better = [v for v in ranked if growth[v] < 0]
        lines.append(f"- **Beyond the training context** ({mults[-1]}x − 1x, same target tokens): "
                     + ", ".join(f"{LABELS[v]} {growth[v]:+.4f}" for v in ranked) + ". "
                     + (f"Loss falls with the longer context for {', '.join(LABELS[v] for v in better)}; "
                        if better else "No variant gains from the longer context; ")
                     + f"it rises most for {LABELS[ranked[-1]]}. The study measured no context but its own."
                     + (f" {LABELS['absolute']}'s learned table cannot be evaluated past {results['block_size']} positions."
                        if "absolute" in agg and "absolute" not in growth else ""))  # fmt: skip
    falls = [v for v, a in agg.items() if a["late_loss"]["mean"] < a["early_loss"]["mean"]]
    lines.append(f"- **Position within the context.** Late positions have lower loss than early ones for "
                 f"{len(falls)} of {len(agg)} variants"
                 + (f" (not for {', '.join(LABELS[v] for v in agg if v not in falls)})" if len(falls) < len(agg) else "")
                 + (": more history makes prediction easier, as it should." if len(falls) == len(agg)
                    else "; where loss does not fall with position, the model uses its history poorly."))  # fmt: skip
    tok = {a["tokens"] for a in agg.values()}
    params = {a["params"] for a in agg.values()}
    lines.append(f"- **Scale.** These runs use {max(params) / 1e6:.2f}M parameters and {max(tok):,} tokens each, "
                 f"{STUDY['params'] / max(params):.0f}x fewer parameters and {STUDY['tokens'] / max(tok):,.0f}x fewer tokens "
                 "than the study, on a different corpus and tokenizer; orderings that hold here need not hold at its "
                 "scale, and the reverse.")  # fmt: skip
    return lines


def write_outputs(results: dict[str, Any], out: Path) -> list[str]:
    figures = plot_all(results, out)
    (out / "table.md").write_text(study_table(results))
    (out / "report.md").write_text(render_markdown(results, None, figures))
    return figures


def render_page(results: dict[str, Any], page: Path, source: Path | None = None) -> None:
    """``page`` plus ``<page stem>/`` beside it with the figures and a copy of results.json."""
    assets = page.with_suffix("")
    assets.mkdir(parents=True, exist_ok=True)
    figures = plot_all(results, assets)
    target = assets / "results.json"
    if source is None or source.resolve() != target.resolve():
        target.write_text(json.dumps(results, indent=1))
    page.write_text(render_markdown(results, assets.name, figures))


# -----------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.from_json:
        source = Path(args.from_json)
        results = json.loads(source.read_text())
        render_page(results, Path(args.render), source)
        print(f"[compare] wrote {args.render} from {source}")
        return 0

    device = resolve_device(args.device or "auto")
    name = "quick" if args.quick else args.preset or ("owt-16m" if device.type == "cuda" else "cpu")
    preset = COMPARE_PRESETS[name]
    variants = args.variants or list(VARIANTS)
    seeds = args.seeds if args.seeds is not None else list(preset["seeds"])
    out = Path(args.out or f"out/compare-{name}")
    cpus = os.cpu_count() or 1
    n_jobs = args.jobs or (1 if device.type == "cuda" else min(4, cpus))
    threads = args.threads or (None if n_jobs == 1 else max(1, cpus // n_jobs))
    if threads is not None:  # in-process training, or the evaluation that runs beside the training processes
        torch.set_num_threads(threads)

    jobs, folders = [], {}
    for v in variants:
        for s in seeds:
            folder = run_dir(out, v, s)
            folders[(v, s)] = folder
            argv_run = train_argv(preset, v, s, folder, args)
            todo = plan_run(folder, argv_run, args.device)
            if todo is not None:
                jobs.append((v, s, folder, todo))
    print(f"[compare] preset {name}: {len(variants)} variants x {len(seeds)} seeds; {len(jobs)} run(s) to train, "
          f"{n_jobs} at a time; results in {out}", flush=True)  # fmt: skip

    evals: dict[tuple[str, int], dict[str, Any]] = {}

    def on_done(v: str, s: int) -> None:
        evals[(v, s)] = evaluate_run(folders[(v, s)], eval_windows=preset["eval_windows"], device=device)
        ext = evals[(v, s)]["extrapolation"]
        print(f"[compare] {v} seed {s}: val {read_summary(folders[(v, s)])['val_loss']:.4f}; by context "
              + ", ".join(f"{m}x {'n/a' if x is None else f'{x:.4f}'}" for m, x in ext.items()), flush=True)  # fmt: skip

    t0 = time.time()
    signal.signal(signal.SIGTERM, _interrupt)
    try:
        run_sweep(jobs, n_jobs, threads, on_done)
    except (Stop, KeyboardInterrupt) as e:
        code = e.code if isinstance(e, Stop) else 130
        print(f"[compare] stopped (exit {code}); run the same command again to continue", file=sys.stderr)
        return code
    wall = time.time() - t0

    runs: dict[str, dict[str, Any]] = {}
    for (v, s), folder in folders.items():
        summary = read_summary(folder)
        if (v, s) not in evals:
            evals[(v, s)] = evaluate_run(folder, eval_windows=preset["eval_windows"], device=device)
        runs[f"{v}/s{s}"] = {
            "variant": v, "seed": s, "folder": str(folder),
            "argv": json.loads((folder / "compare_run.json").read_text())["argv"],
            **{k: summary[k] for k in ("train_loss", "val_loss", "tokens", "steps", "params", "wall_time_s",
                                       "train_time_s", "samples", "pe", "layer_codes", "qk_norm")},
            "curve": read_curve(folder), "eval": evals[(v, s)],
        }  # fmt: skip
    first = read_summary(folders[(variants[0], seeds[0])])
    e0 = evals[(variants[0], seeds[0])]
    results = {
        "format": RESULTS_FORMAT,
        "created": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "command": "python examples/compare.py" + (" " + shlex.join(argv if argv is not None else sys.argv[1:])).rstrip(),
        "preset": name, "variants": variants, "seeds": seeds,
        "config": {k: list(v) if isinstance(v, tuple) else v for k, v in preset.items()} | {"multipliers": list(MULTIPLIERS)},
        "train_config": first["train_config"], "model_config": first["config"],
        "block_size": first["config"]["block_size"], "eval_tokens": e0["eval_tokens"],
        "per_position_long_width": e0["per_position_long_width"],
        "environment": environment(device, n_jobs, threads),
        "wall_time_s": wall, "runs_trained": len(jobs), "study": STUDY,
        "runs": runs,
    }  # fmt: skip
    results["aggregate"] = aggregate(runs, variants, seeds)
    results["comparisons"] = compare_pairs(runs, variants, seeds)
    tmp = out / "results.json.tmp"
    tmp.write_text(json.dumps(results, indent=1))
    os.replace(tmp, out / "results.json")
    write_outputs(results, out)
    print(f"[compare] wrote {out / 'results.json'}, table.md, report.md and figures in {wall / 60:.1f} min", flush=True)
    print(study_table(results))
    if args.render:
        render_page(results, Path(args.render))
        print(f"[compare] wrote {args.render}")
    return 0


def run(argv: list[str] | None = None) -> int:
    try:
        return main(argv)
    except (ValueError, DataError, CheckpointError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(run())

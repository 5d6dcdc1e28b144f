"""What the studies share: the environment a study ran in, a run's evaluation curve, and writing a
study's json (and its page)."""

from __future__ import annotations

import json
import os
import platform
import subprocess
from pathlib import Path
from typing import Any

import torch

from posenc.io import atomic_write
from posenc.train.runlog import read_log


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


def write_study(results: dict, out: Path, render: str | None) -> None:
    """``<out>/<kind>.json``, and the page at ``render`` when asked (:func:`posenc.report.studies.render_study`)."""
    kind = results["kind"]
    Path(out).mkdir(parents=True, exist_ok=True)
    atomic_write(Path(out) / f"{kind}.json", json.dumps(results, indent=1))
    print(f"[{kind}] wrote {Path(out) / f'{kind}.json'} ({results['wall_time_s'] / 60:.1f} min)", flush=True)
    if render:
        from posenc.report.studies import render_study

        render_study(results, Path(render))
        print(f"[{kind}] wrote {render}", flush=True)

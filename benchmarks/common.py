"""Shared helpers for the benchmarks: timing with interleaved repeats, medians, peak memory,
machine description, JSON output and markdown tables.

Every script measures its candidates round-robin in one process (A B C, B C A, ...) so that load
from other processes on a shared machine lands on all of them alike; ratios are taken between
medians measured in the same run.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import datetime
import json
import os
import platform
import statistics
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

RESULTS_DIR = Path(__file__).resolve().parent / "results"


def base_parser(name: str, description: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=f"benchmarks/{name}.py", description=description)
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    p.add_argument("--quick", action="store_true", help="fewer repeats and sizes (a short run)")
    p.add_argument("--smoke", action="store_true", help="tiny sizes, one repeat: checks that the script runs")
    p.add_argument("--repeats", type=int, default=None, help="timed repeats per candidate (default: by mode)")
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's choice)")
    p.add_argument(
        "--out",
        type=Path,
        default=None,
        help=f"JSON output path (default: benchmarks/results/{name}.json for a full run; "
        f"out/benchmarks/{name}-quick.json or -smoke.json otherwise, never the committed results)",
    )
    p.set_defaults(benchmark=name)
    return p


def default_out(name: str, *, quick: bool = False, smoke: bool = False) -> Path:
    """Where a run writes its JSON unless told: the committed results are a full run's alone."""
    if smoke or quick:
        return Path("out/benchmarks") / f"{name}-{'smoke' if smoke else 'quick'}.json"
    return RESULTS_DIR / f"{name}.json"


def speed(ratio: float, what: str = "") -> str:
    """``ratio`` (their time / ours) as words: "4.00x faster", or "4.00x slower" for 0.25, never "0.25x faster"."""
    words = f"{ratio:.2f}x faster" if ratio >= 1 else f"{1 / ratio:.2f}x slower"
    return f"{words} than {what}" if what else words


def setup(args: argparse.Namespace) -> torch.device:
    if args.out is None:
        args.out = default_out(args.benchmark, quick=args.quick, smoke=args.smoke)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda was given but torch.cuda.is_available() is False")
    torch.manual_seed(0)
    return device


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_info(device: torch.device) -> dict[str, Any]:
    info: dict[str, Any] = {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "cpu": cpu_model(),
        "cpu_count": os.cpu_count(),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "device": str(device),
    }
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
        info["cuda"] = torch.version.cuda
    return info


def time_interleaved(
    candidates: Mapping[str, Callable[[], Any]],
    *,
    repeats: int,
    warmup: int = 1,
    device: torch.device,
    before: Callable[[], Any] | None = None,
    inner: int = 1,
) -> dict[str, list[float]]:
    """Seconds per call of each candidate, ``repeats`` times, measured round-robin with the order
    rotated each round. ``before`` runs untimed before every call (e.g. clearing .grad). ``inner``
    calls per timing (then averaged) hide launch latency of microsecond GPU kernels."""
    names = list(candidates)
    for name in names:
        for _ in range(warmup):
            if before is not None:
                before()
            candidates[name]()
    sync(device)
    times: dict[str, list[float]] = {name: [] for name in names}
    for r in range(repeats):
        for name in names[r % len(names) :] + names[: r % len(names)]:
            if before is not None:
                before()
            sync(device)
            t0 = time.perf_counter()
            for _ in range(inner):
                if before is not None and inner > 1:
                    before()
                candidates[name]()
            sync(device)
            times[name].append((time.perf_counter() - t0) / inner)
    return times


def stats(seconds: Sequence[float]) -> dict[str, float]:
    """Median/min/max in milliseconds."""
    return {
        "median_ms": statistics.median(seconds) * 1e3,
        "min_ms": min(seconds) * 1e3,
        "max_ms": max(seconds) * 1e3,
        "repeats": len(seconds),
    }


# -- peak memory ----------------------------------------------------------------------------------


def _malloc_trim() -> None:
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)


def _rss_kib(field: str) -> int | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return None


def peak_memory_bytes(fn: Callable[[], Any], device: torch.device) -> int | None:
    """Peak memory that ``fn`` adds above what is held before it.

    CUDA: ``torch.cuda.max_memory_allocated`` (tensor memory only). CPU: the process's peak
    resident set (VmHWM, reset through /proc/self/clear_refs) minus the resident set before the
    call, after handing freed heap pages back with malloc_trim -- it counts every byte the call
    touched (tensors, allocator slack, page-granular), so it is an upper bound of tensor memory.
    ``None`` where the kernel does not allow resetting the peak.
    """
    if device.type == "cuda":
        sync(device)
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
        fn()
        sync(device)
        return torch.cuda.max_memory_allocated(device) - base
    _malloc_trim()
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return None
    base = _rss_kib("VmRSS")
    fn()
    peak = _rss_kib("VmHWM")
    if base is None or peak is None:
        return None
    return max(0, peak - base) * 1024


# -- output ---------------------------------------------------------------------------------------


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    def cell(v: Any) -> str:
        if isinstance(v, float):
            return f"{v:.3g}" if abs(v) < 100 else f"{v:.0f}"
        return "" if v is None else str(v)

    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def write_json(path: Path, payload: Mapping[str, Any], *, quiet: bool = False) -> None:
    """Write ``payload`` whole or not at all (a temporary file renamed over ``path``)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(payload, indent=1, default=str) + "\n")
    os.replace(tmp, path)
    if not quiet:
        print(f"\nwrote {path}")


def mib(n: int | None) -> float | None:
    return None if n is None else n / 2**20

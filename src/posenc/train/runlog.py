"""A run's records: ``log.jsonl`` (one JSON object per step and per evaluation), optional scalar
sinks (TensorBoard, Weights & Biases offline) fed the same numbers, ``summary.json`` and ``curves.png``.

Record kinds (every record has ``step`` and ``kind``)::

    {"kind": "train", "step", "loss", "lr", "tokens", "tokens_per_s", "grad_norm", "loss_scale",
     "skipped", "skipped_total"}
    {"kind": "eval", "step", "val_loss", "train_loss", "tokens", "time_s"}

A resumed run first drops the records at or after its checkpoint's step (they came from steps the
resumed run repeats), so the log reads as one uninterrupted run.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

from posenc.io import atomic_write

LOG_NAME = "log.jsonl"
SUMMARY_NAME = "summary.json"

#: The scalars each sink receives: name -> the record field, per record kind.
SCALARS = {"train": ("loss", "lr", "grad_norm", "tokens_per_s", "loss_scale"), "eval": ("val_loss", "train_loss")}


def read_log(run_dir: str | os.PathLike) -> list[dict[str, Any]]:
    """The complete records of a run's log.jsonl (a line cut by a kill is ignored)."""
    path = Path(run_dir) / LOG_NAME
    if not path.exists():
        return []
    out = []
    for line in path.read_text().splitlines():
        try:
            out.append(json.loads(line))
        except ValueError:
            continue
    return out


def read_summary(run_dir: str | os.PathLike) -> dict[str, Any] | None:
    """summary.json of a finished run, or None (absent, or cut short while being written)."""
    try:
        return json.loads((Path(run_dir) / SUMMARY_NAME).read_text())
    except (OSError, ValueError):
        return None


def write_summary(run_dir: str | os.PathLike, summary: dict[str, Any]) -> None:
    atomic_write(Path(run_dir) / SUMMARY_NAME, json.dumps(summary, indent=1))


class RunLog:
    """Appends records to ``log.jsonl`` (rank 0 only; other ranks pass ``enabled=False``)."""

    def __init__(self, run_dir: Path, *, start_step: int, enabled: bool = True, sinks: tuple[str, ...] = ()) -> None:
        self.records: list[dict[str, Any]] = []
        self._file = None
        self._sinks: list[Any] = []
        if not enabled:
            return
        run_dir.mkdir(parents=True, exist_ok=True)
        path = run_dir / LOG_NAME
        if start_step == 0:
            path.unlink(missing_ok=True)  # a fresh run replaces a previous one's log
        else:
            self.records = [r for r in read_log(run_dir) if r["step"] < start_step]
            atomic_write(path, "".join(json.dumps(r) + "\n" for r in self.records))
        self._file = open(path, "a")  # noqa: SIM115 -- appended to for the whole run, closed by close()
        self._sinks = [_open_sink(name, run_dir) for name in sinks]

    def write(self, record: dict[str, Any]) -> None:
        if self._file is None:
            return
        self.records.append(record)
        self._file.write(json.dumps(record) + "\n")
        self._file.flush()
        for sink in self._sinks:
            sink.log(record)

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
        for sink in self._sinks:
            sink.close()
        self._sinks = []


class Throughput:
    """Tokens/s for the console, smoothed: an exponential moving average of the seconds per step
    (averaging time, not rates, weighs a slow step by how long it took). The first step, which
    holds warm-up and compilation, is shown alone and then dropped."""

    def __init__(self, smoothing: float = 0.1) -> None:
        self.smoothing, self.steps, self.seconds = smoothing, 0, None

    def update(self, tokens_per_s: float) -> float:
        """The smoothed tokens/s after a step measured at ``tokens_per_s`` (of a fixed token count)."""
        self.steps += 1
        seconds = 1.0 / tokens_per_s
        if self.steps <= 2 or self.seconds is None:
            self.seconds = seconds
        else:
            self.seconds += self.smoothing * (seconds - self.seconds)
        return 1.0 / self.seconds


class _TensorBoard:
    def __init__(self, run_dir: Path) -> None:
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            raise ValueError(
                "TrainConfig.log_to has 'tensorboard' but it is not installed (pip install 'posenc[track]')"
            ) from None
        self.writer = SummaryWriter(log_dir=str(run_dir / "tensorboard"))

    def log(self, record: dict[str, Any]) -> None:
        for name in SCALARS.get(record["kind"], ()):
            if record.get(name) is not None:
                self.writer.add_scalar(f"{record['kind']}/{name}", record[name], record["step"])

    def close(self) -> None:
        self.writer.close()


class _Wandb:
    def __init__(self, run_dir: Path) -> None:
        try:
            import wandb
        except ImportError:
            raise ValueError("TrainConfig.log_to has 'wandb' but it is not installed (pip install wandb)") from None
        self.run = wandb.init(dir=str(run_dir), mode="offline", project="posenc", name=run_dir.name)

    def log(self, record: dict[str, Any]) -> None:
        values = {
            f"{record['kind']}/{n}": record[n] for n in SCALARS.get(record["kind"], ()) if record.get(n) is not None
        }
        self.run.log(values, step=record["step"])

    def close(self) -> None:
        self.run.finish()


def _open_sink(name: str, run_dir: Path) -> Any:
    return {"tensorboard": _TensorBoard, "wandb": _Wandb}[name](run_dir)


def plot_curves(records: list[dict[str, Any]], path: Path) -> None:
    """Train and validation loss against tokens; skipped without matplotlib (a note on stderr)."""
    if not records:
        return
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed: no curves.png (pip install 'posenc[train]')", file=sys.stderr)
        return
    train = [(r["tokens"], r["loss"]) for r in records if r["kind"] == "train" and not r["skipped"]]
    val = [(r["tokens"], r["val_loss"]) for r in records if r["kind"] == "eval"]
    fig, ax = plt.subplots(figsize=(7, 4.5))
    if train:
        ax.plot(*zip(*train), lw=0.8, alpha=0.6, label="train (per step)")
    if val:
        ax.plot(*zip(*val), "o-", label="validation")
    ax.set_xlabel("tokens")
    ax.set_ylabel("loss")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    atomic_write(path, lambda f: fig.savefig(f, dpi=120, format="png"))
    plt.close(fig)

"""Runs of a sweep or a study as folders, and the settings every study shares.

- :class:`Sweep`: the resolved settings of one ``compare`` invocation (preset, output folder,
  device, parallelism, seeds, data), as :mod:`posenc.sweep` (the command line) builds them;
  :meth:`Sweep.spec` is the :class:`~posenc.train.run.RunSpec` of a variant (a name of
  :mod:`posenc.variants`) at a seed, with a study's own overrides.
- :func:`plan_run`: whether a folder still needs training. A folder holds its run's ``run.json``;
  one started with other settings (another identity) is refused rather than mixed into the comparison.
- :func:`train_jobs`: train folders in this process or in worker processes (each trains the run
  saved in its folder with :func:`~posenc.train.loop.train_folder`: from its latest checkpoint or
  from step 0), with a stop (Ctrl-C, SIGTERM) checkpointing every running run. A run whose loss
  became non-finite is a finished run too (recorded in ``diverged.json``): a result, not an error.
  Workers are spawned interpreters (:mod:`multiprocessing`): a script that trains more than one job
  at a time calls this under ``if __name__ == "__main__":``.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import signal
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from posenc.checkpoint import CheckpointError
from posenc.io import atomic_write
from posenc.train.args import FIELD_FLAGS, guarded, is_out_of_memory, out_of_memory_message
from posenc.train.loop import handle_stop_signals, resume_configs, train_folder
from posenc.train.run import RunSpec, build_spec
from posenc.train.runlog import read_summary

#: Written into a run folder whose loss became non-finite: a finished run (a result of a study), not
#: one to resume.
DIVERGED = "diverged.json"
EXIT_NONFINITE = 3  # posenc train's exit code when the loss became non-finite


@dataclass(frozen=True)
class SweepPreset:
    """A train preset, TrainConfig fields on top of it, the seeds, and the evaluation
    (``eval_windows`` validation windows of max(multipliers) x block_size tokens)."""

    train_preset: str
    train: Mapping[str, Any]
    seeds: tuple[int, ...]
    eval_windows: int

    def to_dict(self) -> dict[str, Any]:
        return {"train_preset": self.train_preset, "train": dict(self.train), "seeds": list(self.seeds)} | {
            "eval_windows": self.eval_windows
        }


@dataclass(frozen=True)
class Sweep:
    """What every study of one ``compare`` invocation shares (its flags, resolved)."""

    name: str  # the sweep preset's name
    preset: SweepPreset
    out: Path
    device: torch.device
    jobs: int = 1
    threads: int | None = None
    seeds: tuple[int, ...] = ()
    variants: tuple[str, ...] | None = None
    data_dir: str | None = None
    data_files: tuple[str, ...] = ()
    run_device: str | None = None  # --device as given: every run gets it
    render: str | None = None
    command: str = ""
    settings: Any = None  # a study's own settings (e.g. posenc.studies.lr.Settings)

    def run_dir(self, variant: str, seed: int) -> Path:
        return self.out / "runs" / f"{variant}-s{seed}"

    def spec(
        self,
        variant: str,
        seed: int,
        folder: Path,
        *,
        model: Mapping[str, Any] | None = None,
        train: Mapping[str, Any] | None = None,
    ) -> RunSpec:
        """The run of ``variant`` at ``seed`` in ``folder``: the preset, the variant's own overrides,
        the data and device every run gets, then ``model``/``train`` (a study's)."""
        from posenc.variants import variant as get_variant

        v = get_variant(variant)
        placed: dict[str, Any] = {"seed": seed, "out_dir": str(folder)}
        if self.data_dir:
            placed["data_dir"] = self.data_dir
        if self.data_files:
            placed["data_files"] = tuple(self.data_files)
            placed["dataset"] = "files"
        if self.run_device:
            placed["device"] = self.run_device
        model = {"pe": variant} | dict(model or {})
        return build_spec(
            self.preset.train_preset,
            model=model,
            train=dict(self.preset.train) | dict(v.train) | placed | dict(train or {}),
        )

    def train(self, jobs: list[tuple[str, int, Path]], on_done: Callable[[str, int], None] = lambda v, s: None) -> int:
        return train_jobs(jobs, self.jobs, self.threads, on_done)


# -- planning -----------------------------------------------------------------------------------------


def saved_spec(folder: Path) -> RunSpec | None:
    """The run a folder was started with (its run.json, or a 0.1-0.2 folder's checkpoint), or None."""
    try:
        return RunSpec(*resume_configs(folder))
    except CheckpointError:
        return None


def plan_run(folder: Path, spec: RunSpec) -> bool:
    """Whether ``folder`` still needs training to be the finished run ``spec``; a folder started with
    other settings is refused rather than mixed into the comparison. Saves the spec when it will train."""
    saved = saved_spec(folder) if folder.exists() else None
    if saved is not None and saved.identity() != spec.identity():
        diff = saved.differences(spec)
        shown = "".join(f"\n  {line}" for line in diff[:8]) + (
            f"\n  ... and {len(diff) - 8} more" if len(diff) > 8 else ""
        )
        raise ValueError(
            f"{folder} was trained with other settings (saved != asked now):{shown}\n"
            "Give another --out, or move that folder away to train it again"
        )
    if read_summary(folder) is not None or (folder / DIVERGED).exists():
        return False
    spec.save(folder)  # the same run; its placement (device) as asked now
    return True


# -- training: in this process, or n_jobs worker processes -----------------------------------------


class Stop(Exception):
    def __init__(self, code: int) -> None:
        self.code = code


def train_in_process(folder: Path) -> int:
    """Train the run saved in ``folder`` (from its latest checkpoint, or from step 0); its exit code:
    0, 2 for a user error (printed), 3 when the loss became non-finite, 128 + signal when stopped."""

    def go() -> int:
        with handle_stop_signals() as stop:
            try:
                result = train_folder(folder, stop=stop, progress=False)
            except (RuntimeError, MemoryError) as e:
                if not is_out_of_memory(e):
                    raise
                raise ValueError(out_of_memory_message(RunSpec.load(folder))) from None
        return int(result["exit_code"]) if result and result.get("stopped") else 0

    return guarded(go, FIELD_FLAGS)


def _worker(folder: str, log: str, threads: int | None) -> None:
    """A worker process: :func:`train_in_process` with its output appended to ``log``."""
    fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    os.close(fd)
    if threads is not None:  # small models scale poorly over threads: parallel runs use the cores better
        torch.set_num_threads(threads)
    sys.exit(train_in_process(Path(folder)))


def _finished(folder: Path, code: int, name: str, seed: int) -> bool:
    """True when a run's exit ``code`` ends it: 0, or a non-finite loss (recorded in DIVERGED)."""
    if code == EXIT_NONFINITE:
        print(f"[compare] {name} seed {seed}: the loss became non-finite; recorded as diverged", flush=True)
        atomic_write(folder / DIVERGED, json.dumps({"exit_code": code}))
        return True
    return code == 0


def _interrupt(signum, frame) -> None:  # noqa: ARG001
    raise KeyboardInterrupt  # SIGTERM stops the sweep like Ctrl-C: runs checkpoint, then exit


def run_sweep(
    jobs: list[tuple[str, int, Path]], n_jobs: int, threads: int | None, on_done: Callable[[str, int], None]
) -> None:
    """Train ``jobs`` (name, seed, folder), ``n_jobs`` at a time; ``on_done(name, seed)`` after each.
    A run that fails or is stopped ends the sweep (its checkpoint is kept)."""
    if n_jobs == 1:
        for name, seed, folder in jobs:
            print(f"[compare] train {name} seed {seed} in {folder}", flush=True)
            code = train_in_process(folder)
            if not _finished(folder, code, name, seed):
                raise Stop(code)
            on_done(name, seed)
        return
    spawn = multiprocessing.get_context("spawn")  # a fresh interpreter: no forked torch threads or locks
    pending, running = list(jobs), {}
    try:
        while pending or running:
            while pending and len(running) < n_jobs:
                name, seed, folder = pending.pop(0)
                (folder / "train.out").touch()  # the worker appends to it
                proc = spawn.Process(target=_worker, args=(str(folder), str(folder / "train.out"), threads))
                proc.start()
                running[proc] = (name, seed, folder)
                print(f"[compare] train {name} seed {seed} (log {folder / 'train.out'})", flush=True)
            time.sleep(0.5)
            for proc in [p for p in running if p.exitcode is not None]:
                name, seed, folder = running.pop(proc)
                if not _finished(folder, proc.exitcode, name, seed):
                    tail = (folder / "train.out").read_text(errors="replace").splitlines()[-5:]
                    print(
                        f"[compare] {name} seed {seed} exited with {proc.exitcode}:\n  " + "\n  ".join(tail),
                        file=sys.stderr,
                    )
                    raise Stop(proc.exitcode)
                on_done(name, seed)
    except (KeyboardInterrupt, Stop) as e:
        # SIGTERM, not SIGINT: a run that already got the terminal's SIGINT would die at a second one
        for proc in running:
            if proc.exitcode is None:
                proc.terminate()
        for proc in running:
            proc.join()
        raise e if isinstance(e, Stop) else Stop(130) from None


def train_jobs(
    jobs: list[tuple[str, int, Path]],
    n_jobs: int,
    threads: int | None,
    on_done: Callable[[str, int], None] = lambda v, s: None,
) -> int:
    """:func:`run_sweep` with SIGTERM stopping it like Ctrl-C; 0, or the exit code it stopped with."""
    previous = signal.signal(signal.SIGTERM, _interrupt)
    try:
        run_sweep(jobs, n_jobs, threads, on_done)
    except (Stop, KeyboardInterrupt) as e:
        code = e.code if isinstance(e, Stop) else 130
        print(f"[compare] stopped (exit {code}); run the same command again to continue", file=sys.stderr)
        return code
    finally:
        signal.signal(signal.SIGTERM, previous)
    return 0

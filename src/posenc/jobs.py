"""Runs of a sweep or a study as folders: planning (which train flags bring a folder to a finished
run, refusing a folder started with other settings) and training them, in this process or in
worker processes, with a stop (Ctrl-C, SIGTERM) checkpointing every running run. A run whose loss
became non-finite is a finished run too (recorded in ``diverged.json``): a result, not an error.
"""

from __future__ import annotations

import json
import os
import shlex
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

from posenc.checkpoint import CheckpointError, read_manifest
from posenc.io import atomic_write
from posenc.train.args import guarded, run_train, train_parser
from posenc.train.runlog import read_summary

#: Written into a run folder whose loss became non-finite: a finished run (a result of a study), not
#: one to resume.
DIVERGED = "diverged.json"
EXIT_NONFINITE = 3  # posenc train's exit code when the loss became non-finite


# -- planning -----------------------------------------------------------------------------------------


def _without_device(argv: list[str]) -> list[str]:
    if "--device" not in argv:
        return argv
    i = argv.index("--device")
    return argv[:i] + argv[i + 2 :]


def plan_run(folder: Path, argv: list[str], device: str | None) -> list[str] | None:
    """The train flags that bring ``folder`` to a finished run, or None when it is one. A folder
    started with other settings is refused rather than mixed into the comparison."""
    spec_path = folder / "compare_run.json"
    if spec_path.exists():
        saved = json.loads(spec_path.read_text())["argv"]
        if _without_device(saved) != _without_device(argv):
            raise ValueError(
                f"{folder} was trained with other settings ({shlex.join(saved)}); use another --out or remove it"
            )
    if read_summary(folder) is not None or (folder / DIVERGED).exists():
        return None
    folder.mkdir(parents=True, exist_ok=True)
    atomic_write(spec_path, json.dumps({"argv": argv}, indent=1))
    try:
        has_checkpoint = read_manifest(folder) is not None
    except CheckpointError:
        has_checkpoint = False
    if has_checkpoint:
        return ["--out-dir", str(folder), "--resume", "--no-progress"] + (["--device", device] if device else [])
    return argv


# -- training: in this process, or n_jobs worker processes -----------------------------------------


class Stop(Exception):
    def __init__(self, code: int) -> None:
        self.code = code


def train_in_process(argv: list[str]) -> int:
    return guarded(lambda: run_train(train_parser().parse_args(argv)))


def _finished(folder: Path, code: int, variant: str, seed: int) -> bool:
    """True when a run's exit ``code`` ends it: 0, or a non-finite loss (recorded in DIVERGED)."""
    if code == EXIT_NONFINITE:
        print(f"[compare] {variant} seed {seed}: the loss became non-finite; recorded as diverged", flush=True)
        atomic_write(folder / DIVERGED, json.dumps({"exit_code": code}))
        return True
    return code == 0


def _interrupt(signum, frame) -> None:  # noqa: ARG001
    raise KeyboardInterrupt  # SIGTERM stops the sweep like Ctrl-C: runs checkpoint, then exit


def run_sweep(
    jobs: list[tuple[str, int, Path, list[str]]], n_jobs: int, threads: int | None, on_done: Callable[[str, int], None]
) -> None:
    """Train ``jobs`` (variant, seed, folder, argv), ``n_jobs`` at a time; ``on_done(variant, seed)``
    after each. A run that fails or is stopped ends the sweep (its checkpoint is kept)."""
    if n_jobs == 1:
        for variant, seed, folder, argv in jobs:
            print(f"[compare] train {variant} seed {seed}: posenc train {shlex.join(argv)}", flush=True)
            code = train_in_process(argv)
            if not _finished(folder, code, variant, seed):
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
                log = open(folder / "train.out", "ab")  # noqa: SIM115 -- the worker writes it until it exits
                proc = subprocess.Popen(
                    [sys.executable, "-m", "posenc", "train", *argv], stdout=log, stderr=subprocess.STDOUT, env=env
                )
                running[proc] = (variant, seed, folder, log)
                print(
                    f"[compare] train {variant} seed {seed} (log {folder / 'train.out'}): posenc train {shlex.join(argv)}",
                    flush=True,
                )
            time.sleep(0.5)
            for proc in [p for p in running if p.poll() is not None]:
                variant, seed, folder, log = running.pop(proc)
                log.close()
                if not _finished(folder, proc.returncode, variant, seed):
                    tail = (folder / "train.out").read_text(errors="replace").splitlines()[-5:]
                    print(
                        f"[compare] {variant} seed {seed} exited with {proc.returncode}:\n  " + "\n  ".join(tail),
                        file=sys.stderr,
                    )
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


def train_jobs(
    jobs: list[tuple[str, int, Path, list[str]]],
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

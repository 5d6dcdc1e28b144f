"""Helpers shared by the training-reliability tests (resume, checkpoints, numerics, DDP).

Training is ``posenc.train.train``, reached through the command's flags (``posenc.cli``); the
tests drive it three ways:

* in-process, through :func:`train` (cheap: no interpreter start, no torch import);
* in a forked child of the test process, when a test needs a process it can SIGKILL or signal
  (a fork starts in milliseconds, an interpreter importing torch takes seconds on 2 busy cores);
* as a fresh interpreter (``python examples/pretrain_owt.py`` or ``torchrun``), where the guarantee
  is about a real process: exit codes, tracebacks on stderr, ``-O``, DDP.

Faults (an inf gradient, a NaN loss) are injected through the trainer's test hooks
(:class:`Faults`), in a fresh interpreter through ``tests/_faulty_train.py``.

Every run uses the ``tiny`` preset on the embedded byte-level corpus, prepared once per session.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch

import posenc.train.runlog
from posenc.cli import run_train, train_parser

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "examples" / "pretrain_owt.py"
FAULTY_SCRIPT = ROOT / "tests" / "_faulty_train.py"

# Fields of log.jsonl that are measurements of the run itself (wall time), not of the numerics.
TIMING_FIELDS = frozenset({"tokens_per_s", "time_s"})


class Faults:
    """Trainer hooks that make failures on purpose: ``"inf-grad@S1,S2;nan-loss@S"`` sets the
    gradients to inf after those steps' backward, and makes rank 0's loss NaN at step S."""

    def __init__(self, spec: str = "") -> None:
        self.steps: dict[str, set[int]] = {"inf-grad": set(), "nan-loss": set()}
        for part in filter(None, spec.split(";")):
            kind, _, steps = part.partition("@")
            if kind not in self.steps or not steps:
                raise ValueError(f"faults: expected 'inf-grad@S1,S2' or 'nan-loss@S', got {part!r}")
            self.steps[kind] |= {int(s) for s in steps.split(",")}

    def on_loss(self, step: int, micro: int, loss: torch.Tensor) -> torch.Tensor:
        rank = torch.distributed.get_rank() if torch.distributed.is_initialized() else 0
        return loss * float("nan") if step in self.steps["nan-loss"] and rank == 0 else loss

    def on_gradients(self, step: int, params: list[torch.Tensor]) -> None:
        if step in self.steps["inf-grad"]:
            params[0].grad.fill_(float("inf"))


def tiny_argv(out_dir: Path, data_dir: Path, *extra: str, **flags: Any) -> list[str]:
    """Arguments of a tiny CPU run. ``flags`` override the defaults (``max_iters=40`` ->
    ``--max-iters 40``; ``None`` drops a flag); ``extra`` is appended verbatim."""
    values: dict[str, Any] = dict(
        preset="tiny",
        device="cpu",
        data_dir=data_dir,
        out_dir=out_dir,
        num_samples=0,
        batch_size=2,
        grad_accum=1,
        max_iters=20,
        log_interval=1000,
        eval_interval=10,
        eval_iters=1,
        ckpt_interval=1000,
    )
    values |= flags
    argv = ["--no-progress"]
    for key, value in values.items():
        if value is not None:
            argv += [f"--{key.replace('_', '-')}", str(value)]
    return argv + list(extra)


def resume_argv(out_dir: Path, *extra: str) -> list[str]:
    return ["--resume", "--no-progress", "--out-dir", str(out_dir), *extra]


def train(argv: list[str], faults: str = "") -> int:
    """One in-process run from the command's flags; its exit code. curves.png is not under test
    here, and drawing it (matplotlib import + savefig) would cost more than a tiny run itself."""
    plot, posenc.train.runlog.plot_curves = posenc.train.runlog.plot_curves, lambda *args, **kwargs: None
    try:
        return run_train(train_parser().parse_args([str(a) for a in argv]), hooks=Faults(faults) if faults else None)
    finally:
        posenc.train.runlog.plot_curves = plot


def read_log(out_dir: Path) -> list[dict]:
    lines = (Path(out_dir) / "log.jsonl").read_text().splitlines()
    return [json.loads(line) for line in lines if line.strip()]


def numerics(records: list[dict]) -> list[dict]:
    """The log without wall-clock fields: what an exact resume must reproduce."""
    return [{k: v for k, v in r.items() if k not in TIMING_FIELDS} for r in records]


def train_losses(out_dir: Path) -> list[float]:
    return [r["loss"] for r in read_log(out_dir) if r["kind"] == "train"]


def latest(out_dir: Path) -> dict:
    from posenc.checkpoint import load_checkpoint

    return load_checkpoint(out_dir)


def assert_states_equal(a: dict, b: dict, what: str = "state") -> None:
    """Bitwise equality of two state dicts (same keys, torch.equal on every tensor)."""
    assert a.keys() == b.keys(), f"{what}: keys differ: {sorted(set(a) ^ set(b))}"
    for key in a:
        assert torch.equal(a[key], b[key]), f"{what}: {key} differs (max |diff| {(a[key] - b[key]).abs().max()})"


def max_abs_diff(a: dict, b: dict) -> float:
    assert a.keys() == b.keys()
    return max(float((a[k].double() - b[k].double()).abs().max()) for k in a)


# -- processes --------------------------------------------------------------------------------


def env(**extra: str) -> dict[str, str]:
    """Environment of a child interpreter: one thread, no inherited torchrun variables."""
    e = {
        k: v
        for k, v in os.environ.items()
        if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT", "LOCAL_WORLD_SIZE")
    }
    e.update(OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    e.update(extra)
    return e


def run_script(
    argv: list[str], *, timeout: float = 120, python_flags: tuple[str, ...] = (), faults: str = ""
) -> subprocess.CompletedProcess:
    """The script in a fresh interpreter (with ``faults``, the test script that injects them)."""
    script = [str(FAULTY_SCRIPT), faults] if faults else [str(SCRIPT)]
    return subprocess.run(
        [sys.executable, *python_flags, *script, *map(str, argv)],
        env=env(),
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def fork_train(argv: list[str], output: Path) -> int:
    """Start ``run(argv)`` in a forked child (stdout/stderr to ``output``); its pid. The child
    exits with run()'s return value, as ``sys.exit(run())`` does in the script."""
    sys.stdout.flush()
    sys.stderr.flush()
    pid = os.fork()
    if pid == 0:  # child: never return into pytest
        code = 99
        try:
            torch.set_num_threads(1)  # the parent's thread pool does not survive a fork
            fd = os.open(output, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
            os.dup2(fd, 1)
            os.dup2(fd, 2)
            for sig in (signal.SIGTERM, signal.SIGINT):
                signal.signal(sig, signal.SIG_DFL)
            code = train(argv)
        except BaseException:  # noqa: BLE001 -- report, then exit without running pytest's teardown
            import traceback

            traceback.print_exc()
            code = 98
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(code)
    return pid


def wait_pid(pid: int, timeout: float = 60) -> int:
    """Exit code of a child (negative signal number when killed); SIGKILLs it after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return os.waitstatus_to_exitcode(status)
        if time.monotonic() > deadline:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            raise TimeoutError(f"child {pid} still running after {timeout} s")
        time.sleep(0.005)


def wait_for(predicate: Callable[[], bool], timeout: float, what: str, poll: float = 0.005) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError(f"waited {timeout} s for {what}")
        time.sleep(poll)


def logged_steps(out_dir: Path) -> int:
    """Number of complete train records in log.jsonl (0 when there is none yet)."""
    try:
        text = (Path(out_dir) / "log.jsonl").read_text()
    except FileNotFoundError:
        return 0
    return text.count('"kind": "train"')


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def torchrun(nproc: int, argv: list[str], **popen: Any) -> subprocess.Popen:
    """``python -m torch.distributed.run --standalone --nproc_per_node=N script argv`` (gloo on CPU)."""
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc_per_node={nproc}",
        str(SCRIPT),
        *map(str, argv),
    ]
    return subprocess.Popen(cmd, env=env(), cwd=ROOT, **popen)


def children(pid: int) -> list[int]:
    """Direct children of ``pid`` (Linux /proc)."""
    try:
        text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    except FileNotFoundError:
        return []
    return [int(c) for c in text.split()]


@contextlib.contextmanager
def reaped(proc: subprocess.Popen) -> Iterator[subprocess.Popen]:
    """Never leave a launcher or its workers behind, whatever the test does."""
    try:
        yield proc
    finally:
        if proc.poll() is None:
            for child in children(proc.pid):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(child, signal.SIGKILL)
            proc.kill()
        proc.wait(timeout=30)

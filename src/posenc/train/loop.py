"""``train()``: one pretraining run, from prepared data to a checkpointed, summarised model (the
work itself is :class:`~posenc.train.trainer.Trainer`'s), and what makes a run resumable.

A run folder holds ``run.json`` (its :class:`~posenc.train.run.RunSpec`, written as soon as the run
starts), checkpoints (``ckpt-*.pt`` behind ``checkpoints.json``), ``log.jsonl`` and, when done,
``summary.json``. ``train(..., resume=True)`` continues from the latest checkpoint, or starts from
step 0 when the run was killed before its first one; :func:`resume_configs` reads the configs a
folder was started with.

Stopping: when ``stop`` (a list that a signal handler appends the signal number to; see
:func:`handle_stop_signals`) becomes non-empty, the loop finishes the current step on every rank,
checkpoints and returns ``128 + signal``. ``stop_at`` stops the same way at a step, as if
interrupted.
"""

from __future__ import annotations

import contextlib
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from posenc.checkpoint import CheckpointError, read_manifest
from posenc.config import GPTConfig
from posenc.train import state
from posenc.train.config import TrainConfig
from posenc.train.distributed import Dist
from posenc.train.run import RunSpec
from posenc.train.source import is_pretrained, load_source
from posenc.train.trainer import Trainer, data_dir_of, generate_samples

__all__ = ["data_dir_of", "generate_samples", "handle_stop_signals", "has_checkpoint", "resume_configs", "train"]


@contextlib.contextmanager
def handle_stop_signals() -> Iterator[list[int]]:
    """SIGTERM/SIGINT append their number to the yielded list (the loop stops at the next step);
    a second signal kills at once. The previous handlers come back on exit."""
    stop: list[int] = []

    def on_signal(signum, frame):  # noqa: ARG001
        stop.append(signum)
        signal.signal(signum, signal.SIG_DFL)

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield stop
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def has_checkpoint(run_dir: str | Path) -> bool:
    """True when a checkpoint was ever committed in ``run_dir`` (a damaged manifest counts: loading it
    then says what is wrong)."""
    try:
        return read_manifest(run_dir) is not None
    except CheckpointError:
        return True


def train(
    config: GPTConfig,
    cfg: TrainConfig,
    *,
    resume: bool = False,
    stop: list[int] | None = None,
    stop_at: int | None = None,
    progress: bool = True,
    hooks: Any = None,
    log: Any = print,
) -> dict[str, Any] | None:
    """Train ``config`` as ``cfg`` says, in ``cfg.out_dir``; the summary (rank 0; None on other
    ranks), or ``{"stopped": True, "exit_code", "step"}`` when stopped early. With ``resume`` the
    run continues from its latest checkpoint -- written with these configs (see
    :func:`resume_configs`) -- or starts from step 0 when it has none yet."""
    t_start = time.time()
    stop = [] if stop is None else stop
    dist = Dist.from_env(cfg.device)
    try:
        out_dir = Path(cfg.out_dir)
        # checkpoints first: a damaged one is refused before any data is prepared
        ckpt = state.load_run(out_dir) if resume and has_checkpoint(out_dir) else None
        init = None if cfg.init_from is None or ckpt is not None else _initial_weights(cfg.init_from)
        if dist.master and not (resume and RunSpec.load(out_dir) is not None):
            # the spec first of all: a run killed at any later moment can be resumed
            RunSpec(config, cfg.replace(world_size=dist.world) if cfg.world_size != dist.world else cfg).save(out_dir)
        trainer = Trainer(
            config,
            cfg,
            dist,
            ckpt=ckpt,
            init=init,
            progress=progress,
            hooks=hooks,
            log=log if dist.master else _quiet,
        )
        del ckpt, init
        trainer.log(trainer.describe())
        code = trainer.run(stop, stop_at, progress)
        if code is not None:
            return {"stopped": True, "exit_code": code, "step": trainer.step_count}
        summary = _finish(trainer, time.time() - t_start) if dist.master else None
        dist.barrier()  # keep every rank in the group until rank 0 has written its summary
        return summary
    finally:
        dist.close()


def _finish(trainer: Trainer, wall_time_s: float) -> dict[str, Any]:
    summary = trainer.summarize(wall_time_s)
    trainer.log(
        f"done: train loss {summary['train_loss']:.4f} | val loss {summary['val_loss']:.4f} | "
        f"{summary['tokens']:,} tokens | {summary['wall_time_s']:.0f} s | {trainer.out_dir}"
    )
    for s in summary["samples"]:
        trainer.log("--- sample ---\n" + s)
    return summary


def _quiet(*args: Any, **kwargs: Any) -> None:
    pass


def resume_configs(
    run_dir: str | Path, *, device: str | None = None, world_size: int | None = None
) -> tuple[GPTConfig, TrainConfig]:
    """The configs a run folder was started with -- its ``run.json``, or, for folders of posenc 0.1-0.2,
    its latest checkpoint -- to pass to ``train(..., resume=True)``; ``device`` and ``world_size``
    may change between sessions. A folder with neither raises :class:`CheckpointError`."""
    spec = RunSpec.load(run_dir)
    if spec is None:
        if not has_checkpoint(run_dir):
            raise CheckpointError(run_dir, "holds no saved run (run.json) and no checkpoint")
        saved = state.load_run(run_dir)
        spec = RunSpec(GPTConfig.from_dict(saved["config"]), TrainConfig.from_dict(saved["train_config"]))
    changes = {"out_dir": str(run_dir)}
    if device is not None:
        changes["device"] = device
    if world_size is not None:
        changes["world_size"] = world_size
    return spec.model, spec.train.replace(**changes)


def _initial_weights(init_from: str) -> dict[str, Any]:
    """The weights ``--init-from`` names: a pretrained model's (GGUF file or model folder) or a run's final ones."""
    if is_pretrained(init_from):
        return load_source(str(init_from)).state_dict()
    return state.load_run(init_from)["model"]

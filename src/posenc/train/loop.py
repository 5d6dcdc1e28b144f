"""One pretraining run, from prepared data to a checkpointed, summarised model (the work itself is
:class:`~posenc.train.trainer.Trainer`'s), and what makes a run resumable.

:func:`train_spec` is the run core: it takes a :class:`~posenc.train.run.RunSpec`.
:func:`train_folder` trains the run saved in a folder (a sweep's jobs: :mod:`posenc.jobs`), and
:func:`train` (``train(model_config, train_config)``) builds the spec from the two configs.

A run folder holds ``run.json`` (its :class:`~posenc.train.run.RunSpec`, written as soon as the run
starts), checkpoints (``ckpt-*.pt`` behind ``checkpoints.json``), ``log.jsonl``, ``run.lock`` and,
when done, ``summary.json``. ``train()`` on a folder that holds the same run continues it from the
latest checkpoint, or from step 0 when the run was killed before its first one, and leaves a
finished one as it is (:func:`plan_folder`); :func:`resume_configs` reads the configs a folder was
started with.

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
from posenc.devices import resolve_device, resolve_dtype
from posenc.train import state
from posenc.train.config import TrainConfig
from posenc.train.distributed import Dist
from posenc.train.run import SPEC_NAME, RunSpec, clear_run, hold_folder, refuse_another_run
from posenc.train.runlog import read_summary
from posenc.train.source import is_pretrained, load_source
from posenc.train.trainer import Trainer, check_data_dir, data_dir_of, generate_samples

__all__ = [
    "data_dir_of",
    "generate_samples",
    "handle_stop_signals",
    "has_checkpoint",
    "plan_folder",
    "resume_configs",
    "train",
    "train_folder",
    "train_spec",
]


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


def plan_folder(out_dir: str | Path, spec: RunSpec, *, overwrite: bool = False, resume: bool = False) -> str:
    """What training ``spec`` in ``out_dir`` does: ``"start"`` (a folder holding no run),
    ``"overwrite"`` (``overwrite`` and a folder holding a run), ``"resume"`` (the same run, unfinished:
    from its latest checkpoint, or from step 0 when it has none) or ``"finished"`` (the same run, done).
    A folder of another run is refused (:func:`~posenc.train.run.refuse_another_run`), unless
    ``resume`` says that ``spec`` continues it (``"resume"``). Reads only."""
    out_dir = Path(out_dir)
    if not (out_dir / SPEC_NAME).exists() and not has_checkpoint(out_dir):
        return "start"
    if overwrite:
        return "overwrite"
    saved = RunSpec(*resume_configs(out_dir, world_size=spec.train.world_size))
    if saved.identity() != spec.identity():
        if not resume:
            refuse_another_run(out_dir, saved, spec)
        return "resume"
    return "finished" if read_summary(out_dir) is not None else "resume"


def train(config: GPTConfig, cfg: TrainConfig, **options: Any) -> dict[str, Any] | None:
    """Train ``config`` as ``cfg`` says, in ``cfg.out_dir``: :func:`train_spec` of
    ``RunSpec(config, cfg)``, with the same keyword ``options``."""
    return train_spec(RunSpec(config, cfg), **options)


def train_folder(folder: str | Path, **options: Any) -> dict[str, Any] | None:
    """Train the run saved in ``folder`` (its ``run.json``, or a 0.1-0.2 folder's checkpoint): from its
    latest checkpoint, or from step 0 when it has none; a finished one is left as it is.
    :func:`train_spec` with ``resume=True`` and the same keyword ``options``."""
    return train_spec(RunSpec(*resume_configs(folder)), resume=True, **options)


def train_spec(
    spec: RunSpec,
    *,
    resume: bool = False,
    overwrite: bool = False,
    stop: list[int] | None = None,
    stop_at: int | None = None,
    progress: bool = True,
    hooks: Any = None,
    log: Any = print,
) -> dict[str, Any] | None:
    """Train ``spec`` (its model as its run config says, in ``spec.train.out_dir``); the summary
    (rank 0; None on other ranks), or ``{"stopped": True, "exit_code", "step"}`` when stopped early.

    The folder decides (:func:`plan_folder`): a new one starts; one holding the same run continues
    from its latest checkpoint (or from step 0 when it has none), and a finished one is left as it is
    (its summary is logged and returned with ``"finished": True``); one holding another run is
    refused, or, with ``overwrite``, its run's files are deleted and the run starts. ``resume`` says that
    ``spec`` continues the folder's run even where it differs from the saved one (more steps, another
    data folder), and becomes its ``run.json``. One process at a time trains in a folder (:func:`hold_folder`)."""
    if not isinstance(spec, RunSpec):
        raise TypeError(f"train_spec takes a RunSpec, got {type(spec).__name__}")
    config, cfg = spec.model, spec.train
    t_start = time.time()
    stop = [] if stop is None else stop
    dist = Dist.from_env(cfg.device)
    try:
        out_dir = Path(cfg.out_dir)
        cfg = cfg.replace(world_size=dist.world) if cfg.world_size != dist.world else cfg
        resolve_dtype(cfg.dtype, resolve_device(cfg.device))  # a device or dtype the machine lacks: refused first
        if not out_dir.exists():  # a run refused for what it reads makes no folder
            if cfg.init_from is not None and not Path(cfg.init_from).exists():
                raise CheckpointError(
                    cfg.init_from,
                    "does not exist: --init-from takes a run folder, a checkpoint, a GGUF file or a Hugging Face folder",
                )
            check_data_dir(cfg)
        with hold_folder(out_dir) if dist.master else contextlib.nullcontext():
            spec = RunSpec(config, cfg)
            what = plan_folder(out_dir, spec, overwrite=overwrite, resume=resume)
            dist.barrier()  # every rank has read the folder before rank 0 changes it
            if what == "finished":
                summary = read_summary(out_dir) if dist.master else None
                if summary is not None:
                    log(f"{out_dir} holds this run, finished; nothing to do (--overwrite trains it again)")
                    _log_summary(summary, out_dir, log)
                    summary = summary | {"finished": True}
                return summary
            # what can be refused first, before anything is written: the data folder, a damaged checkpoint
            check_data_dir(cfg)
            ckpt = state.load_run(out_dir) if what == "resume" and has_checkpoint(out_dir) else None
            init = None if cfg.init_from is None or ckpt is not None else _initial_weights(cfg.init_from)
            if dist.master:
                if what == "overwrite":
                    clear_run(out_dir)
                saved = RunSpec.load(out_dir) if what == "resume" else None
                if saved is None or saved.identity() != spec.identity():
                    # the spec before any data is prepared: a run killed at any later moment can be resumed
                    spec.save(out_dir)
            dist.barrier()
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
    _log_summary(summary, trainer.out_dir, trainer.log)
    return summary


def _log_summary(summary: dict[str, Any], out_dir: Path, log: Any) -> None:
    log(
        f"done: train loss {summary['train_loss']:.4f} | val loss {summary['val_loss']:.4f} | "
        f"{summary['tokens']:,} tokens | {summary['wall_time_s']:.0f} s | {out_dir}"
    )
    for s in summary["samples"]:
        log("--- sample ---\n" + s)


def _quiet(*args: Any, **kwargs: Any) -> None:
    pass


def resume_configs(
    run_dir: str | Path, *, device: str | None = None, world_size: int | None = None
) -> tuple[GPTConfig, TrainConfig]:
    """The configs a run folder was started with -- its ``run.json``, or, for folders of posenc 0.1-0.2,
    its latest checkpoint -- to pass to :func:`train`; ``device`` and ``world_size``
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

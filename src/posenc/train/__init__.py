"""Pretraining as a library: ``train(model_config, train_config)`` and what a run is made of.

- :mod:`~posenc.train.config`: :class:`TrainConfig`, ``TRAIN_PRESETS``, device/dtype resolution, the lr schedule;
- :mod:`~posenc.train.run`: :class:`RunSpec` (model + run config), its identity and ``run.json``;
- :mod:`~posenc.train.loop`: :func:`train_spec` (the run core, a :class:`RunSpec`), :func:`train_folder`
  (the run saved in a folder), :func:`train`, :func:`resume_configs`, :func:`handle_stop_signals`;
- :mod:`~posenc.train.trainer`: :class:`Trainer` (evaluate, step, save, summarize);
- :mod:`~posenc.train.state`: the checkpoint schema (save, restore, versioning);
- :mod:`~posenc.train.runlog`: log.jsonl, scalar sinks, summary.json, curves.png;
- :mod:`~posenc.train.distributed`: rank, world and the collectives the loop uses.
"""

from posenc.train.config import (
    DTYPES,
    EVAL_SEED,
    TRAIN_PRESETS,
    NonFiniteError,
    TrainConfig,
    get_lr,
    model_config,
    resolve_device,
    resolve_dtype,
)
from posenc.train.loop import (
    generate_samples,
    handle_stop_signals,
    has_checkpoint,
    resume_configs,
    train,
    train_folder,
    train_spec,
)
from posenc.train.run import RunSpec
from posenc.train.runlog import read_log, read_summary
from posenc.train.trainer import Trainer

__all__ = [
    "DTYPES",
    "EVAL_SEED",
    "TRAIN_PRESETS",
    "NonFiniteError",
    "TrainConfig",
    "get_lr",
    "model_config",
    "resolve_device",
    "resolve_dtype",
    "train",
    "train_spec",
    "train_folder",
    "RunSpec",
    "Trainer",
    "has_checkpoint",
    "resume_configs",
    "handle_stop_signals",
    "generate_samples",
    "read_log",
    "read_summary",
]

"""What a training checkpoint holds, and how a run is saved into it and restored from it.

Schema (``CHECKPOINT_FORMAT`` 2; format 1 files, which lack the ``format`` key, hold the same keys)::

    format        int, this schema's version
    model         state dict of the plain model (no compile/DDP prefixes)
    optimizer     AdamW state dict
    scaler        GradScaler state dict (a disabled scaler's is empty)
    step          optimizer steps completed; the next step to run
    rng           {"torch": [CPU RNG state of every rank], "cuda": [CUDA RNG state of every rank] or []}
    config        GPTConfig.to_dict()
    train_config  TrainConfig.to_dict()
    stats         counters of the loop (interval loss, skipped steps, elapsed time, last losses)
    data          {"data_dir", "seed", "next_step", "eval_seed"}: the data order is a function of
                  (seed, step, micro), so these locate the next batch exactly

Files are written by :func:`posenc.checkpoint.save_checkpoint` (atomic, behind a checksummed manifest).
"""

from __future__ import annotations

import os
from typing import Any

import torch
from torch import nn

from posenc.checkpoint import CheckpointError, clean_state_dict, load_checkpoint
from posenc.train.distributed import Dist

CHECKPOINT_FORMAT = 2


def new_stats() -> dict[str, Any]:
    return {
        "interval_loss_sum": 0.0,
        "interval_steps": 0,
        "skipped_total": 0,
        "skipped_in_a_row": 0,
        "elapsed_s": 0.0,
        "last_val_loss": None,
        "last_train_loss": None,
    }


def gather_rng(device: torch.device, dist: Dist) -> dict[str, list]:
    """Every rank's RNG states (a collective under DDP: every rank must call it)."""
    own = {"torch": torch.get_rng_state(), "cuda": torch.cuda.get_rng_state(device) if device.type == "cuda" else None}
    states = dist.all_gather_object(own)
    return {
        "torch": [s["torch"] for s in states],
        "cuda": [s["cuda"] for s in states] if own["cuda"] is not None else [],
    }


def capture(
    *,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler,
    step: int,
    rng: dict,
    config: dict,
    train_config: dict,
    stats: dict,
    data: dict,
) -> dict[str, Any]:
    """The checkpoint dict of a run at ``step``."""
    return {
        "format": CHECKPOINT_FORMAT,
        "model": clean_state_dict(model.state_dict()),
        "optimizer": optimizer.state_dict(),
        "scaler": scaler.state_dict(),
        "step": step,
        "rng": rng,
        "config": config,
        "train_config": train_config,
        "stats": dict(stats),
        "data": data,
    }


def load_run(run_dir: str | os.PathLike) -> dict[str, Any]:
    """The latest checkpoint of a run folder, refused with a :class:`CheckpointError` when its
    format is newer than this version of posenc understands."""
    state = load_checkpoint(run_dir, map_location="cpu")
    fmt = state.get("format", 1)
    if not isinstance(fmt, int) or fmt > CHECKPOINT_FORMAT:
        raise CheckpointError(
            run_dir, f"checkpoint format {fmt!r} is newer than this posenc reads ({CHECKPOINT_FORMAT})"
        )
    return state


def restore(
    state: dict[str, Any],
    *,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler,
    device: torch.device,
    dist: Dist,
    where: str | os.PathLike,
) -> tuple[int, dict[str, Any]]:
    """Load model, optimizer, scaler and this rank's RNG from ``state``; (step, stats)."""
    rng = state["rng"]
    if len(rng["torch"]) != dist.world:
        raise CheckpointError(where, f"saved by {len(rng['torch'])} ranks, resumed with {dist.world}")
    model.load_state_dict(state["model"], strict=True)
    optimizer.load_state_dict(state["optimizer"])
    scaler.load_state_dict(state["scaler"])
    torch.set_rng_state(rng["torch"][dist.rank])
    if device.type == "cuda" and rng["cuda"]:
        torch.cuda.set_rng_state(rng["cuda"][dist.rank], device)
    return int(state["step"]), dict(state["stats"])

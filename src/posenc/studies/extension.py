"""The extension study: RoPE trained at the sweep's context, then run at 2x-16x that context.

- **Zero-shot**: the trained RoPE model's weights under each frequency schedule, with no training
  (``ZERO_SHOT``); at a context of m x the training context a schedule gets factor m.
- **Fine-tuned**: a short run at 4x the context from the same weights (``--init-from``, a fresh
  optimizer) with plain RoPE, linear interpolation and YaRN (factor 4), each with the same token
  budget (``finetune_fraction`` of pretraining).
- **Extrapolating encodings**: the encodings designed to run past their training length (ALiBi,
  KERPLE, FIRE, T5, NoPE, RNoPE and RNoPE with sliding-window RoPE layers), trained at the sweep's
  context, no fine-tune.

Every row is scored on the same validation tokens: windows of 16x the context cut into rows of
m x the context, each row a forward from position 0 (:func:`posenc.evaluate.token_losses`).
Trained runs are the table study's folders (``runs/<variant>-s<seed>``) where they exist;
fine-tunes live in ``runs/extend-<name>-s<seed>``.
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from posenc import sweep
from posenc.jobs import plan_run, train_jobs
from posenc.studies import write_study
from posenc.train.runlog import read_summary

MULTIPLIERS: tuple[int, ...] = (1, 2, 4, 8, 16)
FACTOR = 4  # the fine-tunes' context multiplier

#: Zero-shot schedules: name -> (m, training context) -> GPTConfig overrides for a context of m x it.
ZERO_SHOT: dict[str, Callable[[int, int], dict[str, Any]]] = {
    "plain": lambda m, T: {},
    "linear": lambda m, T: {"rope_scaling": {"rope_type": "linear", "factor": float(m)}} if m > 1 else {},
    # dynamic NTK rescales its base with the sequence length itself: factor 1 is the pure length rule
    "dynamic": lambda m, T: {"rope_scaling": {"rope_type": "dynamic", "factor": 1.0, "max_position_embeddings": T}},
    "yarn": lambda m, T: (
        {"rope_scaling": {"rope_type": "yarn", "factor": float(m), "original_max_position_embeddings": T}}
        if m > 1
        else {}
    ),
    "llama3": lambda m, T: (
        {
            "rope_scaling": {
                "rope_type": "llama3",
                "factor": float(m),
                "original_max_position_embeddings": T,
                "low_freq_factor": 1.0,
                "high_freq_factor": 4.0,
            }
        }
        if m > 1
        else {}
    ),
    # p-RoPE keeps the highest 75% of the frequencies; the rest of each head is position-free
    "p-rope 0.75": lambda m, T: {"pe_options": {"rope": {"p_rope": 0.75}}},
}

#: Fine-tunes at FACTOR x the context: name -> the --rope-scaling JSON (None: plain RoPE).
FINE_TUNES: dict[str, Callable[[int], dict[str, Any] | None]] = {
    "plain": lambda T: None,
    "linear": lambda T: {"rope_type": "linear", "factor": float(FACTOR)},
    "yarn": lambda T: {"rope_type": "yarn", "factor": float(FACTOR), "original_max_position_embeddings": T},
}

#: The encodings designed to extrapolate, trained at the sweep's context (names of posenc.VARIANTS
#: or of posenc.sweep.FLAG_VARIANTS).
EXTRAPOLATING: tuple[str, ...] = ("alibi", "kerple", "fire", "t5", "nope", "rnope", "rnope_swa")

FINETUNE_FRACTION = 0.05  # of the pretraining tokens
FINETUNE_BATCH = 8  # rows of FACTOR x the context per step
TRAIN_LR_FRACTION = 0.3  # the fine-tunes' peak rate, as a fraction of pretraining's


def _load(folder: Path, overrides: dict[str, Any] | None = None, ckpt: dict[str, Any] | None = None):
    """The run's model (its config with ``overrides``) and checkpoint; ``ckpt``: one already read."""
    from posenc.checkpoint import load_checkpoint
    from posenc.config import GPTConfig
    from posenc.model import GPT

    ckpt = load_checkpoint(folder, map_location="cpu") if ckpt is None else ckpt
    config = GPTConfig.from_dict(ckpt["config"] | (overrides or {}))
    model = GPT(config)
    model.load_state_dict(ckpt["model"])
    return model.eval(), ckpt


def _losses(
    model: Any, windows: torch.Tensor, T: int, mults: list[int], device: torch.device
) -> dict[str, float | None]:
    from posenc.evaluate import max_positions, token_losses

    table = max_positions(model)
    return {
        str(m): None
        if table is not None and m * T > table
        else token_losses(model.to(device), windows, m * T, device=device).mean().item()
        for m in mults
    }


def finetune_argv(
    preset: dict[str, Any], base: Path, folder: Path, seed: int, T: int, iters: int, scaling
) -> list[str]:
    lr = TRAIN_LR_FRACTION * preset_lr(preset)
    argv = [
        "--preset",
        preset["train_preset"],
        *preset["train_args"],
        "--pe",
        "rope",
        "--init-from",
        str(base),
        "--block-size",
        str(FACTOR * T),
        "--batch-size",
        str(FINETUNE_BATCH),
        "--grad-accum",
        "1",
        "--max-iters",
        str(iters),
        "--warmup-iters",
        str(max(1, iters // 10)),
        "--lr",
        f"{lr:g}",
        "--min-lr",
        f"{lr / 10:g}",
        "--eval-interval",
        str(iters),
        "--seed",
        str(seed),
        "--out-dir",
        str(folder),
        "--no-progress",
    ]
    return argv + ([] if scaling is None else ["--rope-scaling", json.dumps(scaling)])


def preset_lr(preset: dict[str, Any]) -> float:
    from posenc.train.config import TRAIN_PRESETS

    return TRAIN_PRESETS[preset["train_preset"]]["learning_rate"]


def run(
    args: argparse.Namespace,
    preset_name: str,
    preset: dict[str, Any],
    out: Path,
    device: torch.device,
    n_jobs: int,
    threads: int | None,
    command: str,
) -> int:
    """``compare --study extension``: train what is missing, evaluate every row, write extension.json."""
    from posenc.data import load_split
    from posenc.evaluate import validation_windows

    seed = (args.seeds or list(preset["seeds"]))[0]
    extrapolating = list(args.variants or EXTRAPOLATING)
    t0 = time.time()

    # 1. the trained runs at the sweep's context: RoPE and the extrapolating encodings
    jobs, folders = [], {}
    for v in ["rope", *extrapolating]:
        folders[v] = folder = sweep.run_dir(out, v, seed)
        todo = plan_run(folder, sweep.train_argv(preset, v, seed, folder, args), args.device)
        if todo is not None:
            jobs.append((v, seed, folder, todo))
    print(f"[extension] {len(jobs)} run(s) at the training context to train", flush=True)
    if code := train_jobs(jobs, n_jobs, threads):
        return code
    base = folders["rope"]
    summary = read_summary(base)
    T = summary["config"]["block_size"]

    # 2. the fine-tunes at FACTOR x the context, the same token budget each
    budget = FINETUNE_FRACTION * summary["tokens"]
    iters = max(1, math.ceil(budget / (FINETUNE_BATCH * FACTOR * T)))
    jobs, tuned = [], {}
    for name, scaling in FINE_TUNES.items():
        tuned[name] = folder = out / "runs" / f"extend-{name}-s{seed}"
        argv = finetune_argv(preset, base, folder, seed, T, iters, scaling(T)) + sweep.passed_on(args)
        todo = plan_run(folder, argv, args.device)
        if todo is not None:
            jobs.append((f"extend {name}", seed, folder, todo))
    print(f"[extension] {len(jobs)} fine-tune(s) of {iters} steps at {FACTOR * T} tokens to train", flush=True)
    if code := train_jobs(jobs, n_jobs, threads):
        return code

    # 3. every row on the same windows
    _, ckpt = _load(base)
    mults = list(MULTIPLIERS)
    val = load_split(
        ckpt["data"]["data_dir"], "val", vocab_size=ckpt["config"]["vocab_size"], block_size=max(mults) * T
    )
    windows = validation_windows(val, max(mults) * T, preset["eval_windows"])
    rows: dict[str, dict[str, Any]] = {}

    def record(section: str, name: str, losses: dict[str, float | None], **info: Any) -> None:
        rows[f"{section}/{name}"] = {"section": section, "name": name, "loss": losses, **info}
        print(
            f"[extension] {section} {name}: "
            + ", ".join(f"{m}x {'n/a' if x is None else f'{x:.4f}'}" for m, x in losses.items()),
            flush=True,
        )

    for name, overrides in ZERO_SHOT.items():
        losses = {}
        for m in mults:
            model, _ = _load(base, overrides(m, T), ckpt)  # the base checkpoint is read once
            losses |= _losses(model, windows, T, [m], device)
        record("zero-shot", name, losses, overrides={str(m): overrides(m, T) for m in mults})
    for name, folder in tuned.items():
        model, _ = _load(folder)
        record("fine-tuned", name, _losses(model, windows, T, mults, device), scaling=FINE_TUNES[name](T))
    for v in extrapolating:
        model, _ = _load(folders[v])
        record(
            "extrapolating", v, _losses(model, windows, T, mults, device), val_loss=read_summary(folders[v])["val_loss"]
        )

    results = {
        "kind": "extension",
        "format": 1,
        "created": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "command": command,
        "preset": preset_name,
        "seed": seed,
        "block_size": T,
        "multipliers": mults,
        "eval_tokens": int(windows.shape[0] * (windows.shape[1] - 1)),
        "base_run": str(base),
        "base_val_loss": summary["val_loss"],
        "finetune": {
            "factor": FACTOR,
            "fraction": FINETUNE_FRACTION,
            "steps": iters,
            "tokens": iters * FINETUNE_BATCH * FACTOR * T,
            "pretrain_tokens": summary["tokens"],
            "lr": TRAIN_LR_FRACTION * preset_lr(preset),
        },
        "environment": sweep.environment(device, n_jobs, threads),
        "wall_time_s": time.time() - t0,
        "rows": rows,
    }
    write_study(results, out, args.render)
    return 0

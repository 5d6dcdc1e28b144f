"""The extension study: RoPE trained at the sweep's context, then run at 2x-16x that context.

- **Zero-shot**: the trained RoPE models' weights under each frequency schedule, with no training
  (``ZERO_SHOT``); at a context of m x the training context a schedule gets factor m.
- **Fine-tuned**: a short run at 4x the context from the same weights (``--init-from``, a fresh
  optimizer) with plain RoPE, linear interpolation and YaRN (factor 4), each with the same token
  budget (``finetune_fraction`` of pretraining).
- **Without a fine-tune** (``EXTRAPOLATING``): the encodings designed to run past their training
  length (ALiBi, KERPLE, FIRE, T5, NoPE, RNoPE, RNoPE with sliding-window RoPE layers), the
  content-dependent ones (FoX, CoPE, stick-breaking, sinks) and RoPE under other attentions,
  trained at the sweep's context.

Every row is at every seed of the sweep: the RoPE rows from each seed's RoPE run, the others from
their own runs; a row's loss is the mean over its seeds, each seed's kept beside it.

Every row is scored on the same validation tokens: windows of 16x the context cut into rows of
m x the context, each row a forward from position 0 (:func:`posenc.evaluate.token_losses`).
Trained runs are the table study's folders (``runs/<variant>-s<seed>``) where they exist;
fine-tunes live in ``runs/extend-<name>-s<seed>``.
"""

from __future__ import annotations

import datetime
import math
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from posenc.jobs import Sweep, plan_run
from posenc.studies.common import environment, write_study
from posenc.train.config import TRAIN_PRESETS
from posenc.train.run import RunSpec
from posenc.train.runlog import read_summary
from posenc.variants import CONTENT_DEPENDENT

MULTIPLIERS: tuple[int, ...] = (1, 2, 4, 8, 16)
FACTOR = 4  # the fine-tunes' context multiplier

#: Zero-shot schedules: name -> (m, training context) -> the RoPE options changed for a context of m x it.
ZERO_SHOT: dict[str, Callable[[int, int], dict[str, Any]]] = {
    "plain": lambda m, T: {},
    "linear": lambda m, T: {"scaling": {"rope_type": "linear", "factor": float(m)}} if m > 1 else {},
    # dynamic NTK rescales its base with the sequence length itself: factor 1 is the pure length rule
    "dynamic": lambda m, T: {"scaling": {"rope_type": "dynamic", "factor": 1.0, "max_position_embeddings": T}},
    "yarn": lambda m, T: (
        {"scaling": {"rope_type": "yarn", "factor": float(m), "original_max_position_embeddings": T}} if m > 1 else {}
    ),
    "llama3": lambda m, T: (
        {
            "scaling": {
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
    "p-rope 0.75": lambda m, T: {"p_rope": 0.75},
}

#: Fine-tunes at FACTOR x the context: name -> the --rope-scaling JSON (None: plain RoPE).
FINE_TUNES: dict[str, Callable[[int], dict[str, Any] | None]] = {
    "plain": lambda T: None,
    "linear": lambda T: {"rope_type": "linear", "factor": float(FACTOR)},
    "yarn": lambda T: {"rope_type": "yarn", "factor": float(FACTOR), "original_max_position_embeddings": T},
}

#: The encodings run past their training length with no fine-tune, trained at the sweep's context
#: (names of posenc.variants): those designed to extrapolate, the content-dependent ones, and the
#: table's RoPE variants of other attentions (QK-norm, MLA, GQA) for comparison with plain RoPE.
EXTRAPOLATING: tuple[str, ...] = (
    "alibi",
    "kerple",
    "fire",
    "t5",
    "nope",
    "rnope",
    *CONTENT_DEPENDENT,
    "qknorm",
    "mla",
    "gqa",
)

FINETUNE_FRACTION = 0.05  # of the pretraining tokens
FINETUNE_BATCH = 8  # rows of FACTOR x the context per step
TRAIN_LR_FRACTION = 0.3  # the fine-tunes' peak rate, as a fraction of pretraining's


def _load(folder: Path, rope: dict[str, Any] | None = None, ckpt: dict[str, Any] | None = None):
    """The run's model (its RoPE options changed by ``rope``) and checkpoint; ``ckpt``: one already read."""
    from posenc.checkpoint import load_checkpoint
    from posenc.config import GPTConfig
    from posenc.model import GPT

    ckpt = load_checkpoint(folder, map_location="cpu") if ckpt is None else ckpt
    config = GPTConfig.from_dict(ckpt["config"])
    if rope:
        if "scaling" in rope:  # the model's context stands in for Hugging Face's max_position_embeddings
            rope = rope | {"scaling": {"max_position_embeddings": config.block_size} | rope["scaling"]}
        config = config.with_encoding("rope", **rope)
    return GPT.from_checkpoint(ckpt, config).eval(), ckpt


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


def finetune(sweep: Sweep, base: Path, folder: Path, seed: int, T: int, iters: int, scaling) -> Any:
    """The spec of a fine-tune at FACTOR x the context from ``base``'s final weights (a fresh optimizer)."""
    lr = TRAIN_LR_FRACTION * preset_lr(sweep)
    model = {"block_size": FACTOR * T} | ({} if scaling is None else {"rope_scaling": scaling})
    train = {
        "init_from": str(base),
        "batch_size": FINETUNE_BATCH,
        "grad_accum": 1,
        "max_iters": iters,
        "warmup_iters": max(1, iters // 10),
        "learning_rate": float(f"{lr:g}"),
        "min_lr": float(f"{lr / 10:g}"),
        "eval_interval": iters,
    }
    return sweep.spec("rope", seed, folder, model=model, train=train)


def preset_lr(sweep: Sweep) -> float:
    return TRAIN_PRESETS[sweep.preset.train_preset]["learning_rate"]


def _mean_losses(by_seed: dict[str, dict[str, float | None]]) -> dict[str, float | None]:
    mults = next(iter(by_seed.values()))
    return {
        m: None if any(x[m] is None for x in by_seed.values()) else statistics.fmean(x[m] for x in by_seed.values())
        for m in mults
    }


def run(sweep: Sweep) -> int:
    """``compare --study extension``: train what is missing, evaluate every row, write extension.json."""
    seeds = list(sweep.seeds)
    extrapolating = list(sweep.variants or EXTRAPOLATING)
    t0 = time.time()
    # 1. the trained runs at the sweep's context: RoPE and the extrapolating encodings, every seed
    jobs, folders = [], {}
    for v, s in dict.fromkeys((v, s) for v in ("rope", *extrapolating) for s in seeds):  # rope may be listed
        folders[(v, s)] = folder = sweep.run_dir(v, s)
        if plan_run(folder, sweep.spec(v, s, folder)):
            jobs.append((v, s, folder))
    print(f"[extension] {len(jobs)} run(s) at the training context to train", flush=True)
    if code := sweep.train(jobs):
        return code
    bases = {s: folders[("rope", s)] for s in seeds}
    summaries = {s: read_summary(b) for s, b in bases.items()}
    first = summaries[seeds[0]]
    T = first["config"]["block_size"]
    # 2. the fine-tunes at FACTOR x the context from each seed's RoPE run, the same token budget each
    iters = max(1, math.ceil(FINETUNE_FRACTION * first["tokens"] / (FINETUNE_BATCH * FACTOR * T)))
    jobs, tuned = [], {}
    for name, scaling in FINE_TUNES.items():
        for s in seeds:
            tuned[(name, s)] = folder = sweep.out / "runs" / f"extend-{name}-s{s}"
            if plan_run(folder, finetune(sweep, bases[s], folder, s, T, iters, scaling(T))):
                jobs.append((f"extend {name}", s, folder))
    print(f"[extension] {len(jobs)} fine-tune(s) of {iters} steps at {FACTOR * T} tokens to train", flush=True)
    if code := sweep.train(jobs):
        return code
    # 3. every row on the same windows
    trained = {v: [folders[(v, s)] for s in seeds] for v in extrapolating}
    rows, eval_tokens = _rows(sweep, bases, tuned, trained)
    results = {
        "kind": "extension",
        "format": 2,
        "created": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "command": sweep.command,
        "preset": sweep.name,
        "seed": seeds[0],
        "seeds": seeds,
        "block_size": T,
        "multipliers": list(MULTIPLIERS),
        "eval_tokens": eval_tokens,
        "base_run": str(bases[seeds[0]]),
        "base_runs": {str(s): str(b) for s, b in bases.items()},
        "base_val_loss": statistics.fmean(x["val_loss"] for x in summaries.values()),
        "finetune": {
            "factor": FACTOR,
            "fraction": FINETUNE_FRACTION,
            "steps": iters,
            "tokens": iters * FINETUNE_BATCH * FACTOR * T,
            "pretrain_tokens": first["tokens"],
            "lr": TRAIN_LR_FRACTION * preset_lr(sweep),
        },
        "environment": environment(sweep.device, sweep.jobs, sweep.threads),
        "wall_time_s": time.time() - t0,
        "rows": rows,
    }
    write_study(results, sweep.out, sweep.render)
    return 0


def _rows(
    sweep: Sweep, bases: dict[int, Path], tuned: dict[tuple[str, int], Path], trained: dict[str, list[Path]]
) -> tuple[dict[str, dict[str, Any]], int]:
    """Every row scored on the same validation windows, each at every seed: (rows, tokens scored)."""
    from posenc.data import load_split
    from posenc.evaluate import validation_windows

    ckpts = {s: _load(b)[1] for s, b in bases.items()}  # each base checkpoint is read once
    first = next(iter(ckpts.values()))
    mults, T = list(MULTIPLIERS), first["config"]["block_size"]
    val = load_split(
        first["data"]["data_dir"], "val", vocab_size=first["config"]["vocab_size"], block_size=max(mults) * T
    )
    windows = validation_windows(val, max(mults) * T, sweep.preset.eval_windows)
    rows: dict[str, dict[str, Any]] = {}

    def record(section: str, name: str, by_seed: dict[str, dict[str, float | None]], **info: Any) -> None:
        losses = _mean_losses(by_seed)
        rows[f"{section}/{name}"] = {
            "section": section,
            "name": name,
            "loss": losses,
            "seeds": [int(s) for s in by_seed],
            "loss_by_seed": by_seed,
            **info,
        }
        shown = ", ".join(f"{m}x {'n/a' if x is None else f'{x:.4f}'}" for m, x in losses.items())
        print(f"[extension] {section} {name}: {shown}", flush=True)

    for name, changes in ZERO_SHOT.items():
        by_seed = {}
        for s, ckpt in ckpts.items():
            by_seed[str(s)] = {}
            for m in mults:
                model, _ = _load(bases[s], changes(m, T), ckpt)
                by_seed[str(s)] |= _losses(model, windows, T, [m], sweep.device)
        record("zero-shot", name, by_seed, rope={str(m): changes(m, T) for m in mults})
    for name in FINE_TUNES:
        by_seed = {
            str(s): _losses(_load(tuned[(n, s)])[0], windows, T, mults, sweep.device) for n, s in tuned if n == name
        }
        record("fine-tuned", name, by_seed, scaling=FINE_TUNES[name](T))
    for v, folders in trained.items():
        by_seed = {
            str(RunSpec.load(f).train.seed): _losses(_load(f)[0], windows, T, mults, sweep.device) for f in folders
        }
        val_loss = statistics.fmean(read_summary(f)["val_loss"] for f in folders)
        record("extrapolating", v, by_seed, val_loss=val_loss)
    return rows, int(windows.shape[0] * (windows.shape[1] - 1))

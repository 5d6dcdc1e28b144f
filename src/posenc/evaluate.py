"""Evaluation of a trained language model: fixed-batch validation loss, per-token and per-position
loss, and loss at contexts longer than the training context.

Every function takes any model called as ``logits, loss = model(idx, targets=None, *, positions=None)``
(a :class:`posenc.GPT`, or one wrapped by ``torch.compile``) and a flat token array (a split from
:func:`posenc.data.load_split`, or any 1-D integer array). The model is put in eval mode for the
call and given back in the mode it came in.

Conventions:

- A *window* is ``length + 1`` consecutive tokens: ``length`` inputs and their next-token targets.
  Windows start at evenly spaced, fixed offsets, so two models (or two contexts) score the same
  tokens.
- A *context* of ``c`` tokens cuts each window into rows of ``c`` tokens, each row one full forward
  from position 0 (no KV cache). Every context scores the same target tokens: a longer context
  only sees more history for most of them.
- The windows of :func:`length_extrapolation` are ``span`` training contexts long whatever
  multipliers are asked for (16 when every multiplier divides 16), so the loss at 1x does not
  depend on which other contexts are evaluated beside it.
- A learned absolute table has no vectors past its length (``model.wpe.max_positions``); contexts
  beyond it are reported as ``None``, not evaluated.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from posenc.data import DataError, batch_offsets, get_batch
from posenc.io import atomic_write

#: The context multipliers ``evaluate_checkpoint`` caches by default (the comparison's settings).
MULTIPLIERS: tuple[int, ...] = (1, 2, 4, 8, 16)
#: The window length, in training contexts, of every evaluation whose multipliers divide it.
SPAN = 16


def _device_of(model: Any) -> torch.device:
    try:
        return next(model.parameters()).device
    except (AttributeError, StopIteration):
        return torch.device("cpu")


def _autocast(device: torch.device, dtype: torch.dtype) -> contextlib.AbstractContextManager:
    return torch.autocast(device.type, dtype=dtype) if dtype != torch.float32 else contextlib.nullcontext()


@contextlib.contextmanager
def _eval_mode(model: Any) -> Iterator[None]:
    """Eval mode inside, each submodule's own train/eval flag restored after."""
    if not isinstance(model, nn.Module):
        yield
        return
    flags = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        yield
    finally:
        for m, training in flags:
            m.training = training


def max_positions(model: Any) -> int | None:
    """The longest context the model can be run at, or ``None`` when it has no limit (only a learned
    absolute table has one)."""
    return getattr(getattr(model, "wpe", None), "max_positions", None)


def validation_windows(tokens: np.ndarray, length: int, n: int) -> Tensor:
    """``n`` windows of ``length + 1`` tokens at evenly spaced, fixed offsets: (n, length + 1) int64."""
    if length < 1 or n < 1:
        raise ValueError(f"validation_windows needs length >= 1 and n >= 1, got length={length}, n={n}")
    if len(tokens) < length + 1:
        raise DataError(f"the validation split has {len(tokens):,} tokens, fewer than {length + 1:,} for one window")
    starts = np.linspace(0, len(tokens) - length - 1, n).astype(np.int64)
    return torch.from_numpy(np.stack([np.asarray(tokens[s : s + length + 1], dtype=np.int64) for s in starts]))


@torch.no_grad()
def token_losses(
    model: Any,
    windows: Tensor,
    context: int,
    *,
    batch_tokens: int = 16384,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
) -> Tensor:
    """Cross-entropy of every target token of ``windows`` (n, span + 1), cut into rows of ``context``
    tokens: (n * span / context, context) float32, the rows of window 0 first.

    ``batch_tokens`` bounds the tokens of one forward; ``device`` defaults to the model's; ``dtype``
    other than float32 runs the forward under autocast (the loss is always taken in float32).
    """
    span = windows.shape[1] - 1
    if context < 1 or span % context:
        raise ValueError(f"context {context} must divide the {span} target tokens of each window")
    device = _device_of(model) if device is None else torch.device(device)
    x = windows[:, :span].reshape(-1, context)  # (n * span / context, context)
    y = windows[:, 1:].reshape(-1, context)
    rows = max(1, batch_tokens // context)
    positions = torch.arange(context, device=device)
    out = []
    with _eval_mode(model):
        for i in range(0, x.shape[0], rows):
            xb, yb = x[i : i + rows].to(device), y[i : i + rows].to(device)
            with _autocast(device, dtype):
                logits, _ = model(xb, positions=positions)
            loss = F.cross_entropy(logits.float().flatten(0, 1), yb.flatten(), reduction="none")
            out.append(loss.view(xb.shape).cpu())  # (rows, context)
    return torch.cat(out)


def _bucket_means(losses: Tensor, width: int) -> list[float]:
    """Mean over rows, then over consecutive buckets of ``width`` positions (a remainder is dropped)."""
    per_position = losses.mean(0)  # (context,)
    n = per_position.shape[0] // width
    return per_position[: width * n].view(-1, width).mean(1).tolist()


def per_position_loss(
    model: Any,
    windows: Tensor,
    context: int,
    *,
    width: int = 1,
    batch_tokens: int = 16384,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
) -> list[float]:
    """Mean loss at each position of a ``context``-token row, over all rows of ``windows``; with
    ``width`` > 1, the mean over consecutive buckets of that many positions (context // width values)."""
    if width < 1 or width > context:
        raise ValueError(f"per_position_loss needs 1 <= width <= context={context}, got width={width}")
    losses = token_losses(model, windows, context, batch_tokens=batch_tokens, device=device, dtype=dtype)
    return _bucket_means(losses, width)


@torch.no_grad()
def validation_loss(
    model: Any,
    tokens: np.ndarray,
    *,
    block_size: int,
    batch_size: int,
    iters: int,
    seed: int = 0,
    rows: slice | None = None,
    reduce: Callable[[Tensor], Tensor] | None = None,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
) -> float:
    """Mean of the model's own loss over ``iters`` fixed batches (the trainer's evaluation).

    Batch ``i`` has the offsets ``batch_offsets(len(tokens), block_size, batch_size, seed, i)``:
    with the default ``seed`` 0 these are the same for every run and every encoding. ``rows``
    selects this process's rows of each batch; ``reduce`` is applied to the float64 sum of the
    ``iters`` losses before the division (data-parallel evaluation passes one that all-reduces and
    divides by the world size).
    """
    if iters < 1:
        raise ValueError(f"validation_loss needs iters >= 1, got {iters}")
    device = _device_of(model) if device is None else torch.device(device)
    rows = slice(None) if rows is None else rows
    total = torch.zeros((), dtype=torch.float64, device=device)
    with _eval_mode(model):
        for i in range(iters):
            x, y = get_batch(tokens, batch_offsets(len(tokens), block_size, batch_size, seed, i)[rows], block_size)
            with _autocast(device, dtype):
                _, loss = model(x.to(device), y.to(device))
            total += loss.double()
    if reduce is not None:
        total = reduce(total)
    return (total / iters).item()


def default_span(multipliers: Sequence[int]) -> int:
    """The window length, in training contexts, of an evaluation at ``multipliers``: :data:`SPAN`
    when every multiplier divides it, else the largest multiplier."""
    mults = list(multipliers)
    if not mults or any(isinstance(m, bool) or not isinstance(m, int) or m < 1 for m in mults):
        raise ValueError(f"multipliers must be positive ints, got {multipliers!r}")
    return SPAN if all(SPAN % m == 0 for m in mults) else max(mults)


def length_extrapolation(
    model: Any,
    tokens: np.ndarray,
    *,
    block_size: int,
    windows: int,
    multipliers: Sequence[int] = (1, 2, 4, 8, 16),
    buckets: int = 64,
    batch_tokens: int = 16384,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
    span: int | None = None,
) -> dict[str, Any]:
    """Loss at contexts of ``m * block_size`` tokens for each ``m`` in ``multipliers``, over the same
    ``windows`` validation windows of ``span * block_size`` tokens (``span``: :data:`SPAN` when every
    multiplier divides it, else the largest multiplier; each multiplier must divide it).

    Returns ``block_size``; ``eval_tokens`` (the target tokens scored at every context);
    ``extrapolation`` ({str(m): mean loss, or None past the model's position table});
    ``per_position`` (the mean loss at each of the ``block_size`` positions at 1x, None without
    1x); ``per_position_long`` (at the largest context, the mean over buckets of
    ``per_position_long_width`` positions, ``buckets`` of them; None when that context is out of
    reach) and ``per_position_long_width``.
    """
    mults = list(multipliers)
    if buckets < 1:
        raise ValueError(f"buckets must be >= 1, got {buckets}")
    span = default_span(mults) if span is None else span
    if any(span % m for m in mults):
        raise ValueError(f"every context multiplier must divide span={span}, got multipliers {tuple(multipliers)}")
    T, longest = block_size, max(mults) * block_size
    win = validation_windows(tokens, span * T, windows)
    table = max_positions(model)
    width = max(1, longest // buckets)
    extrapolation: dict[str, float | None] = {}
    per_position = per_position_long = None
    for m in mults:
        if table is not None and m * T > table:
            extrapolation[str(m)] = None
            continue
        losses = token_losses(model, win, m * T, batch_tokens=batch_tokens, device=device, dtype=dtype)  # (rows, m T)
        extrapolation[str(m)] = losses.mean().item()
        if m == 1:
            per_position = losses.mean(0).tolist()
        if m == max(mults):
            per_position_long = _bucket_means(losses, width)
    return {
        "block_size": T,
        "eval_tokens": int(win.shape[0] * span * T),
        "extrapolation": extrapolation,
        "per_position": per_position,
        "per_position_long": per_position_long,
        "per_position_long_width": width,
    }


def evaluate_checkpoint(
    run_dir: str | os.PathLike,
    *,
    windows: int,
    device: torch.device | str = "cpu",
    multipliers: Sequence[int] = MULTIPLIERS,
    buckets: int = 64,
    batch_tokens: int = 16384,
    data_dir: str | os.PathLike | None = None,
) -> dict[str, Any]:
    """:func:`length_extrapolation` of the latest checkpoint of a training run folder, on the
    validation split it was trained with (or ``data_dir``), in the run's dtype.

    The checkpoint is loaded (its size and sha256 checked) first: a damaged one raises
    :class:`~posenc.checkpoint.CheckpointError`, cached numbers or not. The result is cached in
    ``run_dir/eval.json`` with its ``settings`` (windows, multipliers, span, buckets, the
    checkpoint's sha256, the validation data and its sha256, the dtype) and ``eval_time_s``; a
    cache is returned without evaluating only when all of its settings match.
    """
    from posenc.checkpoint import load_checkpoint, read_manifest
    from posenc.data import load_split, read_meta
    from posenc.devices import resolve_dtype
    from posenc.model import GPT

    folder = Path(run_dir)
    device = torch.device(device)
    t0 = time.time()
    ckpt = load_checkpoint(folder, map_location="cpu")
    model = GPT.from_checkpoint(ckpt)
    config = model.config
    dtype = resolve_dtype(ckpt["train_config"]["dtype"], device)
    source = Path(ckpt["data"]["data_dir"] if data_dir is None else data_dir)
    settings = {
        "eval_windows": windows,
        "multipliers": list(multipliers),
        "span": default_span(multipliers),
        "buckets": buckets,
        "checkpoint_sha256": read_manifest(folder)["sha256"],
        "data_dir": str(source.resolve()),
        "val_sha256": read_meta(source)["splits"]["val"].get("sha256"),
        "dtype": str(dtype).removeprefix("torch."),
    }
    cache = folder / "eval.json"
    if cache.exists():
        try:
            saved = json.loads(cache.read_text())
        except ValueError:  # cut short while being written: evaluate again
            saved = {}
        if saved.get("settings") == settings:
            return saved
    model.to(device).eval()
    val = load_split(source, "val", vocab_size=config.vocab_size, block_size=settings["span"] * config.block_size)
    result = length_extrapolation(
        model,
        val,
        block_size=config.block_size,
        windows=windows,
        multipliers=multipliers,
        buckets=buckets,
        batch_tokens=batch_tokens,
        device=device,
        dtype=dtype,
        span=settings["span"],
    )
    result = {"settings": settings, **result, "eval_time_s": time.time() - t0}
    atomic_write(cache, json.dumps(result))
    return result

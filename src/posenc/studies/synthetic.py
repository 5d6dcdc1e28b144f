"""The synthetic study: passkey retrieval by length and depth, a length-generalisation probe that
validation loss cannot show.

Each sequence is filler tokens with a passkey planted at a random depth -- a marker followed by
``KEY_LEN`` value tokens -- and ends with a query marker; the model must then emit the value.
Models train on lengths up to ``train_len`` (uniform in [train_len / 4, train_len], every depth)
with the loss on the value tokens only, and are tested at 1x-4x ``train_len`` in depth bins: a
retrieval counts when every value token is the argmax. Chance is ``VALUE_VOCAB ** -KEY_LEN``.

Published expectations this probes: Kazemnejad et al. 2023 ("The Impact of Positional Encoding on
Length Generalization in Transformers", NeurIPS) find NoPE generalises better than RoPE, ALiBi
and absolute encodings on algorithmic tasks, with T5's bias close; Li et al. 2024 (FIRE,
"Functional Interpolation for Relative Positions Improves Long Context Transformers", ICLR) report
FIRE generalising best among additive biases, and ALiBi/KERPLE biased towards recent tokens,
which retrieval of a distant key punishes.
"""

from __future__ import annotations

import datetime
import json
import multiprocessing
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from posenc.io import atomic_write
from posenc.jobs import Sweep
from posenc.studies import counting
from posenc.studies.common import environment, write_study
from posenc.variants import CONTENT_DEPENDENT

#: Token ids: values, filler, then the two markers.
VALUE_VOCAB, FILLER_VOCAB = 16, 32
KEY_MARK, QUERY_MARK = VALUE_VOCAB + FILLER_VOCAB, VALUE_VOCAB + FILLER_VOCAB + 1
VOCAB = QUERY_MARK + 1
KEY_LEN = 2

#: Encodings probed (names of posenc.variants). Learned absolute positions have no vectors past
#: the training length, so they are left out.
SYNTHETIC_VARIANTS: tuple[str, ...] = (
    "nope",
    "rope",
    "alibi",
    "kerple",
    "fire",
    "t5",
    "rnope",
    "sinusoidal",
    *CONTENT_DEPENDENT,
)


@dataclass(frozen=True)
class ProbeConfig:
    """The task and the small model trained on it (the same for every encoding)."""

    train_len: int = 64
    multipliers: tuple[int, ...] = (1, 2, 3, 4)
    depth_bins: int = 5
    n_layer: int = 4
    n_head: int = 4
    n_embd: int = 64
    steps: int = 500
    batch_size: int = 32
    lr: float = 3e-3
    test_per_cell: int = 100


#: Per sweep preset: the probe's size (``test``/``quick``: tiny, for the test suite).
PROBE_PRESETS: dict[str, ProbeConfig] = {
    "cpu": ProbeConfig(),
    "owt-16m": ProbeConfig(steps=3000, n_layer=4, n_embd=128, batch_size=128),
    "quick": ProbeConfig(train_len=16, steps=30, n_embd=32, batch_size=16, test_per_cell=16, depth_bins=2),
    "test": ProbeConfig(train_len=16, steps=4, n_embd=32, batch_size=4, test_per_cell=2, depth_bins=2),
}


def passkey_batch(
    batch: int, length: int, generator: torch.Generator, depth: tuple[float, float] = (0.0, 1.0)
) -> tuple[Tensor, Tensor, Tensor]:
    """``batch`` sequences of ``length`` tokens: (tokens (B, length), targets (B, length) with -1
    everywhere but the value positions, the relative depth of each key in [0, 1]).

    The key (marker + value) starts at a depth drawn uniformly from ``depth`` of the room before
    the query; the last ``KEY_LEN + 1`` tokens are the query marker and the value (its targets
    are predicted from the marker on).
    """
    room = length - 2 * (KEY_LEN + 1)  # filler slots before the query
    if room < 0:
        raise ValueError(f"passkey sequences need at least {2 * (KEY_LEN + 1)} tokens, got length={length}")
    tokens = VALUE_VOCAB + torch.randint(0, FILLER_VOCAB, (batch, length), generator=generator)
    value = torch.randint(0, VALUE_VOCAB, (batch, KEY_LEN), generator=generator)
    lo, hi = depth
    rel = lo + (hi - lo) * torch.rand(batch, generator=generator)
    start = torch.clamp((rel * room).round().long(), 0, room)
    rows = torch.arange(batch)
    tokens[rows, start] = KEY_MARK
    for j in range(KEY_LEN):
        tokens[rows, start + 1 + j] = value[:, j]
    q = length - KEY_LEN - 1
    tokens[:, q] = QUERY_MARK
    tokens[:, q + 1 :] = value
    targets = torch.full_like(tokens, -1)
    targets[:, q : q + KEY_LEN] = value  # the marker predicts value[0], value[0] predicts value[1], ...
    return tokens, targets, start.float() / max(room, 1)


def _passkey(batch: int, length: int, gen: torch.Generator, depth: tuple[float, float] = (0.0, 1.0)):
    x, y, _ = passkey_batch(batch, length, gen, depth)
    return x, y


#: The probes: name -> (vocabulary, shortest sequence, batch(batch, length, generator, depth bin) ->
#: (tokens, targets), whether accuracy is split by depth).
TASKS: dict[str, tuple[int, int, Any, bool]] = {
    "passkey": (VOCAB, 2 * (KEY_LEN + 1), _passkey, True),
    "counting": (counting.VOCAB, counting.MIN_LEN, lambda b, n, g, depth=None: counting.counting_batch(b, n, g), False),
}


def build_model(variant: str, probe: ProbeConfig, seed: int, vocab_size: int = VOCAB):
    from posenc.config import GPTConfig
    from posenc.model import GPT

    torch.manual_seed(seed)
    sizes = dict(n_layer=probe.n_layer, n_head=probe.n_head, n_embd=probe.n_embd, vocab_size=vocab_size)
    config = GPTConfig.from_preset("tiny", block_size=probe.train_len, **sizes)  # no biases, no dropout
    return GPT(config.with_variant(variant))


def train_probe(
    variant: str, probe: ProbeConfig, seed: int, device: torch.device | str = "cpu", task: str = "passkey"
) -> tuple[Any, dict[str, Any]]:
    """The model trained on lengths in [train_len / 4, train_len]; its final training loss and time.
    Batches are drawn on the CPU (the same for every device) and moved to ``device``."""
    vocab, shortest, batch_of, _ = TASKS[task]
    model = build_model(variant, probe, seed, vocab).to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=probe.lr, weight_decay=0.0, betas=(0.9, 0.98))
    gen = torch.Generator().manual_seed(1000 + seed)
    warmup = max(1, probe.steps // 20)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / warmup))
    min_len = max(shortest, probe.train_len // 4)
    t0, losses = time.time(), []
    model.train()
    for _ in range(probe.steps):
        length = int(torch.randint(min_len, probe.train_len + 1, (1,), generator=gen))
        x, y = batch_of(probe.batch_size, length, gen)
        x, y = x.to(device), y.to(device)
        logits, _ = model(x)
        loss = F.cross_entropy(logits.flatten(0, 1), y.flatten(), ignore_index=-1)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        losses.append(loss.item())
    tail = losses[-max(1, len(losses) // 10) :]
    return model, {"train_loss": sum(tail) / len(tail), "train_time_s": time.time() - t0}


@torch.no_grad()
def accuracy_grid(model: Any, probe: ProbeConfig, seed: int, task: str = "passkey") -> list[list[float]]:
    """Accuracy [multiplier][depth bin] on fresh sequences (the same ones for every model of one seed);
    a sequence counts when every target token is the argmax. A task without depths has one bin."""
    model.eval()
    device = next(model.parameters()).device
    _, _, batch_of, by_depth = TASKS[task]
    bins = probe.depth_bins if by_depth else 1
    gen = torch.Generator().manual_seed(2000 + seed)
    grid = []
    for m in probe.multipliers:
        row = []
        for b in range(bins):
            x, y = batch_of(probe.test_per_cell, m * probe.train_len, gen, (b / bins, (b + 1) / bins))
            x, y = x.to(device), y.to(device)
            logits, _ = model(x)
            hit = (logits.argmax(-1) == y) | (y < 0)
            row.append(hit.all(dim=1).float().mean().item())
        grid.append(row)
    return grid


def probe_run(variant: str, probe: ProbeConfig, seed: int, device: str, path: Path, task: str = "passkey") -> dict:
    """One (variant, seed) of a task: the model trained, its accuracy grid, both saved atomically to ``path``."""
    model, info = train_probe(variant, probe, seed, device, task)
    saved = {
        "variant": variant,
        "seed": seed,
        "task": task,
        "probe": _settings(probe),
        **info,
        "accuracy": accuracy_grid(model, probe, seed, task),
    }
    atomic_write(path, json.dumps(saved, indent=1))
    return saved


def _settings(probe: ProbeConfig) -> dict[str, Any]:
    return asdict(probe) | {"multipliers": list(probe.multipliers)}


def run(sweep: Sweep) -> int:
    """``compare --study synthetic``: every (task, variant, seed) trained and tested, ``sweep.jobs`` at a
    time (worker processes of ``sweep.threads`` threads when more than one); each result is kept in
    ``<out>/synthetic/[counting-]<variant>-s<seed>.json``, so a rerun continues. A worker's probe is
    the same to the bit as one trained in this process with the same thread count."""
    probe = PROBE_PRESETS.get(sweep.name, PROBE_PRESETS["cpu"])
    variants, seeds = list(sweep.variants or SYNTHETIC_VARIANTS), list(sweep.seeds)
    folder = sweep.out / "synthetic"
    folder.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    runs: dict[str, Any] = {}
    todo = []
    for task in TASKS:
        for v in variants:
            for s in seeds:
                path = folder / f"{'' if task == 'passkey' else task + '-'}{v}-s{s}.json"
                saved = json.loads(path.read_text()) if path.exists() else None
                if saved is None or saved.get("probe") != _settings(probe):
                    todo.append((v, probe, s, str(sweep.device), path, task))
                else:
                    runs[_key(task, v, s)] = saved
    runs |= _train_all(todo, sweep, probe)
    passkey = {f"{v}/s{s}": runs[_key("passkey", v, s)] for v in variants for s in seeds}
    counted = {f"{v}/s{s}": runs[_key("counting", v, s)] for v in variants for s in seeds}
    results = {
        "kind": "synthetic",
        "format": 1,
        "created": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "command": sweep.command,
        "preset": sweep.name,
        "probe": _settings(probe),
        "task": {
            "value_vocab": VALUE_VOCAB,
            "filler_vocab": FILLER_VOCAB,
            "key_len": KEY_LEN,
            "chance": VALUE_VOCAB**-KEY_LEN,
        },
        "variants": variants,
        "seeds": seeds,
        "environment": environment(
            sweep.device, sweep.jobs, sweep.threads if sweep.jobs > 1 else torch.get_num_threads()
        ),
        "wall_time_s": time.time() - t0,
        "runs": passkey,
        "mean_accuracy": _means(passkey, variants, seeds),
        "counting": {
            "task": {"variables": counting.N_VARS, "max_value": counting.MAX_VAL, "weights": list(counting.WEIGHTS)},
            "majority": [counting.majority_accuracy(m * probe.train_len) for m in probe.multipliers],
            "runs": counted,
            "mean_accuracy": _means(counted, variants, seeds),
        },
    }
    write_study(results, sweep.out, sweep.render)
    return 0


def _key(task: str, v: str, s: int) -> str:
    return f"{task}/{v}/s{s}"


def _means(runs: dict[str, Any], variants: list[str], seeds: list[int]) -> dict[str, list[list[float]]]:
    """Per variant, the accuracy grid averaged over seeds."""
    grids = {v: [runs[f"{v}/s{s}"]["accuracy"] for s in seeds] for v in variants}
    return {
        v: [[sum(c) / len(c) for c in zip(*rows, strict=True)] for rows in zip(*g, strict=True)]
        for v, g in grids.items()
    }


def _train_all(todo: list[tuple], sweep: Sweep, probe: ProbeConfig) -> dict[str, Any]:
    """Train the probes still to run, ``sweep.jobs`` at a time; their results by key."""
    print(f"[synthetic] {len(todo)} probe(s) to train, {min(sweep.jobs, max(1, len(todo)))} at a time", flush=True)
    pool, runs = None, {}
    if sweep.jobs > 1 and len(todo) > 1:
        ctx = multiprocessing.get_context("spawn")  # no fork of a process holding torch's thread pools
        pool = ProcessPoolExecutor(
            sweep.jobs, mp_context=ctx, initializer=torch.set_num_threads, initargs=(sweep.threads or 1,)
        )
        done = (f.result() for f in as_completed([pool.submit(probe_run, *job) for job in todo]))
    else:
        done = (probe_run(*job) for job in todo)
    try:
        for saved in done:
            runs[_key(saved["task"], saved["variant"], saved["seed"])] = saved
            acc = saved["accuracy"]
            print(
                f"[synthetic] {saved['task']} {saved['variant']} seed {saved['seed']}: accuracy by length "
                + ", ".join(f"{m}x {sum(r) / len(r):.2f}" for m, r in zip(probe.multipliers, acc, strict=True)),
                flush=True,
            )
    finally:
        if pool is not None:  # an error or an interrupt: drop the queued probes (the finished ones are saved)
            pool.shutdown(cancel_futures=True)
    return runs

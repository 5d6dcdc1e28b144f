"""The learning-rate study: is any ranking of the table an artifact of its one learning rate?

Phase 1 trains one seed of every variant at each rate of the grid; each variant's best rate is the
one with the lowest final validation loss (a run whose loss became non-finite counts as worst).
A best rate at the edge of the rates a variant has run is no answer (the optimum may lie beyond
it), so phase 1 then steps past that edge by ``EDGE_FACTOR``, up to ``--lr-edge-steps`` times per
variant, until the best rate has a worse one on each side. Phase 2 trains the remaining seeds at
the shared rate (the train preset's) and at each variant's best rate, so both tables have the same
seeds. Runs at the shared rate are the table study's own run folders (``runs/<variant>-s<seed>``,
the same flags), so a table sweep in the same ``--out`` is reused; other rates live in
``runs/<variant>-lr<rate>-s<seed>``. The cosine schedule keeps its shape: ``min_lr`` is a tenth of
the peak rate, as in the presets.
"""

from __future__ import annotations

import datetime
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from posenc.jobs import DIVERGED, Sweep, plan_run
from posenc.report.stats import order_changes, spread
from posenc.studies.common import environment, read_curve, write_study
from posenc.train.config import TRAIN_PRESETS
from posenc.train.runlog import read_summary
from posenc.variants import CONTENT_DEPENDENT

#: Rates spanning 8x around the presets' 2e-3, and the variants the study asks about: the
#: reference study's five (QK-norm as RoPE + QK-norm), ALiBi, FIRE and the rows of content-dependent
#: positions (FoX, CoPE, stick-breaking, sinks) and the windowed hybrid.
LR_GRID: tuple[float, ...] = (1e-3, 2e-3, 4e-3, 8e-3)
LR_VARIANTS: tuple[str, ...] = (
    "absolute",
    "nope",
    "rope",
    "qknorm",
    "rnope",
    "alibi",
    "fire",
    *CONTENT_DEPENDENT,
)
#: The step past the edge of the grid when a variant's best rate lies on it (the grid's own ratio).
EDGE_FACTOR = 2.0


@dataclass(frozen=True)
class Settings:
    """The study's own settings: the rate grid (the preset's rate is always added), how many steps
    past its edge to take, and ``no_train`` (write lr.json from the runs already finished)."""

    grid: tuple[float, ...] = LR_GRID
    edge_steps: int = 2
    no_train: bool = False

    def __post_init__(self) -> None:
        if not self.grid or any(not (isinstance(x, (int, float)) and x > 0) for x in self.grid):
            raise ValueError(f"the lr grid must be rates > 0, got {self.grid!r}")
        if not isinstance(self.edge_steps, int) or self.edge_steps < 0:
            raise ValueError(f"edge_steps must be an int >= 0, got {self.edge_steps!r}")


def lr_folder(sweep: Sweep, variant: str, lr: float, seed: int, shared_lr: float) -> Path:
    if math.isclose(lr, shared_lr):
        return sweep.run_dir(variant, seed)
    return sweep.out / "runs" / f"{variant}-lr{lr:g}-s{seed}"


def lr_overrides(lr: float, shared_lr: float) -> dict[str, float]:
    """The TrainConfig fields of a run at ``lr``: the cosine schedule keeps its shape (min_lr = lr / 10)."""
    return {} if math.isclose(lr, shared_lr) else {"learning_rate": float(f"{lr:g}"), "min_lr": float(f"{lr / 10:g}")}


def best_rates(phase1: dict[str, dict[float, float | None]]) -> dict[str, float]:
    """Per variant (rate -> phase-1 validation loss, None when diverged), the rate of the lowest
    loss; diverged runs count as worst."""
    return {
        v: min(losses, key=lambda lr: math.inf if losses[lr] is None else losses[lr]) for v, losses in phase1.items()
    }


def beyond_edge(losses: dict[float, float | None], factor: float = EDGE_FACTOR) -> float | None:
    """The next rate to try when the best of ``losses`` (rate -> final validation loss, None when
    diverged or pending) is the highest or the lowest rate run: one ``factor`` past it. None when the
    best is inside, when no run has a loss, or when only one rate has run (no direction yet)."""
    finite = {lr: x for lr, x in losses.items() if x is not None}
    if not finite or len(losses) < 2:
        return None
    best = min(finite, key=finite.get)
    if best == max(losses):
        return best * factor
    if best == min(losses):
        return best / factor
    return None


@dataclass
class LRStudy:
    """One learning-rate study: its settings, where its runs live, and how to train them."""

    sweep: Sweep
    settings: Settings
    grid: list[float] = field(init=False)
    variants: list[str] = field(init=False)
    seeds: list[int] = field(init=False)
    shared_lr: float = field(init=False)
    rates: dict[str, list[float]] = field(init=False)  # phase 1's rates per variant: the grid and any step past it

    def __post_init__(self) -> None:
        self.shared_lr = TRAIN_PRESETS[self.sweep.preset.train_preset]["learning_rate"]
        self.grid = sorted(set(self.settings.grid) | {self.shared_lr})  # the shared rate is always a candidate
        self.variants = list(self.sweep.variants or LR_VARIANTS)
        self.seeds = list(self.sweep.seeds)
        self.rates = {v: list(self.grid) for v in self.variants}

    def folder(self, variant: str, lr: float, seed: int) -> Path:
        return lr_folder(self.sweep, variant, lr, seed, self.shared_lr)

    def train(self, pairs: list[tuple[str, float, int]], what: str) -> int:
        jobs = []
        for v, lr, s in pairs:
            folder = self.folder(v, lr, s)
            if plan_run(folder, self.sweep.spec(v, s, folder, train=lr_overrides(lr, self.shared_lr))):
                jobs.append((f"{v} lr {lr:g}", s, folder))
        print(f"[lr] {what}: {len(jobs)} run(s) to train", flush=True)
        return self.sweep.train(jobs)

    def run_record(self, v: str, lr: float, s: int) -> dict[str, Any]:
        folder = self.folder(v, lr, s)
        summary = read_summary(folder)
        return {
            "variant": v,
            "lr": lr,
            "seed": s,
            "folder": str(folder),
            "diverged": (diverged := (folder / DIVERGED).exists()),
            "pending": summary is None and not diverged,  # not trained (yet)
            **{k: None if summary is None else summary[k] for k in ("val_loss", "train_loss", "train_time_s")},
            "curve": [] if summary is None else read_curve(folder),
        }

    def phase1(self) -> list[tuple[str, float, int]]:
        return [(v, lr, self.seeds[0]) for v, rates in self.rates.items() for lr in rates]

    def best(self) -> dict[str, float]:
        """Each variant's best phase-1 rate over its finished runs; none for a variant with none finished."""
        records = {(v, lr): self.run_record(v, lr, s) for v, lr, s in self.phase1()}
        finished = {v for (v, _), r in records.items() if not r["pending"]}
        return best_rates(
            {v: {lr: records[(v, lr)]["val_loss"] for lr in rates} for v, rates in self.rates.items() if v in finished}
        )

    def results(self, pairs: list[tuple[str, float, int]], best: dict[str, float], wall: float) -> dict[str, Any]:
        """lr.json: every run in ``pairs``, phase 1's losses and best rates and, when every seed has
        run at the shared and the best rates, both tables and the orderings that change."""
        runs = {f"{v}/lr{lr:g}/s{s}": self.run_record(v, lr, s) for v, lr, s in sorted(pairs)}

        def table(rate_of: dict[str, float]) -> dict[str, Any] | None:
            if any(v not in rate_of for v in self.variants):
                return None
            keys = {v: [f"{v}/lr{rate_of[v]:g}/s{s}" for s in self.seeds] for v in self.variants}
            if not all(k in runs and not runs[k]["pending"] for ks in keys.values() for k in ks):
                return None
            return {
                v: {"lr": rate_of[v], **{m: spread([runs[k][m] for k in ks]) for m in ("val_loss", "train_loss")}}
                for v, ks in keys.items()
            }

        at_shared, at_best = table(dict.fromkeys(self.variants, self.shared_lr)), table(best)
        means = lambda t: {v: r["val_loss"]["mean"] for v, r in t.items() if r["val_loss"]}  # noqa: E731
        return {
            "kind": "lr",
            "format": 1,
            "created": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
            "command": self.sweep.command,
            "preset": self.sweep.name,
            "config": self.sweep.preset.to_dict(),
            "grid": self.grid,
            "shared_lr": self.shared_lr,
            "variants": self.variants,
            "seeds": self.seeds,
            "environment": environment(self.sweep.device, self.sweep.jobs, self.sweep.threads),
            "wall_time_s": wall,
            "runs": runs,
            "phase1": {
                v: {f"{lr:g}": runs[f"{v}/lr{lr:g}/s{self.seeds[0]}"]["val_loss"] for lr in sorted(rates)}
                for v, rates in self.rates.items()
            },
            "beyond_grid": {
                v: sorted(set(rates) - set(self.grid)) for v, rates in self.rates.items() if set(rates) - set(self.grid)
            },
            "edge_steps": self.settings.edge_steps,
            "edge_factor": EDGE_FACTOR,
            "best_lr": best,
            "at_shared": at_shared,
            "at_best": at_best,
            "order_changes": order_changes(means(at_shared), means(at_best)) if at_shared and at_best else None,
        }


def run(sweep: Sweep) -> int:
    """``compare --study lr``: phase 1, lr.json with its answer, phase 2, lr.json complete. With
    ``no_train``, lr.json (and the page) from the runs already finished, the others ``pending``."""
    settings = sweep.settings if isinstance(sweep.settings, Settings) else Settings()
    study = LRStudy(sweep, settings)
    t0 = time.time()
    train = (lambda pairs, what: 0) if settings.no_train else study.train
    # the rates nearest the shared one first, so a study stopped early has every variant at them
    by_distance = sorted(study.grid, key=lambda lr: abs(math.log(lr / study.shared_lr)))
    phase1 = [(v, lr, study.seeds[0]) for lr in by_distance for v in study.variants]
    what = f"phase 1 ({len(study.variants)} variants x {len(study.grid)} rates, seed {study.seeds[0]})"
    if code := train(phase1, what):
        return code
    if code := _past_the_edge(study, settings.edge_steps, train):
        return code
    best = study.best()
    print("[lr] best rates: " + ", ".join(f"{v} {lr:g}" for v, lr in best.items()), flush=True)
    write_study(study.results(study.phase1(), best, time.time() - t0), sweep.out, None)  # readable while phase 2 trains
    phase2 = sorted(
        {(v, lr, s) for v in best for lr in {study.shared_lr, best[v]} for s in study.seeds}
        | {(v, study.shared_lr, s) for v in study.variants for s in study.seeds}
    )
    if code := train(phase2, f"phase 2 (seeds {study.seeds} at the shared and the best rates)"):
        return code
    write_study(study.results(set(study.phase1()) | set(phase2), best, time.time() - t0), sweep.out, sweep.render)
    return 0


def _past_the_edge(study: LRStudy, steps: int, train: Any) -> int:
    """Phase 1's steps past the grid's edge, up to ``steps`` times (module docstring); an exit code."""
    for _ in range(steps):
        beyond = {}
        for v, rates in study.rates.items():
            losses = {x: study.run_record(v, x, study.seeds[0]) for x in rates}
            if not any(r["pending"] for r in losses.values()):
                nxt = beyond_edge({x: r["val_loss"] for x, r in losses.items()})
                if nxt is not None:
                    beyond[v] = nxt
        if not beyond:
            return 0
        for v, x in beyond.items():
            study.rates[v].append(x)
        listed = ", ".join(f"{v} {x:g}" for v, x in beyond.items())
        if code := train([(v, x, study.seeds[0]) for v, x in beyond.items()], f"phase 1, past the edge ({listed})"):
            return code
    return 0

"""The :class:`Trainer`: one pretraining run, from prepared data to a checkpointed, summarised model.

Order of work, as in nanoGPT's train.py: process group -> data -> model, optimizer, GradScaler
(a no-op unless fp16) -> restore or init -> compile -> DDP -> loop (:meth:`Trainer.evaluate`,
:meth:`Trainer.step`, log, :meth:`Trainer.save`) -> samples and :meth:`Trainer.summarize`. Every
choice comes from the two configs; nothing is read from the command line or the environment except
torchrun's rank variables.

Numerical guards raise :class:`~posenc.train.config.NonFiniteError` before an update. Hooks, for
tests that inject faults: an object with any of ``on_loss(step, micro, loss) -> loss`` and
``on_gradients(step, params)``; ``None`` for real runs.
"""

from __future__ import annotations

import math
import signal
import sys
import time
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import torch
from torch.nn.parallel import DistributedDataParallel as DDP

from posenc.checkpoint import save_checkpoint
from posenc.config import GPTConfig
from posenc.data import (
    META_NAME,
    DataError,
    batch_offsets,
    document_ids,
    get_batch,
    get_tokenizer,
    load_split,
    prepare,
    refuse_another_corpus,
)
from posenc.evaluate import validation_loss
from posenc.io import atomic_write
from posenc.model import GPT
from posenc.train import runlog, state
from posenc.train.config import EVAL_SEED, NonFiniteError, TrainConfig, get_lr, resolve_device, resolve_dtype
from posenc.train.distributed import Dist

PROMPTS = {"bytes": ["def ", "The ", "import "], "gpt2": ["The", "In a", "import"]}


def data_dir_of(cfg: TrainConfig) -> Path:
    return Path(cfg.data_dir or default_data_dir(cfg))


def default_data_dir(cfg: TrainConfig) -> Path:
    """``data/<dataset>-<tokenizer>``: prepared on first use."""
    return Path(f"data/{cfg.dataset}-{Path(cfg.tokenizer).stem}")  # a model's tokenizer: its file name


def check_data_dir(cfg: TrainConfig) -> None:
    """A ``data_dir`` given other than the default folder must hold prepared shards (its
    ``meta.json``): a missing or unprepared one is refused with the command that prepares it, never
    filled with a corpus the user did not name."""
    if cfg.data_dir is None or Path(cfg.data_dir) == default_data_dir(cfg):
        return
    folder = Path(cfg.data_dir)
    if (folder / META_NAME).is_file():
        return
    what = "does not exist" if not folder.exists() else f"holds no prepared shards (no {META_NAME})"
    files = "".join(f" {f}" for f in cfg.data_files)
    source = f"--dataset {cfg.dataset}" + (f" --data-files{files}" if files else "")
    raise DataError(
        f"the data folder {folder} {what}; prepare it first with: "
        f"posenc prepare {source} --tokenizer {cfg.tokenizer} --out-dir {folder}"
    )


class Trainer:
    """One run of ``config`` as ``cfg`` says, in ``cfg.out_dir`` (``ckpt`` to resume from, ``init``:
    another run's final weights to start from)."""

    def __init__(
        self,
        config: GPTConfig,
        cfg: TrainConfig,
        dist: Dist,
        *,
        ckpt: dict[str, Any] | None = None,
        init: dict[str, Any] | None = None,
        progress: bool = True,
        hooks: Any = None,
        log: Any = print,
    ) -> None:
        if cfg.world_size != dist.world:
            cfg = cfg.replace(world_size=dist.world)
        self.config, self.cfg, self.dist, self.hooks, self.log = config, cfg, dist, hooks, log
        self.out_dir = Path(cfg.out_dir)
        device = resolve_device(cfg.device)
        if device.type == "cuda" and dist.enabled:
            device = torch.device(f"cuda:{dist.local_rank}")
            torch.cuda.set_device(device)
        self.device, self.dtype = device, resolve_dtype(cfg.dtype, device)
        self.use_compile = cfg.compile if cfg.compile is not None else device.type == "cuda"
        self.tokenizer = get_tokenizer(cfg.tokenizer)
        self.t_session = time.time()
        self._setup_data(progress)
        self._setup_model(ckpt, init)
        self.run_log = runlog.RunLog(self.out_dir, start_step=self.step_count, enabled=dist.master, sinks=cfg.log_to)

    def _setup_data(self, progress: bool) -> None:
        """Prepared once (a no-op when the shards exist), then memory-mapped."""
        cfg, T = self.cfg, self.config.block_size
        self.data_dir = data_dir_of(cfg)
        if self.dist.master:
            refuse_another_corpus(self.data_dir, cfg.dataset, get_tokenizer(cfg.tokenizer).name)
            prepare(
                self.data_dir,
                source=cfg.dataset,
                data_files=list(cfg.data_files) or None,
                tokenizer=cfg.tokenizer,
                progress=progress,
            )
        self.dist.barrier()
        self.train_data = load_split(self.data_dir, "train", vocab_size=self.config.vocab_size, block_size=T)
        self.val_data = load_split(self.data_dir, "val", vocab_size=self.config.vocab_size, block_size=T)
        self.rows = self.dist.rows(cfg.batch_size)
        self.tokens_per_step = cfg.batch_size * cfg.grad_accum * T

    def _setup_model(self, ckpt: dict[str, Any] | None, init: dict[str, Any] | None) -> None:
        """Model, optimizer, scaler (a no-op unless fp16); restored, or started from ``init``; compiled; DDP."""
        cfg, device = self.cfg, self.device
        torch.manual_seed(cfg.seed)
        model = GPT(self.config).to(device)
        if init is not None:
            try:
                model.load_state_dict(init, strict=True)
            except RuntimeError as e:  # other widths, layers or tables: name what does not fit
                raise ValueError(
                    f"TrainConfig.init_from={cfg.init_from!r}: its weights do not fit this model: {e}"
                ) from None
        self.optimizer = model.configure_optimizers(
            cfg.weight_decay, cfg.learning_rate, (cfg.beta1, cfg.beta2), device.type
        )
        self.scaler = torch.amp.GradScaler(device.type, enabled=self.dtype == torch.float16)
        self.step_count, self.stats = 0, state.new_stats()
        if ckpt is not None:
            self.step_count, self.stats = state.restore(
                ckpt,
                model=model,
                optimizer=self.optimizer,
                scaler=self.scaler,
                device=device,
                dist=self.dist,
                where=self.out_dir,
            )
        # the wall time of earlier sessions (a checkpoint of posenc 0.3 or before holds only their training time)
        self.wall_before = self.stats.get("wall_s", self.stats["elapsed_s"])
        self.raw_model = model
        self.eval_model = torch.compile(model) if self.use_compile else model
        self.model = self.eval_model
        if self.dist.enabled:
            self.model = DDP(self.eval_model, device_ids=[self.dist.local_rank] if device.type == "cuda" else None)
        self.autocast = torch.autocast(device.type, dtype=self.dtype) if self.dtype != torch.float32 else nullcontext()
        self.params = [p for p in model.parameters() if p.requires_grad]

    def describe(self) -> str:
        cfg, n = self.cfg, len(self.train_data)
        compiled = " compiled" if self.use_compile else ""
        return (
            f"posenc | {self.config.describe()} | {self.raw_model.num_params() / 1e6:.2f}M params | "
            f"{self.device} {str(self.dtype).removeprefix('torch.')}{compiled} | world {self.dist.world} | "
            f"{self.tokens_per_step:,} tokens/step x {cfg.max_iters} steps | data {self.data_dir} "
            f"({n:,} train / {len(self.val_data):,} val tokens) | out {self.out_dir}"
        )

    # -- the four things a run does ------------------------------------------------------------

    def evaluate(self) -> float:
        """The mean loss over the fixed validation batches (the same for every run)."""
        world = self.dist.world
        return validation_loss(
            self.eval_model,
            self.val_data,
            block_size=self.config.block_size,
            batch_size=self.cfg.batch_size,
            iters=self.cfg.eval_iters,
            seed=EVAL_SEED,
            rows=self.rows,
            reduce=lambda t: self.dist.sum_(t) / world,
            device=self.device,
            dtype=self.dtype,
        )

    def step(self, stop: list[int]) -> tuple[dict[str, Any], bool]:
        """One optimizer step: (its log record, whether any rank was asked to stop)."""
        cfg, step, T = self.cfg, self.step_count, self.config.block_size
        t0 = time.time()
        lr = get_lr(step, cfg)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        loss_sum = torch.zeros((), dtype=torch.float64, device=self.device)
        on_loss = getattr(self.hooks, "on_loss", None)
        for micro in range(cfg.grad_accum):
            offsets = batch_offsets(len(self.train_data), T, cfg.batch_size, cfg.seed, step, micro)[self.rows]
            x, y = get_batch(self.train_data, offsets, T)
            x, y = x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True)
            if self.dist.enabled:
                self.model.require_backward_grad_sync = micro == cfg.grad_accum - 1
            docs = {"document_ids": document_ids(x, self.tokenizer.eot)} if cfg.pack_documents else {}
            with self.autocast:
                _, loss = self.model(x, y, **docs)
            if on_loss is not None:
                loss = on_loss(step, micro, loss)
            loss = loss / cfg.grad_accum
            self.scaler.scale(loss).backward()
            loss_sum += loss.detach().double()
        if getattr(self.hooks, "on_gradients", None) is not None:
            self.hooks.on_gradients(step, self.params)
        # one collective: the global mean loss and whether any rank was asked to stop
        flag = torch.tensor(float(bool(stop)), dtype=torch.float64, device=self.device)
        flags = self.dist.sum_(torch.stack([loss_sum, flag]))
        step_loss, stop_now = flags[0].item() / self.dist.world, flags[1].item() > 0
        grad_norm, scale, skipped = self._update(step, step_loss)
        dt = time.time() - t0
        record = {
            "step": step,
            "kind": "train",
            "loss": step_loss,
            "lr": lr,
            "tokens": (step + 1) * self.tokens_per_step,
            "tokens_per_s": self.tokens_per_step / dt,
            "grad_norm": grad_norm,
            "loss_scale": scale,
            "skipped": bool(skipped),
            "skipped_total": self.stats["skipped_total"],
        }
        return record, stop_now

    def _update(self, step: int, step_loss: float) -> tuple[float, float, bool]:
        """Unscale, clip, guard, step and count: (grad norm, loss scale, whether fp16 skipped it)."""
        cfg, scaler, stats = self.cfg, self.scaler, self.stats
        scaler.unscale_(self.optimizer)
        clip = cfg.grad_clip if cfg.grad_clip > 0 else float("inf")
        grad_norm = torch.nn.utils.clip_grad_norm_(self.params, clip).item()
        if self.dtype != torch.float16 and not (math.isfinite(step_loss) and math.isfinite(grad_norm)):
            raise NonFiniteError(step, f"non-finite loss {step_loss} / grad norm {grad_norm} in {str(self.dtype)[6:]}")
        scale = scaler.get_scale() if scaler.is_enabled() else 1.0
        scaler.step(self.optimizer)  # skips the update when fp16 gradients are inf/NaN
        scaler.update()
        skipped = scaler.is_enabled() and scaler.get_scale() < scale
        stats["skipped_in_a_row"] = stats["skipped_in_a_row"] + 1 if skipped else 0
        stats["skipped_total"] += int(skipped)
        self.optimizer.zero_grad(set_to_none=True)
        if stats["skipped_in_a_row"] > cfg.max_skipped_steps:
            raise NonFiniteError(step, f"{stats['skipped_in_a_row']} consecutive fp16 steps had inf/NaN gradients")
        if not skipped:
            stats["interval_loss_sum"] += step_loss
            stats["interval_steps"] += 1
        return grad_norm, scale, skipped

    def save(self) -> None:
        """Checkpoint the run (every rank's RNG, so dropout resumes exactly; a collective)."""
        rng = state.gather_rng(self.device, self.dist)
        self.stats["wall_s"] = self.wall_before + time.time() - self.t_session
        if self.dist.master:
            data = {"data_dir": str(self.data_dir), "seed": self.cfg.seed, "next_step": self.step_count}
            save_checkpoint(
                state.capture(
                    model=self.raw_model,
                    optimizer=self.optimizer,
                    scaler=self.scaler,
                    step=self.step_count,
                    rng=rng,
                    config=self.config.to_dict(),
                    train_config=self.cfg.to_dict(),
                    stats=self.stats,
                    data=data | {"eval_seed": EVAL_SEED},
                ),
                self.out_dir,
            )
        self.dist.barrier()

    def summarize(self, wall_time_s: float) -> dict[str, Any]:
        """summary.json (rank 0): the losses, tokens, times, samples and the resolved architecture."""
        samples = generate_samples(self.raw_model, self.tokenizer, self.cfg, self.device)
        arch = self.config.architecture()
        summary = {
            "architecture": arch,
            "layer_codes": arch["layer_codes"],
            "qk_norm": any(layer["attention"].get("qk_norm") for layer in arch["layers"]),
            "kv_cache_bytes": self.config.kv_cache_bytes_per_token(),
            "params": self.raw_model.num_params(),
            "train_loss": self.stats["last_train_loss"],
            "val_loss": self.stats["last_val_loss"],
            "tokens": self.step_count * self.tokens_per_step,
            "steps": self.step_count,
            "wall_time_s": self.wall_before + wall_time_s,
            "train_time_s": self.stats["elapsed_s"],
            "skipped_steps": self.stats["skipped_total"],
            "device": str(self.device),
            "dtype": str(self.dtype)[6:],
            "compile": self.use_compile,
            "world_size": self.dist.world,
            "config": self.config.to_dict(),
            "train_config": self.cfg.to_dict(),
            "samples": samples,
        }
        runlog.write_summary(self.out_dir, summary)
        atomic_write(self.out_dir / "samples.txt", "\n\n-----\n\n".join(samples) + "\n")
        return summary

    # -- the loop ------------------------------------------------------------------------------

    def evaluate_and_log(self, t_run: float, say: Any) -> None:
        stats = self.stats
        val_loss = self.evaluate()
        train_avg = stats["interval_loss_sum"] / stats["interval_steps"] if stats["interval_steps"] else None
        stats.update(interval_loss_sum=0.0, interval_steps=0, last_val_loss=val_loss)
        if train_avg is not None:
            stats["last_train_loss"] = train_avg
        record = {"step": self.step_count, "kind": "eval", "val_loss": val_loss, "train_loss": train_avg}
        self.run_log.write(record | {"tokens": self.step_count * self.tokens_per_step, "time_s": time.time() - t_run})
        shown = "" if train_avg is None else f"train loss {train_avg:.4f}, "
        say(f"step {self.step_count}: {shown}val loss {val_loss:.4f}")

    def run(self, stop: list[int], stop_at: int | None, progress: bool) -> int | None:
        """Train to ``max_iters``: None when done, or the exit code when stopped (a signal in
        ``stop``, or ``stop_at`` reached), after a checkpoint."""
        cfg = self.cfg
        bar = _progress_bar(cfg.max_iters, self.step_count) if self.dist.master and progress else None
        say = bar.write if bar is not None else self.log
        self.raw_model.train()
        t_run = time.time() - self.stats["elapsed_s"]
        speed = runlog.Throughput()
        if self.step_count:
            say(f"resumed from step {self.step_count} of {cfg.max_iters}")
        try:
            while True:
                if self.step_count % cfg.eval_interval == 0 or self.step_count == cfg.max_iters:
                    self.evaluate_and_log(t_run, say)
                if self.step_count >= cfg.max_iters:
                    return None
                record, stop_now = self.step(stop)
                self.run_log.write(record)
                self.step_count += 1
                self.stats["elapsed_s"] = time.time() - t_run
                _report(
                    bar, self.log, record | {"tokens_per_s": speed.update(record["tokens_per_s"])}, self.step_count, cfg
                )
                stop_requested = stop_now or (stop_at is not None and self.step_count >= stop_at)
                if self.step_count % cfg.checkpoint_interval == 0 or self.step_count == cfg.max_iters or stop_requested:
                    self.save()
                if stop_requested:
                    signum = stop[0] if stop else (signal.SIGTERM if stop_now else None)  # another rank's signal
                    self.log(f"stopped at step {self.step_count} of {cfg.max_iters}; checkpoint in {self.out_dir}")
                    return 128 + signum if signum is not None else 0
        finally:
            if bar is not None:
                bar.close()
            self.run_log.close()
            if self.dist.master:
                runlog.plot_curves(self.run_log.records, self.out_dir / "curves.png")


def _report(bar: Any, log: Any, record: dict[str, Any], step: int, cfg: TrainConfig) -> None:
    if bar is not None:
        bar.update(1)
        bar.set_postfix(loss=f"{record['loss']:.4f}", tok_s=f"{record['tokens_per_s']:,.0f}", refresh=False)
    elif step % cfg.log_interval == 0:
        log(
            f"step {step}/{cfg.max_iters} loss {record['loss']:.4f} lr {record['lr']:.2e} "
            f"{record['tokens_per_s']:,.0f} tok/s"
        )


def _progress_bar(total: int, initial: int) -> Any:
    try:
        from tqdm.auto import tqdm
    except ImportError:  # the progress bar is optional
        return None
    return tqdm(total=total, initial=initial, unit="step", dynamic_ncols=True, file=sys.stderr)


def generate_samples(model: GPT, tokenizer: Any, cfg: TrainConfig, device: torch.device) -> list[str]:
    """A few samples from fixed prompts, generated with the KV cache."""
    model.eval()
    gen = torch.Generator(device=device).manual_seed(cfg.seed)
    out = []
    for prompt in PROMPTS.get(cfg.tokenizer, PROMPTS["bytes"])[: cfg.num_samples]:
        idx = torch.tensor([tokenizer.encode(prompt)], dtype=torch.long, device=device)
        ids = model.generate(idx, cfg.sample_tokens, temperature=0.8, top_k=200, generator=gen)
        out.append(tokenizer.decode(ids[0].tolist()))
    model.train()
    return out

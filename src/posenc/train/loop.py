"""``train()``: one pretraining run, from prepared data to a checkpointed, summarised model.

Order of work, as in nanoGPT's train.py: process group -> data -> model, optimizer, GradScaler
(a no-op unless fp16) -> restore or init -> compile -> DDP -> loop (evaluate, step, log,
checkpoint) -> samples and summary. Every choice comes from the two configs; nothing is read from
the command line or the environment except torchrun's rank variables.

Stopping: when ``stop`` (a list that a signal handler appends the signal number to; see
:func:`handle_stop_signals`) becomes non-empty, the loop finishes the current step on every rank,
checkpoints and returns ``128 + signal``. ``stop_at`` stops the same way at a step, as if
interrupted. Numerical guards raise :class:`~posenc.train.config.NonFiniteError` before an update.

Hooks, for tests that inject faults: an object with any of ``on_loss(step, micro, loss) -> loss``
and ``on_gradients(step, params)``; ``None`` for real runs.
"""

from __future__ import annotations

import contextlib
import math
import signal
import sys
import time
from collections.abc import Iterator
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import torch
from torch.nn.parallel import DistributedDataParallel as DDP

from posenc.checkpoint import save_checkpoint
from posenc.config import GPTConfig
from posenc.data import batch_offsets, document_ids, get_batch, get_tokenizer, load_split, prepare
from posenc.evaluate import validation_loss
from posenc.io import atomic_write
from posenc.model import GPT
from posenc.train import runlog, state
from posenc.train.config import EVAL_SEED, NonFiniteError, TrainConfig, get_lr, resolve_device, resolve_dtype
from posenc.train.distributed import Dist

PROMPTS = {"bytes": ["def ", "The ", "import "], "gpt2": ["The", "In a", "import"]}


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


def data_dir_of(cfg: TrainConfig) -> Path:
    return Path(cfg.data_dir or f"data/{cfg.dataset}-{cfg.tokenizer}")


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
    ranks and when stopped early). With ``resume`` the run continues from its latest checkpoint,
    which must have been written with these configs (see :func:`resume_configs`)."""
    t_start = time.time()
    stop = [] if stop is None else stop
    dist = Dist.from_env(cfg.device)
    try:
        return _train(
            config, cfg, dist, resume, stop, stop_at, progress, hooks, log if dist.master else _quiet, t_start
        )
    finally:
        dist.close()


def _quiet(*args: Any, **kwargs: Any) -> None:
    pass


def _train(config, cfg, dist, resume, stop, stop_at, progress, hooks, log, t_start):  # noqa: C901 -- the loop reads top to bottom
    if cfg.world_size != dist.world:
        cfg = TrainConfig.from_dict(cfg.to_dict() | {"world_size": dist.world})
    out_dir = Path(cfg.out_dir)
    device = resolve_device(cfg.device)
    if device.type == "cuda" and dist.enabled:
        device = torch.device(f"cuda:{dist.local_rank}")
        torch.cuda.set_device(device)
    dtype = resolve_dtype(cfg.dtype, device)
    use_compile = cfg.compile if cfg.compile is not None else device.type == "cuda"
    tokenizer = get_tokenizer(cfg.tokenizer)
    # checkpoints first: a missing or damaged one is refused before any data is prepared
    ckpt = state.load_run(out_dir) if resume else None
    init = state.load_run(cfg.init_from)["model"] if cfg.init_from is not None and ckpt is None else None

    # -- data: prepared once (a no-op when the shards exist), then memory-mapped
    data_dir = data_dir_of(cfg)
    if dist.master:
        prepare(
            data_dir,
            source=cfg.dataset,
            data_files=list(cfg.data_files) or None,
            tokenizer=cfg.tokenizer,
            progress=progress,
        )
    dist.barrier()
    T = config.block_size
    train_data = load_split(data_dir, "train", vocab_size=config.vocab_size, block_size=T)
    val_data = load_split(data_dir, "val", vocab_size=config.vocab_size, block_size=T)
    rows = dist.rows(cfg.batch_size)
    tokens_per_step = cfg.batch_size * cfg.grad_accum * T

    # -- model, optimizer, scaler (a no-op unless fp16); restore, or start from another run's weights
    torch.manual_seed(cfg.seed)
    model = GPT(config).to(device)
    if init is not None:
        try:
            model.load_state_dict(init, strict=True)
        except RuntimeError as e:  # other widths, layers or tables: name what does not fit
            raise ValueError(
                f"TrainConfig.init_from={cfg.init_from!r}: its weights do not fit this model: {e}"
            ) from None
        del init
    optimizer = model.configure_optimizers(cfg.weight_decay, cfg.learning_rate, (cfg.beta1, cfg.beta2), device.type)
    scaler = torch.amp.GradScaler(device.type, enabled=dtype == torch.float16)
    step, stats = 0, state.new_stats()
    if ckpt is not None:
        step, stats = state.restore(
            ckpt, model=model, optimizer=optimizer, scaler=scaler, device=device, dist=dist, where=out_dir
        )
        del ckpt
    raw_model = model
    if use_compile:
        model = torch.compile(model)
    eval_model = model
    if dist.enabled:
        model = DDP(model, device_ids=[dist.local_rank] if device.type == "cuda" else None)
    autocast = torch.autocast(device.type, dtype=dtype) if dtype != torch.float32 else nullcontext()
    params = [p for p in raw_model.parameters() if p.requires_grad]
    arch = config.architecture()

    log(
        f"posenc | {arch['layer_codes']} (input {arch['input_pe']}, attention {arch['attention']}"
        f"{', qk-norm ' + arch['qk_norm'] if arch['qk_norm'] else ''}) | {raw_model.num_params() / 1e6:.2f}M params | "
        f"{device} {str(dtype).removeprefix('torch.')}{' compiled' if use_compile else ''} | world {dist.world} | "
        f"{tokens_per_step:,} tokens/step x {cfg.max_iters} steps | data {data_dir} "
        f"({len(train_data):,} train / {len(val_data):,} val tokens) | out {out_dir}"
    )

    run_log = runlog.RunLog(out_dir, start_step=step, enabled=dist.master, sinks=cfg.log_to)

    def evaluate() -> float:
        world = dist.world
        return validation_loss(
            eval_model,
            val_data,
            block_size=T,
            batch_size=cfg.batch_size,
            iters=cfg.eval_iters,
            seed=EVAL_SEED,
            rows=rows,
            reduce=lambda t: dist.sum_(t) / world,
            device=device,
            dtype=dtype,
        )

    def checkpoint() -> None:
        rng = state.gather_rng(device, dist)  # a collective: every rank's RNG, so dropout resumes exactly
        if dist.master:
            save_checkpoint(
                state.capture(
                    model=raw_model,
                    optimizer=optimizer,
                    scaler=scaler,
                    step=step,
                    rng=rng,
                    config=config.to_dict(),
                    train_config=cfg.to_dict(),
                    stats=stats,
                    data={"data_dir": str(data_dir), "seed": cfg.seed, "next_step": step, "eval_seed": EVAL_SEED},
                ),
                out_dir,
            )
        dist.barrier()

    bar = _progress_bar(cfg.max_iters, step) if dist.master and progress else None
    say = bar.write if bar is not None else log
    on_loss = getattr(hooks, "on_loss", None)
    on_gradients = getattr(hooks, "on_gradients", None)

    # -- the loop
    raw_model.train()
    t_run = time.time() - stats["elapsed_s"]
    try:
        while True:
            if step % cfg.eval_interval == 0 or step == cfg.max_iters:
                val_loss = evaluate()
                train_avg = stats["interval_loss_sum"] / stats["interval_steps"] if stats["interval_steps"] else None
                stats.update(interval_loss_sum=0.0, interval_steps=0, last_val_loss=val_loss)
                if train_avg is not None:
                    stats["last_train_loss"] = train_avg
                run_log.write(
                    {
                        "step": step,
                        "kind": "eval",
                        "val_loss": val_loss,
                        "train_loss": train_avg,
                        "tokens": step * tokens_per_step,
                        "time_s": time.time() - t_run,
                    }
                )
                say(
                    f"step {step}: train loss {train_avg if train_avg is None else round(train_avg, 4)}, val loss {val_loss:.4f}"
                )
            if step >= cfg.max_iters:
                break

            t0 = time.time()
            lr = get_lr(step, cfg)
            for group in optimizer.param_groups:
                group["lr"] = lr
            loss_sum = torch.zeros((), dtype=torch.float64, device=device)
            for micro in range(cfg.grad_accum):
                offsets = batch_offsets(len(train_data), T, cfg.batch_size, cfg.seed, step, micro)[rows]
                x, y = get_batch(train_data, offsets, T)
                x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
                if dist.enabled:
                    model.require_backward_grad_sync = micro == cfg.grad_accum - 1
                docs = {"document_ids": document_ids(x, tokenizer.eot)} if cfg.pack_documents else {}
                with autocast:
                    _, loss = model(x, y, **docs)
                if on_loss is not None:
                    loss = on_loss(step, micro, loss)
                loss = loss / cfg.grad_accum
                scaler.scale(loss).backward()
                loss_sum += loss.detach().double()
            if on_gradients is not None:
                on_gradients(step, params)
            # one collective: the global mean loss and whether any rank was asked to stop
            flags = dist.sum_(
                torch.stack([loss_sum, torch.tensor(float(bool(stop)), dtype=torch.float64, device=device)])
            )
            step_loss, stop_now = flags[0].item() / dist.world, flags[1].item() > 0
            scaler.unscale_(optimizer)
            clip = cfg.grad_clip if cfg.grad_clip > 0 else float("inf")
            grad_norm = torch.nn.utils.clip_grad_norm_(params, clip).item()
            if dtype != torch.float16 and not (math.isfinite(step_loss) and math.isfinite(grad_norm)):
                raise NonFiniteError(step, f"non-finite loss {step_loss} / grad norm {grad_norm} in {str(dtype)[6:]}")
            scale = scaler.get_scale() if scaler.is_enabled() else 1.0
            scaler.step(optimizer)  # skips the update when fp16 gradients are inf/NaN
            scaler.update()
            skipped = scaler.is_enabled() and scaler.get_scale() < scale
            stats["skipped_in_a_row"] = stats["skipped_in_a_row"] + 1 if skipped else 0
            stats["skipped_total"] += int(skipped)
            optimizer.zero_grad(set_to_none=True)
            if stats["skipped_in_a_row"] > cfg.max_skipped_steps:
                raise NonFiniteError(step, f"{stats['skipped_in_a_row']} consecutive fp16 steps had inf/NaN gradients")
            if not skipped:
                stats["interval_loss_sum"] += step_loss
                stats["interval_steps"] += 1
            dt = time.time() - t0
            run_log.write(
                {
                    "step": step,
                    "kind": "train",
                    "loss": step_loss,
                    "lr": lr,
                    "tokens": (step + 1) * tokens_per_step,
                    "tokens_per_s": tokens_per_step / dt,
                    "grad_norm": grad_norm,
                    "loss_scale": scale,
                    "skipped": bool(skipped),
                    "skipped_total": stats["skipped_total"],
                }
            )
            step += 1
            stats["elapsed_s"] = time.time() - t_run
            if bar is not None:
                bar.update(1)
                bar.set_postfix(loss=f"{step_loss:.4f}", tok_s=f"{tokens_per_step / dt:,.0f}", refresh=False)
            elif step % cfg.log_interval == 0:
                log(f"step {step}/{cfg.max_iters} loss {step_loss:.4f} lr {lr:.2e} {tokens_per_step / dt:,.0f} tok/s")
            stop_requested = stop_now or (stop_at is not None and step >= stop_at)
            if step % cfg.checkpoint_interval == 0 or step == cfg.max_iters or stop_requested:
                checkpoint()
            if stop_requested:
                if bar is not None:
                    bar.close()
                signum = stop[0] if stop else (signal.SIGTERM if stop_now else None)
                log(f"stopped at step {step}; checkpoint in {out_dir} (continue with resume)")
                if dist.master:
                    runlog.plot_curves(run_log.records, out_dir / "curves.png")
                raise _Stopped(128 + signum if signum is not None else 0)
    except _Stopped as s:
        return {"stopped": True, "exit_code": s.code, "step": step}
    finally:
        run_log.close()
    if bar is not None:
        bar.close()

    # -- summary and samples (rank 0)
    summary = None
    if dist.master:
        samples = generate_samples(raw_model, tokenizer, cfg, device)
        summary = {
            "architecture": arch,
            "pe": config.pe,
            "layer_codes": arch["layer_codes"],
            "qk_norm": config.use_qk_norm,
            "params": raw_model.num_params(),
            "train_loss": stats["last_train_loss"],
            "val_loss": stats["last_val_loss"],
            "tokens": step * tokens_per_step,
            "steps": step,
            "wall_time_s": time.time() - t_start,
            "train_time_s": stats["elapsed_s"],
            "skipped_steps": stats["skipped_total"],
            "device": str(device),
            "dtype": str(dtype)[6:],
            "compile": use_compile,
            "world_size": dist.world,
            "config": config.to_dict(),
            "train_config": cfg.to_dict(),
            "samples": samples,
        }
        runlog.write_summary(out_dir, summary)
        atomic_write(out_dir / "samples.txt", "\n\n-----\n\n".join(samples) + "\n")
        runlog.plot_curves(run_log.records, out_dir / "curves.png")
        log(
            f"done: train loss {summary['train_loss']:.4f} | val loss {summary['val_loss']:.4f} | "
            f"{summary['tokens']:,} tokens | {summary['wall_time_s']:.0f} s | {out_dir}"
        )
        for s in samples:
            log("--- sample ---\n" + s)
    dist.barrier()  # keep every rank in the group until rank 0 has written its summary
    return summary


class _Stopped(Exception):
    def __init__(self, code: int) -> None:
        self.code = code


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
    for prompt in PROMPTS[cfg.tokenizer][: cfg.num_samples]:
        idx = torch.tensor([tokenizer.encode(prompt)], dtype=torch.long, device=device)
        ids = model.generate(idx, cfg.sample_tokens, temperature=0.8, top_k=200, generator=gen)
        out.append(tokenizer.decode(ids[0].tolist()))
    model.train()
    return out


def resume_configs(
    run_dir: str | Path, *, device: str | None = None, world_size: int | None = None
) -> tuple[GPTConfig, TrainConfig]:
    """The configs a run folder was started with (from its latest checkpoint), to pass to
    ``train(..., resume=True)``; ``device`` and ``world_size`` may change between sessions."""
    saved = state.load_run(run_dir)
    d = dict(saved["train_config"]) | {"out_dir": str(run_dir)}
    if device is not None:
        d["device"] = device
    if world_size is not None:
        d["world_size"] = world_size
    return GPTConfig.from_dict(saved["config"]), TrainConfig.from_dict(d)

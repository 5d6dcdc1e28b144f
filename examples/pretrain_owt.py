"""Pretrain a nanoGPT-sized GPT with a chosen positional encoding.

The reference study: a 16.03M-parameter GPT (4 layers, 4 heads, 256 channels, GPT-2 BPE) trained
on 10% of OpenWebText (~900M tokens) in fp16 with torch.compile and flash attention, once per
encoding. On a CUDA machine ``--preset owt-16m`` (the default there) is that run; on a CPU
``--preset cpu`` (the default there) trains a small byte-level model on the embedded corpus
(the Python standard library's own docs and sources) in about four minutes, with no network.

    python examples/pretrain_owt.py --pe rope                       # picks the preset for the device
    torchrun --nproc_per_node=8 examples/pretrain_owt.py --pe rope  # DDP: same global batch, split by rank
    python examples/pretrain_owt.py --pe rope --resume              # continue the run in --out-dir

Outputs in --out-dir: log.jsonl (one record per step and per evaluation), curves.png,
summary.json (final train/val loss, tokens, wall time, samples), checkpoints (ckpt-*.pt +
checkpoints.json). See docs/training.md.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import signal
import sys
import time
from contextlib import nullcontext
from pathlib import Path

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel as DDP

from posenc import GPT, VARIANTS
from posenc.checkpoint import CheckpointError, clean_state_dict, load_checkpoint, save_checkpoint
from posenc.data import DataError, get_tokenizer, load_split, prepare
from posenc.training import (
    EVAL_SEED, TRAIN_PRESETS, NonFiniteError, TrainConfig, batch_offsets, get_batch, get_lr, model_config,
    resolve_device, resolve_dtype,
)  # fmt: skip
from posenc.config import GPTConfig, PRESETS

# -----------------------------------------------------------------------------------------------
# arguments: a preset fills every default; flags override it


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description="Pretrain a GPT with a chosen positional encoding (OpenWebText on GPU, embedded corpus on CPU).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    g = p.add_argument_group("run")
    g.add_argument("--preset", choices=sorted(TRAIN_PRESETS), default=None,
                   help="run preset; default: owt-16m on CUDA, cpu otherwise")
    g.add_argument("--out-dir", default=None, help="run folder; default: out/<preset>-<pe>")
    g.add_argument("--resume", action="store_true",
                   help="continue the run in --out-dir from its latest checkpoint, with its saved configuration")
    g.add_argument("--device", default=None, help="cpu, cuda, cuda:N or auto")
    g.add_argument("--dtype", default=None, choices=["auto", "float32", "bfloat16", "float16"],
                   help="autocast dtype; auto = float16 (+ GradScaler) on CUDA, float32 on CPU")
    g.add_argument("--compile", default=None, action=argparse.BooleanOptionalAction,
                   help="torch.compile the model; default: on for CUDA, off for CPU")
    g.add_argument("--seed", type=int, default=None, help="seed of the initialisation and the data order")
    g.add_argument("--no-progress", action="store_true", help="no progress bar (log lines only)")
    g.add_argument("--stop-at", type=int, default=None,
                   help="stop cleanly after this many steps with a checkpoint, as if interrupted (resume later)")

    g = p.add_argument_group("model")
    g.add_argument("--model", default=None, choices=sorted(PRESETS), help="model preset (default: the run preset's)")
    g.add_argument("--pe", default=None, choices=sorted(VARIANTS), help="positional-encoding variant (default rope)")
    g.add_argument("--qk-norm", default=None, action=argparse.BooleanOptionalAction,
                   help="QK-norm on every layer, with any encoding")
    g.add_argument("--qk-norm-type", default=None, choices=["rms", "l2"], help="RMSNorm with gain, or L2 + temperature")
    g.add_argument("--rnope-pattern", default=None,
                   help="per-layer codes tiled over depth, e.g. RRRN (P abs, S sinusoidal, N NoPE, R RoPE, "
                        "B ALiBi; lower case = sliding window)")
    g.add_argument("--sliding-window", type=int, default=None, help="window (tokens) of the lower-case layers")
    g.add_argument("--rope-base", type=float, default=None, help="RoPE base (default 10000)")
    g.add_argument("--rope-layout", default=None, choices=["half", "interleaved"], help="RoPE pair layout")
    g.add_argument("--rotary-dim", type=int, default=None, help="rotated channels per head (partial rotary)")
    g.add_argument("--block-size", type=int, default=None, help="context length")
    g.add_argument("--dropout", type=float, default=None, help="dropout probability")

    g = p.add_argument_group("data")
    g.add_argument("--dataset", default=None, choices=["owt", "embedded", "files"],
                   help="owt: OpenWebText via HF datasets; embedded: offline stdlib corpus; files: --data-files")
    g.add_argument("--data-files", nargs="+", default=None, help="local jsonl/parquet/txt files with a 'text' field")
    g.add_argument("--data-dir", default=None, help="prepared shards; default: data/<dataset>-<tokenizer>")
    g.add_argument("--tokenizer", default=None, choices=["gpt2", "bytes"], help="GPT-2 BPE (tiktoken) or raw bytes")

    g = p.add_argument_group("optimisation")
    g.add_argument("--batch-size", type=int, default=None, help="rows per micro-step, over all ranks together")
    g.add_argument("--grad-accum", type=int, default=None, help="micro-steps per optimizer step")
    g.add_argument("--max-iters", type=int, default=None, help="optimizer steps")
    g.add_argument("--lr", type=float, default=None, help="peak learning rate")
    g.add_argument("--min-lr", type=float, default=None, help="final learning rate of the cosine decay")
    g.add_argument("--warmup-iters", type=int, default=None, help="linear warmup steps")
    g.add_argument("--lr-decay-iters", type=int, default=None, help="steps of the cosine decay (default max-iters)")
    g.add_argument("--weight-decay", type=float, default=None, help="AdamW weight decay (>= 2-D weights only)")
    g.add_argument("--grad-clip", type=float, default=None, help="clip the global grad norm (0 = off)")
    g.add_argument("--max-skipped-steps", type=int, default=None,
                   help="fp16: stop when more consecutive steps than this are skipped for inf/NaN gradients")

    g = p.add_argument_group("evaluation and logging")
    g.add_argument("--eval-interval", type=int, default=None, help="evaluate every N steps")
    g.add_argument("--eval-iters", type=int, default=None, help="validation batches (the same for every run)")
    g.add_argument("--log-interval", type=int, default=None, help="print every N steps")
    g.add_argument("--ckpt-interval", type=int, default=None, help="checkpoint every N steps (default eval-interval)")
    g.add_argument("--num-samples", type=int, default=None, help="samples generated at the end")
    g.add_argument("--sample-tokens", type=int, default=None, help="tokens per sample")

    g = p.add_argument_group("testing")
    g.add_argument("--fault-inject", default=None,
                   help="make failures on purpose: 'inf-grad@S1,S2' sets gradients to inf at those steps; "
                        "'nan-loss@S' makes rank 0's loss NaN at step S")
    return p.parse_args(argv)


OVERRIDES = {  # flag -> TrainConfig field
    "dataset": "dataset", "data_dir": "data_dir", "tokenizer": "tokenizer", "batch_size": "batch_size",
    "grad_accum": "grad_accum", "max_iters": "max_iters", "lr": "learning_rate", "min_lr": "min_lr",
    "warmup_iters": "warmup_iters", "lr_decay_iters": "lr_decay_iters", "weight_decay": "weight_decay",
    "grad_clip": "grad_clip", "eval_interval": "eval_interval", "eval_iters": "eval_iters",
    "log_interval": "log_interval", "ckpt_interval": "ckpt_interval", "dtype": "dtype", "compile": "compile",
    "device": "device", "seed": "seed", "max_skipped_steps": "max_skipped_steps", "num_samples": "num_samples",
    "sample_tokens": "sample_tokens",
}  # fmt: skip
MODEL_OVERRIDES = {
    "qk_norm": "qk_norm", "qk_norm_type": "qk_norm_type", "rnope_pattern": "layer_pattern",
    "sliding_window": "sliding_window", "rope_base": "rope_base", "rope_layout": "rope_layout",
    "rotary_dim": "rotary_dim", "block_size": "block_size", "dropout": "dropout",
}  # fmt: skip


def parse_faults(spec: str | None) -> dict[str, set[int]]:
    faults: dict[str, set[int]] = {"inf-grad": set(), "nan-loss": set()}
    for part in filter(None, (spec or "").split(";")):
        kind, _, steps = part.partition("@")
        if kind not in faults or not steps:
            raise ValueError(f"--fault-inject: expected 'inf-grad@S1,S2' or 'nan-loss@S', got {part!r}")
        faults[kind] |= {int(s) for s in steps.split(",")}
    return faults


# -----------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None, stop_signal: list[int] | None = None) -> int:
    """The run. ``stop_signal`` receives the numbers of SIGTERM/SIGINT caught by :func:`run`; the
    loop stops at the next step boundary, writes a checkpoint and returns 128 + signal."""
    args = parse_args(argv)
    stop_signal = [] if stop_signal is None else stop_signal
    t_start = time.time()

    # -- distributed setup: torchrun sets RANK/WORLD_SIZE; each rank trains a slice of the global batch
    ddp = int(os.environ.get("RANK", -1)) != -1
    if ddp:
        backend = "nccl" if torch.cuda.is_available() and args.device not in ("cpu",) else "gloo"
        dist.init_process_group(backend)
        rank, world = dist.get_rank(), dist.get_world_size()
        local_rank = int(os.environ.get("LOCAL_RANK", 0))
    else:
        rank, world, local_rank = 0, 1, 0
    master = rank == 0

    def log(msg: str) -> None:
        if master:
            print(msg, flush=True)

    # -- configuration: preset < flags, or exactly the saved configuration with --resume
    device_name = args.device or "auto"
    preset = args.preset or ("owt-16m" if resolve_device(device_name).type == "cuda" else "cpu")
    pe = args.pe or "rope"
    out_dir = Path(args.out_dir or f"out/{preset}-{pe}")
    ckpt = None
    if args.resume:
        given = [f"--{k.replace('_', '-')}" for k in (*OVERRIDES, *MODEL_OVERRIDES, "model", "preset", "pe", "data_files")
                 if getattr(args, k) is not None and k != "device"]  # fmt: skip
        if given:
            raise ValueError(f"--resume continues with the saved configuration; drop {', '.join(given)}")
        ckpt = load_checkpoint(out_dir, map_location="cpu")
        saved = dict(ckpt["train_config"])
        saved["data_files"] = tuple(saved["data_files"])
        saved["world_size"] = world
        if args.device is not None:
            saved["device"] = args.device
        cfg = TrainConfig(**saved)
        gpt_config = GPTConfig.from_dict(ckpt["config"])
        tokenizer = get_tokenizer(cfg.tokenizer)
        preset = f"(resumed at step {ckpt['step']})"
    else:
        values = dict(TRAIN_PRESETS[preset])
        model_preset = args.model or values.pop("model")
        values.pop("model", None)
        values |= {field: getattr(args, flag) for flag, field in OVERRIDES.items() if getattr(args, flag) is not None}
        if args.data_files:
            values["data_files"] = tuple(args.data_files)
            if args.dataset is None:
                values["dataset"] = "files"
        cfg = TrainConfig(out_dir=str(out_dir), world_size=world, **values)
        tokenizer = get_tokenizer(cfg.tokenizer)
        model_vocab = PRESETS[model_preset]["vocab_size"]
        if tokenizer.vocab_size > model_vocab:  # pad to a multiple of 64, as nanoGPT does for GPT-2
            model_vocab = 64 * math.ceil(tokenizer.vocab_size / 64)
        gpt_config = model_config(
            model_preset, pe=pe, vocab_size=model_vocab,
            **{field: getattr(args, flag) for flag, field in MODEL_OVERRIDES.items()},
        )  # fmt: skip
    device = resolve_device(cfg.device)
    if device.type == "cuda" and ddp:
        device = torch.device(f"cuda:{local_rank}")
        torch.cuda.set_device(device)
    dtype = resolve_dtype(cfg.dtype, device)
    use_compile = cfg.compile if cfg.compile is not None else device.type == "cuda"
    faults = parse_faults(args.fault_inject)

    # -- data: prepared once (a no-op when the shards exist), then memory-mapped
    data_dir = Path(cfg.data_dir or f"data/{cfg.dataset}-{cfg.tokenizer}")
    if master:
        prepare(data_dir, source=cfg.dataset, data_files=list(cfg.data_files) or None, tokenizer=cfg.tokenizer,
                progress=not args.no_progress)  # fmt: skip
    if ddp:
        dist.barrier()
    T = gpt_config.block_size
    train_data = load_split(data_dir, "train", vocab_size=gpt_config.vocab_size, block_size=T)
    val_data = load_split(data_dir, "val", vocab_size=gpt_config.vocab_size, block_size=T)
    rows = slice(rank * cfg.batch_size // world, (rank + 1) * cfg.batch_size // world)  # this rank's rows
    tokens_per_step = cfg.batch_size * cfg.grad_accum * T

    # -- model, optimizer, scaler (a no-op unless fp16)
    torch.manual_seed(cfg.seed)
    model = GPT(gpt_config).to(device)
    optimizer = model.configure_optimizers(cfg.weight_decay, cfg.learning_rate, (cfg.beta1, cfg.beta2), device.type)
    scaler = torch.amp.GradScaler(device.type, enabled=dtype == torch.float16)
    step, stats = 0, {"interval_loss_sum": 0.0, "interval_steps": 0, "skipped_total": 0, "skipped_in_a_row": 0,
                      "elapsed_s": 0.0, "last_val_loss": None, "last_train_loss": None}  # fmt: skip
    if ckpt is not None:
        model.load_state_dict(ckpt["model"], strict=True)
        optimizer.load_state_dict(ckpt["optimizer"])
        scaler.load_state_dict(ckpt["scaler"])
        step, stats = int(ckpt["step"]), dict(ckpt["stats"])
        rng = ckpt["rng"]
        if len(rng["torch"]) != world:
            raise CheckpointError(out_dir, f"saved by {len(rng['torch'])} ranks, resumed with {world}")
        torch.set_rng_state(rng["torch"][rank])
        if device.type == "cuda" and rng["cuda"]:
            torch.cuda.set_rng_state(rng["cuda"][rank], device)
        del ckpt
    raw_model = model
    if use_compile:
        model = torch.compile(model)
    eval_model = model
    if ddp:
        model = DDP(model, device_ids=[local_rank] if device.type == "cuda" else None)
    autocast = torch.autocast(device.type, dtype=dtype) if dtype != torch.float32 else nullcontext()
    params = [p for p in raw_model.parameters() if p.requires_grad]

    log(f"posenc | preset {preset} | pe {gpt_config.pe} layers {''.join(gpt_config.layer_codes)}"
        f"{' +qk-norm' if gpt_config.use_qk_norm else ''} | {raw_model.num_params() / 1e6:.2f}M params | "
        f"{device} {str(dtype).removeprefix('torch.')}{' compiled' if use_compile else ''} | world {world} | "
        f"{tokens_per_step:,} tokens/step x {cfg.max_iters} steps | data {data_dir} "
        f"({len(train_data):,} train / {len(val_data):,} val tokens) | out {out_dir}")  # fmt: skip

    # -- logging: one JSON record per step/evaluation; a resumed run drops what came after its checkpoint
    out_dir.mkdir(parents=True, exist_ok=True)
    log_path = out_dir / "log.jsonl"
    records: list[dict] = []
    if master and log_path.exists():
        if step == 0:  # a fresh run replaces a previous one's log
            log_path.unlink()
        else:
            for line in log_path.read_text().splitlines():
                try:
                    r = json.loads(line)
                except ValueError:  # a line cut by a kill
                    continue
                if r["step"] < step:
                    records.append(r)
            tmp = log_path.with_suffix(".tmp")
            tmp.write_text("".join(json.dumps(r) + "\n" for r in records))
            os.replace(tmp, log_path)
    log_file = open(log_path, "a") if master else None

    def write(record: dict) -> None:
        if log_file is not None:
            records.append(record)
            log_file.write(json.dumps(record) + "\n")
            log_file.flush()

    @torch.no_grad()
    def evaluate() -> float:
        """Mean loss over the fixed validation batches (EVAL_SEED): identical for every run."""
        raw_model.eval()
        total = torch.zeros((), dtype=torch.float64, device=device)
        for i in range(cfg.eval_iters):
            x, y = get_batch(val_data, batch_offsets(len(val_data), T, cfg.batch_size, EVAL_SEED, i)[rows], T)
            with autocast:
                _, loss = eval_model(x.to(device), y.to(device))
            total += loss.double()
        if ddp:
            dist.all_reduce(total)
            total /= world
        raw_model.train()
        return (total / cfg.eval_iters).item()

    def checkpoint() -> None:
        state_rng = {"torch": [torch.get_rng_state()], "cuda": [torch.cuda.get_rng_state(device)] if device.type == "cuda" else []}
        if ddp:  # every rank's RNG, so dropout resumes exactly on each
            gathered: list = [None] * world
            dist.all_gather_object(gathered, state_rng)
            state_rng = {k: [g[k][0] for g in gathered] if gathered[0][k] else [] for k in state_rng}
        if master:
            save_checkpoint({
                "model": clean_state_dict(raw_model.state_dict()), "optimizer": optimizer.state_dict(),
                "scaler": scaler.state_dict(), "step": step, "rng": state_rng, "config": gpt_config.to_dict(),
                "train_config": cfg.to_dict(), "stats": stats,
                "data": {"data_dir": str(data_dir), "seed": cfg.seed, "next_step": step, "eval_seed": EVAL_SEED},
            }, out_dir)  # fmt: skip
        if ddp:
            dist.barrier()

    try:
        from tqdm.auto import tqdm
    except ImportError:  # progress bar is optional
        tqdm = None
    bar = None
    if master and tqdm is not None and not args.no_progress:
        bar = tqdm(total=cfg.max_iters, initial=step, unit="step", dynamic_ncols=True, file=sys.stderr)
    say = bar.write if bar is not None else log

    # -- training loop
    raw_model.train()
    t_run = time.time() - stats["elapsed_s"]
    while True:
        if step % cfg.eval_interval == 0 or step == cfg.max_iters:
            val_loss = evaluate()
            train_avg = stats["interval_loss_sum"] / stats["interval_steps"] if stats["interval_steps"] else None
            stats.update(interval_loss_sum=0.0, interval_steps=0, last_val_loss=val_loss)
            if train_avg is not None:
                stats["last_train_loss"] = train_avg
            write({"step": step, "kind": "eval", "val_loss": val_loss, "train_loss": train_avg,
                   "tokens": step * tokens_per_step, "time_s": time.time() - t_run})  # fmt: skip
            say(f"step {step}: train loss {train_avg if train_avg is None else round(train_avg, 4)}, "
                f"val loss {val_loss:.4f}")  # fmt: skip
        if step >= cfg.max_iters:
            break

        t0 = time.time()
        lr = get_lr(step, cfg)
        for group in optimizer.param_groups:
            group["lr"] = lr
        loss_sum = torch.zeros((), dtype=torch.float64, device=device)
        for micro in range(cfg.grad_accum):
            x, y = get_batch(train_data, batch_offsets(len(train_data), T, cfg.batch_size, cfg.seed, step, micro)[rows], T)
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            if ddp:
                model.require_backward_grad_sync = micro == cfg.grad_accum - 1
            with autocast:
                _, loss = model(x, y)
            if step in faults["nan-loss"] and rank == 0:
                loss = loss * float("nan")
            loss = loss / cfg.grad_accum
            scaler.scale(loss).backward()
            loss_sum += loss.detach().double()
        if step in faults["inf-grad"]:
            params[0].grad.fill_(float("inf"))
        flags = torch.stack([loss_sum, torch.tensor(float(bool(stop_signal)), dtype=torch.float64, device=device)])
        if ddp:  # one collective: the global mean loss and whether any rank was asked to stop
            dist.all_reduce(flags)
            flags[0] /= world
        step_loss, stop_now = flags[0].item(), flags[1].item() > 0
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
        write({"step": step, "kind": "train", "loss": step_loss, "lr": lr, "tokens": (step + 1) * tokens_per_step,
               "tokens_per_s": tokens_per_step / dt, "grad_norm": grad_norm, "loss_scale": scale,
               "skipped": bool(skipped), "skipped_total": stats["skipped_total"]})  # fmt: skip
        step += 1
        stats["elapsed_s"] = time.time() - t_run
        if bar is not None:
            bar.update(1)
            bar.set_postfix(loss=f"{step_loss:.4f}", tok_s=f"{tokens_per_step / dt:,.0f}", refresh=False)
        elif step % cfg.log_interval == 0:
            log(f"step {step}/{cfg.max_iters} loss {step_loss:.4f} lr {lr:.2e} {tokens_per_step / dt:,.0f} tok/s")
        stop_requested = stop_now or (args.stop_at is not None and step >= args.stop_at)
        if step % cfg.checkpoint_interval == 0 or step == cfg.max_iters or stop_requested:
            checkpoint()
        if stop_requested:
            if bar is not None:
                bar.close()
            signum = stop_signal[0] if stop_signal else (signal.SIGTERM if stop_now else None)
            log(f"stopped at step {step}; checkpoint in {out_dir} (continue with --resume)")
            if log_file is not None:
                log_file.close()
            plot_curves(records, out_dir / "curves.png", master)
            return 128 + signum if signum is not None else 0
    if bar is not None:
        bar.close()

    # -- summary and samples (rank 0)
    wall = time.time() - t_start
    if master:
        samples = generate_samples(raw_model, tokenizer, cfg, device)
        summary = {
            "pe": gpt_config.pe, "layer_codes": "".join(gpt_config.layer_codes), "qk_norm": gpt_config.use_qk_norm,
            "params": raw_model.num_params(), "train_loss": stats["last_train_loss"], "val_loss": stats["last_val_loss"],
            "tokens": step * tokens_per_step, "steps": step, "wall_time_s": wall, "train_time_s": stats["elapsed_s"],
            "skipped_steps": stats["skipped_total"], "device": str(device), "dtype": str(dtype)[6:],
            "compile": use_compile, "world_size": world, "config": gpt_config.to_dict(), "train_config": cfg.to_dict(),
            "samples": samples,
        }  # fmt: skip
        (out_dir / "summary.json").write_text(json.dumps(summary, indent=1))
        (out_dir / "samples.txt").write_text("\n\n-----\n\n".join(samples) + "\n")
        plot_curves(records, out_dir / "curves.png", master)
        log(f"done: train loss {summary['train_loss']:.4f} | val loss {summary['val_loss']:.4f} | "
            f"{summary['tokens']:,} tokens | {wall:.0f} s | {out_dir}")  # fmt: skip
        for s in samples:
            log("--- sample ---\n" + s)
        if log_file is not None:
            log_file.close()
    if ddp:  # keep every rank in the group until rank 0 has written its summary
        dist.barrier()
    return 0


PROMPTS = {"bytes": ["def ", "The ", "import "], "gpt2": ["The", "In a", "import"]}


def generate_samples(model: GPT, tokenizer, cfg: TrainConfig, device: torch.device) -> list[str]:
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


def plot_curves(records: list[dict], path: Path, master: bool) -> None:
    if not master or not records:
        return
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed: no curves.png (pip install 'posenc[train]')", file=sys.stderr)
        return
    train = [(r["tokens"], r["loss"]) for r in records if r["kind"] == "train" and not r["skipped"]]
    val = [(r["tokens"], r["val_loss"]) for r in records if r["kind"] == "eval"]
    fig, ax = plt.subplots(figsize=(7, 4.5))
    if train:
        ax.plot(*zip(*train), lw=0.8, alpha=0.6, label="train (per step)")
    if val:
        ax.plot(*zip(*val), "o-", label="validation")
    ax.set_xlabel("tokens")
    ax.set_ylabel("loss")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    tmp = path.with_name(path.stem + ".tmp.png")
    fig.savefig(tmp, dpi=120)
    plt.close(fig)
    os.replace(tmp, path)


def run(argv: list[str] | None = None) -> int:
    """main() with user errors turned into one clear line and an exit code, never a traceback."""
    stop_signal: list[int] = []

    def on_signal(signum, frame):  # noqa: ARG001
        stop_signal.append(signum)
        signal.signal(signum, signal.SIG_DFL)  # a second signal kills at once

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        return main(argv, stop_signal)
    except (ValueError, DataError, CheckpointError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except NonFiniteError as e:
        print(f"error: {e}", file=sys.stderr)
        return 3
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        if dist.is_available() and dist.is_initialized():
            dist.destroy_process_group()


if __name__ == "__main__":
    sys.exit(run())

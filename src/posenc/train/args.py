"""The command line of a training run: the flags (:func:`train_parser`), flags -> configs
(:func:`configs_from_args`), one run from flags (:func:`run_train`) and the error policy of every
command (:func:`guarded`: one ``error:`` line and exit 2, or 3 for a non-finite loss). Used by
``posenc train``, ``examples/pretrain_owt.py`` and the sweep.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
from collections.abc import Callable
from typing import Any

from posenc.checkpoint import CheckpointError
from posenc.config import PRESETS, VARIANTS, GPTConfig
from posenc.data import DataError, get_tokenizer
from posenc.encodings import CODES
from posenc.train.config import TRAIN_PRESETS, NonFiniteError, TrainConfig, model_config, resolve_device

#: flag -> TrainConfig field
TRAIN_FLAGS = {
    "dataset": "dataset",
    "data_dir": "data_dir",
    "tokenizer": "tokenizer",
    "batch_size": "batch_size",
    "grad_accum": "grad_accum",
    "max_iters": "max_iters",
    "lr": "learning_rate",
    "min_lr": "min_lr",
    "warmup_iters": "warmup_iters",
    "lr_decay_iters": "lr_decay_iters",
    "weight_decay": "weight_decay",
    "grad_clip": "grad_clip",
    "eval_interval": "eval_interval",
    "eval_iters": "eval_iters",
    "log_interval": "log_interval",
    "ckpt_interval": "ckpt_interval",
    "dtype": "dtype",
    "compile": "compile",
    "device": "device",
    "seed": "seed",
    "max_skipped_steps": "max_skipped_steps",
    "num_samples": "num_samples",
    "sample_tokens": "sample_tokens",
    "init_from": "init_from",
    "pack_documents": "pack_documents",
}
#: flag -> GPTConfig field
MODEL_FLAGS = {
    "pe": "pe",
    "qk_norm": "qk_norm",
    "qk_norm_type": "qk_norm_type",
    "layer_pattern": "layer_pattern",
    "sliding_window": "sliding_window",
    "rope_base": "rope_base",
    "rope_layout": "rope_layout",
    "rotary_dim": "rotary_dim",
    "block_size": "block_size",
    "dropout": "dropout",
    "attention": "attention",
    "n_kv_head": "n_kv_head",
    "norm": "norm",
    "mlp": "mlp",
    "intermediate_size": "intermediate_size",
    "kv_lora_rank": "kv_lora_rank",
    "q_lora_rank": "q_lora_rank",
    "qk_rope_head_dim": "qk_rope_head_dim",
    "qk_nope_head_dim": "qk_nope_head_dim",
    "v_head_dim": "v_head_dim",
}


def train_parser(prog: str | None = None) -> argparse.ArgumentParser:
    """The flags of a pretraining run: a run preset fills every default, flags override it."""
    p = argparse.ArgumentParser(
        prog=prog,
        description="Pretrain a GPT with a chosen positional encoding (OpenWebText on GPU, embedded corpus on CPU).",
        # defaults come from the run preset (printed in the run's first line), not from argparse
    )
    g = p.add_argument_group("run")
    g.add_argument(
        "--preset",
        choices=sorted(TRAIN_PRESETS),
        default=None,
        help="run preset; default: owt-16m on CUDA, cpu otherwise",
    )
    g.add_argument("--out-dir", default=None, help="run folder; default: out/<preset>-<pe>")
    g.add_argument(
        "--resume",
        action="store_true",
        help="continue the run in --out-dir from its latest checkpoint, with its saved configuration",
    )
    g.add_argument(
        "--init-from",
        default=None,
        metavar="RUN_DIR",
        help="start from the final weights of another run (fresh optimizer and step count), e.g. to fine-tune at a longer context",
    )
    g.add_argument("--device", default=None, help="cpu, cuda, cuda:N or auto")
    g.add_argument(
        "--dtype",
        default=None,
        choices=["auto", "float32", "bfloat16", "float16"],
        help="autocast dtype; auto = float16 (+ GradScaler) on CUDA, float32 on CPU",
    )
    g.add_argument(
        "--compile",
        default=None,
        action=argparse.BooleanOptionalAction,
        help="torch.compile the model; default: on for CUDA, off for CPU",
    )
    g.add_argument("--seed", type=int, default=None, help="seed of the initialisation and the data order")
    g.add_argument("--no-progress", action="store_true", help="no progress bar (log lines only)")
    g.add_argument(
        "--stop-at",
        type=int,
        default=None,
        help="stop cleanly after this many steps with a checkpoint, as if interrupted (resume later)",
    )
    g.add_argument(
        "--log-to",
        nargs="+",
        default=None,
        choices=["tensorboard", "wandb"],
        help="also write the logged scalars to TensorBoard and/or Weights & Biases (offline)",
    )

    g = p.add_argument_group("model")
    g.add_argument("--model", default=None, choices=sorted(PRESETS), help="model preset (default: the run preset's)")
    g.add_argument("--pe", default=None, choices=sorted(VARIANTS), help="positional-encoding variant (default rope)")
    g.add_argument(
        "--layer-pattern",
        "--rnope-pattern",
        dest="layer_pattern",
        default=None,
        help="per-layer codes tiled over depth instead of --pe, e.g. RRRN ("
        + ", ".join(f"{code} {name}" for code, name in CODES.items())
        + "; lower case = sliding window)",
    )
    g.add_argument(
        "--qk-norm",
        default=None,
        action=argparse.BooleanOptionalAction,
        help="QK-norm on every layer, with any encoding",
    )
    g.add_argument("--qk-norm-type", default=None, choices=["rms", "l2"], help="RMSNorm with gain, or L2 + temperature")
    g.add_argument("--sliding-window", type=int, default=None, help="window (tokens) of the lower-case layers")
    g.add_argument("--rope-base", type=float, default=None, help="RoPE base (default 10000)")
    g.add_argument("--rope-layout", default=None, choices=["half", "interleaved"], help="RoPE pair layout")
    g.add_argument("--rotary-dim", type=int, default=None, help="rotated channels per head (partial rotary)")
    g.add_argument(
        "--rope-scaling",
        default=None,
        metavar="TYPE_OR_JSON",
        help="RoPE frequency schedule: a rope_type (linear, dynamic, yarn, longrope, llama3, proportional) "
        'or a Hugging Face rope_scaling dict as JSON, e.g. \'{"rope_type": "yarn", "factor": 4}\'',
    )
    g.add_argument("--rope-factor", type=float, default=None, help="the schedule's 'factor' (context extension ratio)")
    g.add_argument(
        "--rope-original-context",
        type=int,
        default=None,
        help="the schedule's 'original_max_position_embeddings' (the context the model was trained at)",
    )
    g.add_argument("--attention", default=None, help="attention variant: mha (with --n-kv-head for GQA/MQA) or mla")
    g.add_argument(
        "--n-kv-head", type=int, default=None, help="key/value heads (grouped-query attention; 1 = multi-query)"
    )
    g.add_argument("--kv-lora-rank", type=int, default=None, help="MLA: rank of the joint key/value latent")
    g.add_argument(
        "--q-lora-rank",
        type=int,
        default=None,
        help="MLA: rank of the low-rank query (default: a full query projection)",
    )
    g.add_argument(
        "--qk-rope-head-dim", type=int, default=None, help="MLA: width of the decoupled rotary query/key part"
    )
    g.add_argument(
        "--qk-nope-head-dim", type=int, default=None, help="MLA: width of the query/key part without position"
    )
    g.add_argument("--v-head-dim", type=int, default=None, help="MLA: value head size")
    g.add_argument(
        "--norm",
        default=None,
        choices=["layernorm", "rmsnorm"],
        help="normalisation layers (GPT-2: layernorm; Llama: rmsnorm)",
    )
    g.add_argument("--mlp", default=None, choices=["gelu", "swiglu"], help="MLP (GPT-2: gelu; Llama: swiglu)")
    g.add_argument(
        "--intermediate-size", type=int, default=None, help="MLP hidden width (default 4C for gelu, 8C/3 for swiglu)"
    )
    g.add_argument("--block-size", type=int, default=None, help="context length")
    g.add_argument("--dropout", type=float, default=None, help="dropout probability")

    g = p.add_argument_group("data")
    g.add_argument(
        "--dataset",
        default=None,
        choices=["owt", "embedded", "files"],
        help="owt: OpenWebText via HF datasets; embedded: offline stdlib corpus; files: --data-files",
    )
    g.add_argument("--data-files", nargs="+", default=None, help="local jsonl/parquet/txt files with a 'text' field")
    g.add_argument("--data-dir", default=None, help="prepared shards; default: data/<dataset>-<tokenizer>")
    g.add_argument("--tokenizer", default=None, choices=["gpt2", "bytes"], help="GPT-2 BPE (tiktoken) or raw bytes")

    g = p.add_argument_group("optimisation")
    g.add_argument("--batch-size", type=int, default=None, help="rows per micro-step, over all ranks together")
    g.add_argument(
        "--pack-documents",
        default=None,
        action="store_true",
        help="the documents in a row (delimited by end-of-text) attend only to themselves, positions restart at each",
    )
    g.add_argument("--grad-accum", type=int, default=None, help="micro-steps per optimizer step")
    g.add_argument("--max-iters", type=int, default=None, help="optimizer steps")
    g.add_argument("--lr", type=float, default=None, help="peak learning rate")
    g.add_argument("--min-lr", type=float, default=None, help="final learning rate of the cosine decay")
    g.add_argument("--warmup-iters", type=int, default=None, help="linear warmup steps")
    g.add_argument("--lr-decay-iters", type=int, default=None, help="steps of the cosine decay (default max-iters)")
    g.add_argument("--weight-decay", type=float, default=None, help="AdamW weight decay (>= 2-D weights only)")
    g.add_argument("--grad-clip", type=float, default=None, help="clip the global grad norm (0 = off)")
    g.add_argument(
        "--max-skipped-steps",
        type=int,
        default=None,
        help="fp16: stop when more consecutive steps than this are skipped for inf/NaN gradients",
    )

    g = p.add_argument_group("evaluation and logging")
    g.add_argument("--eval-interval", type=int, default=None, help="evaluate every N steps")
    g.add_argument("--eval-iters", type=int, default=None, help="validation batches (the same for every run)")
    g.add_argument("--log-interval", type=int, default=None, help="print every N steps")
    g.add_argument("--ckpt-interval", type=int, default=None, help="checkpoint every N steps (default eval-interval)")
    g.add_argument("--num-samples", type=int, default=None, help="samples generated at the end")
    g.add_argument("--sample-tokens", type=int, default=None, help="tokens per sample")
    return p


def configs_from_args(args: argparse.Namespace, world_size: int = 1) -> tuple[GPTConfig, TrainConfig]:
    """(GPTConfig, TrainConfig) from parsed train flags: the preset, then the flags; with
    ``--resume`` exactly the run's saved configuration (only ``--device`` may change)."""
    from posenc.train import resume_configs

    if args.resume:
        given = [
            f"--{k.replace('_', '-')}"
            for k in (
                *TRAIN_FLAGS,
                *MODEL_FLAGS,
                "model",
                "preset",
                "data_files",
                "log_to",
                "rope_scaling",
                "rope_factor",
                "rope_original_context",
            )
            if getattr(args, k) is not None and k != "device"
        ]
        if given:
            raise ValueError(f"--resume continues with the saved configuration; drop {', '.join(given)}")
        if args.out_dir is None:
            raise ValueError("--resume needs --out-dir, the run folder to continue")
        return resume_configs(args.out_dir, device=args.device, world_size=world_size)
    preset = args.preset or ("owt-16m" if resolve_device(args.device or "auto").type == "cuda" else "cpu")
    values = dict(TRAIN_PRESETS[preset])
    model_preset = args.model or values.pop("model")
    values.pop("model", None)
    values |= {field: getattr(args, flag) for flag, field in TRAIN_FLAGS.items() if getattr(args, flag) is not None}
    if args.data_files:
        values["data_files"] = tuple(args.data_files)
        if args.dataset is None:
            values["dataset"] = "files"
    if args.log_to:
        values["log_to"] = tuple(args.log_to)
    model = {field: getattr(args, flag) for flag, field in MODEL_FLAGS.items() if getattr(args, flag) is not None}
    scaling = rope_scaling_from_args(args)
    if scaling is not None:
        model["rope_scaling"] = scaling
    if "pe" not in model and "layer_pattern" not in model:
        model["pe"] = "rope"
    label = model.get("pe") or model["layer_pattern"]
    out_dir = args.out_dir or f"out/{preset}-{label}"
    cfg = TrainConfig(out_dir=str(out_dir), world_size=world_size, **values)
    vocab = PRESETS[model_preset]["vocab_size"]
    tokenizer_vocab = get_tokenizer(cfg.tokenizer).vocab_size
    if tokenizer_vocab > vocab:  # pad to a multiple of 64, as nanoGPT does for GPT-2
        vocab = 64 * math.ceil(tokenizer_vocab / 64)
    return model_config(model_preset, vocab_size=vocab, **model), cfg


def rope_scaling_from_args(args: argparse.Namespace) -> dict[str, Any] | None:
    """``--rope-scaling`` (a type name or a JSON dict), completed by ``--rope-factor`` and
    ``--rope-original-context``; None when no schedule is asked for."""
    extra = {
        k: v
        for k, v in (("factor", args.rope_factor), ("original_max_position_embeddings", args.rope_original_context))
        if v is not None
    }
    if args.rope_scaling is None:
        if extra:
            raise ValueError(f"--rope-factor / --rope-original-context need --rope-scaling (got {extra})")
        return None
    text = args.rope_scaling.strip()
    if text.startswith("{"):
        try:
            scaling = json.loads(text)
        except ValueError as e:
            raise ValueError(f"--rope-scaling is not valid JSON: {e}") from None
        if not isinstance(scaling, dict):
            raise ValueError(f"--rope-scaling must be a JSON object, got {text!r}")
    else:
        scaling = {"rope_type": text}
    return scaling | extra


def run_train(args: argparse.Namespace, *, hooks: Any = None) -> int:
    """One run from parsed flags; the process exit code (128 + signal when stopped by one)."""
    from posenc.train import handle_stop_signals, train

    def go() -> int:
        world = int(os.environ.get("WORLD_SIZE", 1))
        config, cfg = configs_from_args(args, world_size=world)
        with handle_stop_signals() as stop:
            result = train(
                config,
                cfg,
                resume=args.resume,
                stop=stop,
                stop_at=args.stop_at,
                progress=not args.no_progress,
                hooks=hooks,
            )
        return int(result["exit_code"]) if result and result.get("stopped") else 0

    return guarded(go)


def guarded(fn: Callable[[], int]) -> int:
    """``fn()``, with user errors turned into one ``error:`` line and exit code 2 (3 when the loss
    became non-finite)."""
    try:
        return fn()
    except (ValueError, DataError, CheckpointError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except NonFiniteError as e:
        print(f"error: {e}", file=sys.stderr)
        return 3

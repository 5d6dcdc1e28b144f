"""The command line of a training run: the flags (:func:`train_parser`), flags -> configs
(:func:`configs_from_args`), one run from flags (:func:`run_train`) and the error policy of every
command (:func:`guarded`: one ``error:`` line and exit 2, or 3 for a non-finite loss). Used by
``posenc train``, ``examples/pretrain_owt.py`` and the sweep.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch

from posenc.block import MLPS
from posenc.checkpoint import CheckpointError
from posenc.config import PRESETS, GPTConfig
from posenc.data import DataError
from posenc.encodings import codes
from posenc.flags import Parser, field_flags, name_flags
from posenc.train.config import TRAIN_PRESETS, NonFiniteError, TrainConfig, resolve_device
from posenc.train.run import LOCK_NAME, RunSpec, build_spec
from posenc.variants import variant_names

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
    p = Parser(
        prog=prog,
        description="Pretrain a GPT with a chosen positional encoding (OpenWebText on GPU, embedded corpus on CPU).",
    )
    _run_flags(p)
    _model_flags(p)
    _data_flags(p)
    _optimisation_flags(p)
    _evaluation_and_logging_flags(p)
    # the run preset fills every flag left out: help shows each preset's value
    for action in p._actions:
        shown = preset_defaults(action.dest)
        if shown and action.help and "default" not in action.help:
            action.help += f" (default: {shown})".replace("%", "%%")
    return p


def preset_defaults(dest: str) -> str | None:
    """What the run presets set ``dest``'s flag to: one value, or ``preset value`` for each preset
    when they differ; None when the flag has no value unless given."""
    values = {}
    for name, preset in TRAIN_PRESETS.items():
        if dest == "model":
            values[name] = preset["model"]
        elif dest in TRAIN_FLAGS:
            values[name] = preset.get(TRAIN_FLAGS[dest], getattr(TrainConfig(), TRAIN_FLAGS[dest]))
        elif dest in ("block_size", "dropout"):
            values[name] = PRESETS[preset["model"]][dest]
        else:
            return None
    if all(v is None or v is False for v in values.values()):
        return None
    if len(set(map(str, values.values()))) == 1:
        return str(next(iter(values.values())))
    return ", ".join(f"{name} {value}" for name, value in values.items())


#: "TrainConfig.max_iters" / "GPTConfig.block_size" -> the train flag that sets it
FIELD_FLAGS = field_flags("TrainConfig", TRAIN_FLAGS) | field_flags("GPTConfig", MODEL_FLAGS)
#: the same for the flags of eval and compare that set a TrainConfig field of the same name
PLACEMENT_FLAGS = field_flags("TrainConfig", {"device": "device", "data_dir": "data_dir", "data_files": "data_files"})


def _run_flags(p: argparse.ArgumentParser) -> None:
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
        help="continue the run saved in --out-dir (run.json): alone (with --out-dir, optionally --device) it needs "
        "no other flag. Without it the same command continues too: a folder holding the same run resumes from its "
        "latest checkpoint (or from step 0 when it has none), a finished one prints its summary, another run is refused",
    )
    g.add_argument(
        "--overwrite",
        action="store_true",
        help="delete the run saved in --out-dir (checkpoints, logs, summary) and start this one there",
    )
    g.add_argument(
        "--init-from",
        default=None,
        metavar="RUN_DIR|GGUF|HF_DIR",
        help="start from the final weights of another run, or from a pretrained model (a GGUF file or Hugging Face "
        "folder: its architecture and tokenizer, --block-size and --rope-scaling applied); fresh optimizer and step count",
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
        "--print-config",
        action="store_true",
        help="print the resolved run (the preset, then the flags: run.json's content) and exit without training",
    )
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


def _model_flags(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("model")
    g.add_argument("--model", default=None, choices=sorted(PRESETS), help="model preset (default: the run preset's)")
    g.add_argument("--pe", default=None, choices=variant_names(), help="positional-encoding variant (default rope)")
    g.add_argument(
        "--layer-pattern",
        "--rnope-pattern",
        dest="layer_pattern",
        default=None,
        help="per-layer codes tiled over depth instead of --pe, e.g. RRRN ("
        + ", ".join(f"{code} {name}" for code, name in codes().items())
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
    g.add_argument(
        "--mlp", default=None, choices=MLPS, help="MLP (GPT-2: gelu, tanh; GPT-NeoX: gelu_exact; Llama: swiglu)"
    )
    g.add_argument(
        "--intermediate-size", type=int, default=None, help="MLP hidden width (default 4C for gelu, 8C/3 for swiglu)"
    )
    g.add_argument("--block-size", type=int, default=None, help="context length")
    g.add_argument("--dropout", type=float, default=None, help="dropout probability")


def _data_flags(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("data")
    g.add_argument(
        "--dataset",
        default=None,
        choices=["owt", "embedded", "files"],
        help="owt: OpenWebText via HF datasets; embedded: offline stdlib corpus; files: --data-files",
    )
    g.add_argument("--data-files", nargs="+", default=None, help="local jsonl/parquet/txt files with a 'text' field")
    g.add_argument("--data-dir", default=None, help="prepared shards; default: data/<dataset>-<tokenizer>")
    g.add_argument(
        "--tokenizer",
        default=None,
        help="gpt2 (GPT-2 BPE), bytes, or a GGUF file / model folder (default with a pretrained --init-from: its own)",
    )


def _optimisation_flags(p: argparse.ArgumentParser) -> None:
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


def _evaluation_and_logging_flags(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("evaluation and logging")
    g.add_argument("--eval-interval", type=int, default=None, help="evaluate every N steps")
    g.add_argument("--eval-iters", type=int, default=None, help="validation batches (the same for every run)")
    g.add_argument("--log-interval", type=int, default=None, help="print every N steps")
    g.add_argument("--ckpt-interval", type=int, default=None, help="checkpoint every N steps (default eval-interval)")
    g.add_argument("--num-samples", type=int, default=None, help="samples generated at the end")
    g.add_argument("--sample-tokens", type=int, default=None, help="tokens per sample")


#: flags that say which folder and device, how to show progress, or to print the run only: not what is trained
_PLACEMENT_FLAGS = ("out_dir", "device", "resume", "overwrite", "no_progress", "stop_at", "print_config")


def configs_from_args(args: argparse.Namespace, world_size: int = 1) -> tuple[GPTConfig, TrainConfig]:
    """(GPTConfig, TrainConfig) from parsed train flags: the preset, then the flags; with a bare
    ``--resume`` exactly the run's saved configuration (only ``--device`` may change)."""
    spec, _ = plan_from_args(args, world_size)
    return spec.model, spec.train


def plan_from_args(args: argparse.Namespace, world_size: int = 1) -> tuple[RunSpec, bool]:
    """(the run the flags ask for, whether it is the run saved in ``--out-dir``: a bare ``--resume``).
    What the folder then does is :func:`posenc.train.loop.plan_folder`'s."""
    from posenc.train import resume_configs

    if args.resume and args.overwrite:
        raise ValueError("--resume continues the saved run and --overwrite deletes it: give one of them")
    given = [k for k, v in vars(args).items() if v is not None and k not in _PLACEMENT_FLAGS]
    if args.resume and not given:
        if args.out_dir is None:
            raise ValueError("--resume needs --out-dir, the run folder to continue")
        if args.device is not None:
            resolve_device(args.device)
        try:
            config, cfg = resume_configs(args.out_dir, device=args.device, world_size=world_size)
        except CheckpointError:
            if Path(args.out_dir).exists() and any(p.name != LOCK_NAME for p in Path(args.out_dir).iterdir()):
                raise
            raise ValueError(
                f"--resume: {args.out_dir} holds no saved run (no run.json, no checkpoint); start it with "
                f"`posenc train --out-dir {args.out_dir} <the run's flags>`, or give those flags with --resume"
            ) from None
        return RunSpec(config, cfg), True
    return spec_from_args(args, world_size), False


def spec_from_args(args: argparse.Namespace, world_size: int = 1) -> RunSpec:
    """The run the flags ask for: the run preset, then the flags."""
    device = resolve_device(args.device or "auto")  # before any folder is made: a device this machine lacks
    preset = args.preset or ("owt-16m" if device.type == "cuda" else "cpu")
    train = {field: getattr(args, flag) for flag, field in TRAIN_FLAGS.items() if getattr(args, flag) is not None}
    if args.data_files:
        train["data_files"] = tuple(args.data_files)
        if args.dataset is None:
            train["dataset"] = "files"
    if args.log_to:
        train["log_to"] = tuple(args.log_to)
    model = {field: getattr(args, flag) for flag, field in MODEL_FLAGS.items() if getattr(args, flag) is not None}
    scaling = rope_scaling_from_args(args)
    if scaling is not None:
        model["rope_scaling"] = scaling
    if "pe" not in model and "layer_pattern" not in model:
        model["pe"] = "rope"
    if args.model is not None:
        model["model"] = args.model
    label = model.get("pe") or model["layer_pattern"]
    train["out_dir"] = str(args.out_dir or f"out/{preset}-{label}")
    train["world_size"] = world_size
    return build_spec(preset, model=model, train=train)


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


def run_train(args: argparse.Namespace, *, hooks: Any = None, prog: str = "posenc train") -> int:
    """One run from parsed flags; the process exit code (128 + signal when stopped by one)."""
    from posenc.train import handle_stop_signals, train_spec

    def go() -> int:
        world = int(os.environ.get("WORLD_SIZE", 1))
        spec, resume = plan_from_args(args, world_size=world)
        if args.print_config:
            print(json.dumps(spec.to_dict(), indent=1))
            return 0
        with handle_stop_signals() as stop:
            try:
                result = train_spec(
                    spec,
                    resume=resume,
                    overwrite=args.overwrite,
                    stop=stop,
                    stop_at=args.stop_at,
                    progress=not args.no_progress,
                    hooks=hooks,
                )
            except (RuntimeError, MemoryError) as e:
                if not is_out_of_memory(e):
                    raise
                raise ValueError(out_of_memory_message(spec)) from None
        out, master = Path(spec.train.out_dir), os.environ.get("RANK", "0") == "0"
        if result and result.get("stopped"):
            if master:
                print(f"continue with: {prog} --resume --out-dir {shlex.quote(str(out))}")
            return int(result["exit_code"])
        if result is not None:
            files = [
                name for name in ("curves.png", "summary.json", "samples.txt", "log.jsonl") if (out / name).exists()
            ]
            print(f"{out}: {', '.join(files)}")
        return 0

    return guarded(go, FIELD_FLAGS)


def is_out_of_memory(e: BaseException) -> bool:
    """A device or host allocation failure (CUDA's ``OutOfMemoryError``, CPU's allocator error)."""
    text = str(e)
    return (
        isinstance(e, (torch.OutOfMemoryError, MemoryError))
        or "can't allocate memory" in text
        or "out of memory" in text
    )


def out_of_memory_message(spec: RunSpec) -> str:
    cfg, T = spec.train, spec.model.block_size
    return (
        f"out of memory on {cfg.device}: --batch-size {cfg.batch_size} x context {T} = "
        f"{cfg.batch_size * T:,} tokens per micro-step; lower --batch-size and raise --grad-accum by the same "
        f"factor to keep the {cfg.batch_size * cfg.grad_accum * T:,} tokens per step"
    )


def guarded(fn: Callable[[], int], flags: Mapping[str, str] | None = None) -> int:
    """``fn()``, with user errors turned into one ``error:`` line and exit code 2 (3 when the loss
    became non-finite). ``flags`` (``{"TrainConfig.max_iters": "--max-iters"}``) names the
    command's flags in place of the config fields they set (:func:`posenc.flags.name_flags`)."""
    try:
        return fn()
    except (ValueError, DataError, CheckpointError) as e:
        print(f"error: {name_flags(str(e), flags or {})}", file=sys.stderr)
        return 2
    except NonFiniteError as e:
        print(f"error: {e}", file=sys.stderr)
        return 3

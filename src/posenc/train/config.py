"""The run configuration (everything but the model), its presets, device/dtype resolution, the
learning-rate schedule and the numerical-guard error.
"""

from __future__ import annotations

import math
from typing import Any, Literal

from posenc.config import PRESETS, GPTConfig
from posenc.data.tokenizers import is_model_path
from posenc.devices import DTYPES, resolve_device, resolve_dtype  # noqa: F401 -- re-exported
from posenc.spec import Spec, spec

LOG_SINKS: tuple[str, ...] = ("tensorboard", "wandb")

#: Run presets. ``owt-16m`` is the reference study: ~900M GPT-2 tokens (1717 steps of 524,288
#: tokens), fp16 + GradScaler + compile on CUDA. ``cpu`` finishes in minutes on 2 cores on the
#: embedded corpus; ``tiny`` is for tests.
TRAIN_PRESETS: dict[str, dict[str, Any]] = {
    "owt-16m": dict(
        model="owt-16m",
        dataset="owt",
        tokenizer="gpt2",
        batch_size=32,
        grad_accum=16,
        max_iters=1717,
        learning_rate=1e-3,
        min_lr=1e-4,
        warmup_iters=100,
        eval_interval=250,
        eval_iters=100,
        log_interval=10,
    ),
    "cpu": dict(
        model="cpu-small",
        dataset="embedded",
        tokenizer="bytes",
        batch_size=32,
        grad_accum=1,
        max_iters=1000,
        learning_rate=2e-3,
        min_lr=2e-4,
        warmup_iters=50,
        eval_interval=100,
        eval_iters=16,
        log_interval=10,
    ),
    "tiny": dict(
        model="tiny",
        dataset="embedded",
        tokenizer="bytes",
        batch_size=4,
        grad_accum=2,
        max_iters=20,
        learning_rate=3e-3,
        min_lr=3e-4,
        warmup_iters=2,
        eval_interval=10,
        eval_iters=2,
        log_interval=1,
    ),
}


@spec
class TrainConfig(Spec):
    """Everything about a run except the model (``GPTConfig``). Validated at construction."""

    out_dir: str = "out/run"
    init_from: str | None = None  # a run folder whose final weights start this run (fresh optimizer)
    dataset: Literal["owt", "embedded", "files"] = "embedded"
    data_files: tuple[str, ...] = ()
    data_dir: str | None = None
    tokenizer: str = "bytes"  # "gpt2", "bytes", or a GGUF file / model folder (its own tokenizer)
    batch_size: int = 16  # rows per micro-step, summed over all ranks
    grad_accum: int = 1  # micro-steps per optimizer step
    max_iters: int = 600
    learning_rate: float = 2e-3
    min_lr: float = 2e-4
    warmup_iters: int = 30
    lr_decay_iters: int | None = None  # default: max_iters
    weight_decay: float = 0.1
    beta1: float = 0.9
    beta2: float = 0.95
    grad_clip: float = 1.0  # 0 disables clipping
    eval_interval: int = 100
    eval_iters: int = 16
    log_interval: int = 10
    ckpt_interval: int | None = None  # default: eval_interval
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    compile: bool | None = None  # default: on for CUDA
    device: str = "auto"
    seed: int = 1337
    max_skipped_steps: int = 20  # fp16: more consecutive skipped steps than this stops the run
    num_samples: int = 3
    sample_tokens: int = 64
    world_size: int = 1
    log_to: tuple[str, ...] = ()  # extra scalar sinks beside log.jsonl: "tensorboard", "wandb"
    pack_documents: bool = False  # EOT-delimited documents in a row attend only to themselves

    def __post_init__(self) -> None:
        def positive(name: str, allow_zero: bool = False) -> None:
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < (0 if allow_zero else 1):
                bound = ">= 0" if allow_zero else ">= 1"
                raise ValueError(f"TrainConfig.{name} must be an int {bound}, got {value!r}")

        for name in (
            "batch_size",
            "grad_accum",
            "max_iters",
            "eval_interval",
            "eval_iters",
            "log_interval",
            "world_size",
        ):
            positive(name)
        for name in ("warmup_iters", "max_skipped_steps", "num_samples", "sample_tokens", "seed"):
            positive(name, allow_zero=True)
        if self.ckpt_interval is not None:
            positive("ckpt_interval")
        if self.lr_decay_iters is not None:
            positive("lr_decay_iters")
        if self.dataset not in ("owt", "embedded", "files"):
            raise ValueError(f"TrainConfig.dataset must be 'owt', 'embedded' or 'files', got {self.dataset!r}")
        if self.dataset == "files" and not self.data_files:
            raise ValueError("TrainConfig.data_files must name at least one file when dataset='files'")
        if self.tokenizer not in ("gpt2", "bytes") and not is_model_path(self.tokenizer):
            raise ValueError(
                f"TrainConfig.tokenizer must be 'gpt2', 'bytes' or a GGUF file or model folder, got {self.tokenizer!r}"
            )
        if self.dtype != "auto" and self.dtype not in DTYPES:
            raise ValueError(f"TrainConfig.dtype must be 'auto' or one of {sorted(DTYPES)}, got {self.dtype!r}")
        for name in ("learning_rate", "min_lr"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
                raise ValueError(f"TrainConfig.{name} must be a finite number >= 0, got {value!r}")
        if self.min_lr > self.learning_rate:
            raise ValueError(f"TrainConfig.min_lr={self.min_lr} must be <= learning_rate={self.learning_rate}")
        if not (isinstance(self.weight_decay, (int, float)) and self.weight_decay >= 0):
            raise ValueError(f"TrainConfig.weight_decay must be >= 0, got {self.weight_decay!r}")
        for name in ("beta1", "beta2"):
            if not (isinstance(getattr(self, name), (int, float)) and 0.0 <= getattr(self, name) < 1.0):
                raise ValueError(f"TrainConfig.{name} must be in [0, 1), got {getattr(self, name)!r}")
        if not (isinstance(self.grad_clip, (int, float)) and self.grad_clip >= 0):
            raise ValueError(f"TrainConfig.grad_clip must be >= 0 (0 disables), got {self.grad_clip!r}")
        if not isinstance(self.pack_documents, bool):
            raise ValueError(f"TrainConfig.pack_documents must be a bool, got {self.pack_documents!r}")
        unknown_sinks = [s for s in self.log_to if s not in LOG_SINKS]
        if isinstance(self.log_to, str) or unknown_sinks:
            raise ValueError(f"TrainConfig.log_to must be a tuple of {LOG_SINKS}, got {self.log_to!r}")
        if self.batch_size % self.world_size:
            raise ValueError(
                f"TrainConfig.batch_size={self.batch_size} (the global micro-batch) must be divisible by the "
                f"world size {self.world_size}: each rank trains an equal slice of it"
            )

    @property
    def decay_iters(self) -> int:
        return self.max_iters if self.lr_decay_iters is None else self.lr_decay_iters

    @property
    def checkpoint_interval(self) -> int:
        return self.eval_interval if self.ckpt_interval is None else self.ckpt_interval


def get_lr(step: int, cfg: TrainConfig) -> float:
    """Linear warmup, then cosine decay to ``min_lr`` at ``decay_iters`` (nanoGPT's schedule).
    A function of the step alone, so skipped or resumed steps cannot desynchronise it."""
    if step < cfg.warmup_iters:
        return cfg.learning_rate * (step + 1) / (cfg.warmup_iters + 1)
    if step >= cfg.decay_iters:
        return cfg.min_lr
    ratio = (step - cfg.warmup_iters) / max(1, cfg.decay_iters - cfg.warmup_iters)
    return cfg.min_lr + 0.5 * (1.0 + math.cos(math.pi * ratio)) * (cfg.learning_rate - cfg.min_lr)


EVAL_SEED = 0  # the validation batches are the same for every run and every encoding


def model_config(preset: str, **overrides: Any) -> GPTConfig:
    """A GPTConfig from a model preset name, with ``None`` overrides ignored."""
    if preset not in PRESETS:
        raise ValueError(f"unknown model preset {preset!r}; known: {sorted(PRESETS)}")
    return GPTConfig.from_preset(preset, **{k: v for k, v in overrides.items() if v is not None})


class NonFiniteError(RuntimeError):
    """Training produced a non-finite loss, or fp16 skipped too many steps in a row."""

    def __init__(self, step: int, reason: str) -> None:
        self.step = step
        super().__init__(f"step {step}: {reason}; stopped before the optimizer update")

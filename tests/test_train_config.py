"""Malformed training configurations are refused at construction (docs/reliability.md, item 9).

The GPTConfig half of item 9 lives in tests/test_config.py; this file covers TrainConfig,
``resolve_dtype`` / ``resolve_device`` and the script's own flags. Every case must raise
``ValueError`` (the script: exit code 2 and one ``error:`` line) whose message names the field
and the offending value. The same table runs again in a ``python -O`` interpreter, where
``assert`` statements would vanish: the checks in :func:`check` therefore use none.
"""

from __future__ import annotations

import contextlib
import io
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from posenc.train import TrainConfig, resolve_device, resolve_dtype

HERE = Path(__file__).resolve().parent

# (id, TrainConfig keyword arguments, words the message must contain)
TRAIN_CONFIG_CASES: list[tuple[str, dict, tuple[str, ...]]] = [
    ("batch_size zero", dict(batch_size=0), ("TrainConfig.batch_size", "got 0")),
    ("batch_size negative", dict(batch_size=-4), ("TrainConfig.batch_size", "-4")),
    ("batch_size float", dict(batch_size=2.5), ("TrainConfig.batch_size", "2.5")),
    ("batch_size bool", dict(batch_size=True), ("TrainConfig.batch_size", "True")),
    ("grad_accum zero", dict(grad_accum=0), ("TrainConfig.grad_accum", "got 0")),
    ("max_iters zero", dict(max_iters=0), ("TrainConfig.max_iters", "got 0")),
    ("eval_interval zero", dict(eval_interval=0), ("TrainConfig.eval_interval", "got 0")),
    ("eval_iters zero", dict(eval_iters=0), ("TrainConfig.eval_iters", "got 0")),
    ("ckpt_interval zero", dict(ckpt_interval=0), ("TrainConfig.ckpt_interval", "got 0")),
    ("lr_decay_iters zero", dict(lr_decay_iters=0), ("TrainConfig.lr_decay_iters", "got 0")),
    ("warmup_iters negative", dict(warmup_iters=-1), ("TrainConfig.warmup_iters", "-1")),
    ("max_skipped_steps negative", dict(max_skipped_steps=-1), ("TrainConfig.max_skipped_steps", "-1")),
    ("seed negative", dict(seed=-1), ("TrainConfig.seed", "-1")),
    ("world_size zero", dict(world_size=0), ("TrainConfig.world_size", "got 0")),
    (
        "batch not divisible by world size",
        dict(batch_size=5, world_size=2),
        ("TrainConfig.batch_size=5", "world size 2"),
    ),
    ("unknown dataset", dict(dataset="imagenet"), ("TrainConfig.dataset", "'imagenet'")),
    ("files without data_files", dict(dataset="files"), ("TrainConfig.data_files",)),
    ("unknown tokenizer", dict(tokenizer="sentencepiece"), ("TrainConfig.tokenizer", "'sentencepiece'")),
    ("unknown dtype", dict(dtype="float8"), ("TrainConfig.dtype", "'float8'")),
    ("dtype as torch alias", dict(dtype="half"), ("TrainConfig.dtype", "'half'")),
    ("learning_rate negative", dict(learning_rate=-1e-3), ("TrainConfig.learning_rate", "-0.001")),
    ("learning_rate nan", dict(learning_rate=math.nan), ("TrainConfig.learning_rate", "nan")),
    ("learning_rate inf", dict(learning_rate=math.inf), ("TrainConfig.learning_rate", "inf")),
    (
        "min_lr above learning_rate",
        dict(learning_rate=1e-3, min_lr=1e-2),
        ("TrainConfig.min_lr=0.01", "learning_rate=0.001"),
    ),
    ("weight_decay negative", dict(weight_decay=-0.1), ("TrainConfig.weight_decay", "-0.1")),
    ("beta1 one", dict(beta1=1.0), ("TrainConfig.beta1", "1.0")),
    ("beta2 negative", dict(beta2=-0.5), ("TrainConfig.beta2", "-0.5")),
    ("grad_clip negative", dict(grad_clip=-1.0), ("TrainConfig.grad_clip", "-1.0")),
    ("grad_clip nan", dict(grad_clip=math.nan), ("TrainConfig.grad_clip", "nan")),
]

# (id, function name, arguments, words the message must contain); devices are given by name
RESOLVE_CASES: list[tuple[str, str, tuple, tuple[str, ...]]] = [
    ("dtype float64", "resolve_dtype", ("float64", "cpu"), ("TrainConfig.dtype", "'float64'")),
    (
        "fp16 on a device without autocast",
        "resolve_dtype",
        ("float16", "meta"),
        ("TrainConfig.dtype='float16'", "meta"),
    ),
    (
        "bf16 on a device without autocast",
        "resolve_dtype",
        ("bfloat16", "meta"),
        ("TrainConfig.dtype='bfloat16'", "meta"),
    ),
    ("device not a torch device", "resolve_device", ("gpu",), ("TrainConfig.device='gpu'",)),
    # refused with CUDA (no device 99) and without it (CUDA not available)
    ("device cuda index out of range", "resolve_device", ("cuda:99",), ("TrainConfig.device='cuda:99'",)),
]

# (id, script flags, words the single error line must contain); each fails before any data is read
#: through the command line, an error names the flag the user typed, not the config field it sets
SCRIPT_CASES: list[tuple[str, list[str], tuple[str, ...]]] = [
    ("--batch-size 0", ["--batch-size", "0"], ("--batch-size must be >= 1", "got 0")),
    ("--lr nan", ["--lr", "nan"], ("--lr must be", "nan")),
    ("--seed -1", ["--seed", "-1"], ("--seed must be >= 0", "-1")),
    ("--device cuda:99", ["--device", "cuda:99"], ("--device cuda:99",)),
    ("--device gpu", ["--device", "gpu"], ("--device gpu",)),
    ("fp16 on meta", ["--device", "meta", "--dtype", "float16"], ("--dtype float16", "meta")),
    ("--block-size 0", ["--block-size", "0"], ("--block-size must be >= 1", "0")),
    ("--dropout 1.0", ["--dropout", "1.0"], ("--dropout must be", "1.0")),
    ("--rnope-pattern RXN", ["--rnope-pattern", "RXN"], ("--layer-pattern RXN", "'X'")),
    ("--rotary-dim 7", ["--rotary-dim", "7"], ("--rotary-dim 7",)),
    ("--pe with --layer-pattern", ["--pe", "rope", "--layer-pattern", "RRRN"], ("pe='rope'", "layer_pattern='RRRN'")),
    ("--init-from a folder without checkpoints", ["--init-from", "no-such-run"], ("no-such-run", "does not exist")),
]

ALL_CASES = (
    [("TrainConfig", *c) for c in TRAIN_CONFIG_CASES]
    + [("resolve", *c) for c in RESOLVE_CASES]
    + [("script", *c) for c in SCRIPT_CASES]
)


def _message_problem(message: str, needles: tuple[str, ...]) -> str | None:
    missing = [n for n in needles if n not in message]
    return f"message {message!r} lacks {missing}" if missing else None


def check(case: tuple, workdir: Path) -> str | None:
    """None when ``case`` is refused as promised, else what went wrong. No ``assert``: this also
    runs under ``python -O``."""
    kind, name, *rest = case
    if kind == "TrainConfig":
        kwargs, needles = rest
        try:
            TrainConfig(**kwargs)
        except ValueError as e:
            return _message_problem(str(e), needles)
        except Exception as e:  # noqa: BLE001 -- any other type is the failure being reported
            return f"raised {type(e).__name__}: {e}, not ValueError"
        return "accepted"
    if kind == "resolve":
        function, args, needles = rest
        fn = {"resolve_dtype": resolve_dtype, "resolve_device": resolve_device}[function]
        args = tuple(torch.device(a) if i == 1 else a for i, a in enumerate(args))
        try:
            fn(*args)
        except ValueError as e:
            return _message_problem(str(e), needles)
        except Exception as e:  # noqa: BLE001
            return f"raised {type(e).__name__}: {e}, not ValueError"
        return "accepted"
    flags, needles = rest
    sys.path.insert(0, str(HERE))
    from _train_helpers import train

    argv = [
        "--preset",
        "tiny",
        "--no-progress",
        "--out-dir",
        str(workdir / "out"),
        "--data-dir",
        str(workdir / "no-data"),
        *flags,
    ]
    if "--device" not in flags:
        argv += ["--device", "cpu"]
    err = io.StringIO()
    try:
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            rc = train(argv)
    except SystemExit as e:  # argparse
        return f"argparse exit {e.code}: {err.getvalue()!r}"
    except Exception as e:  # noqa: BLE001
        return f"escaped run(): {type(e).__name__}: {e}"
    lines = err.getvalue().strip().splitlines()
    if rc != 2 or len(lines) != 1 or not lines[0].startswith("error: "):
        return f"exit {rc}, stderr {err.getvalue()!r}"
    if (workdir / "no-data").exists():
        return "data preparation started"
    return _message_problem(lines[0], needles)


def test_case_ids_are_unique():
    assert len({c[1] for c in ALL_CASES}) == len(ALL_CASES), "duplicate case ids"


@pytest.mark.parametrize("case", ALL_CASES, ids=[f"{c[0]}: {c[1]}" for c in ALL_CASES])
def test_malformed_configuration_is_refused_with_field_and_value(case, tmp_path):
    problem = check(case, tmp_path)
    assert problem is None, problem


def test_defaults_and_presets_are_accepted():
    """The refusals are not blanket: the shipped configurations construct."""
    from posenc.train import TRAIN_PRESETS

    TrainConfig()
    for values in TRAIN_PRESETS.values():
        TrainConfig(**{k: v for k, v in values.items() if k != "model"})
    TrainConfig(batch_size=6, world_size=3, dataset="files", data_files=("a.jsonl",), seed=0)
    assert resolve_dtype("float32", torch.device("cpu")) is torch.float32
    assert resolve_device("cpu") == torch.device("cpu")


_UNDER_O = """
import json, sys
from pathlib import Path
sys.path.insert(0, {here!r})
import test_train_config as t
if sys.flags.optimize < 1:
    sys.exit("not running under -O")
problems = {{}}
for i, case in enumerate(t.ALL_CASES):
    work = Path({tmp!r}) / str(i)
    work.mkdir()
    problem = t.check(case, work)
    if problem is not None:
        problems[case[1]] = problem
print(json.dumps({{"checked": len(t.ALL_CASES), "problems": problems}}))
"""


@pytest.mark.slow
def test_every_case_is_refused_under_python_O(tmp_path):
    code = _UNDER_O.format(here=str(HERE), tmp=str(tmp_path))
    result = subprocess.run(
        [sys.executable, "-O", "-c", code],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["checked"] == len(ALL_CASES)
    assert report["problems"] == {}


def test_a_run_takes_layers_over_its_model_preset() -> None:
    from posenc import GPTConfig, LayerSpec
    from posenc.train.run import build_spec

    layers = (LayerSpec(pe="rope"), LayerSpec(pe="nope"))
    spec = build_spec("tiny", model={"layers": layers})
    assert spec.model == GPTConfig.from_preset("tiny", layers=layers)
    assert spec.model.layer_codes == ("R", "N", "R", "N") and spec.model.head == GPTConfig.from_preset("tiny").head

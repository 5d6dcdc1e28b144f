"""Numerical guards of the training loop (docs/reliability.md, items 6, 7 and the GPU item 14).

Item 6: fp16 autocast with GradScaler on CPU. An injected inf gradient skips that step: the
parameters and optimizer state in the checkpoints on either side of it are bitwise equal, the loss
scale halves, the log counts the skip, training goes on, and the learning rate of every step is
``get_lr(step)``.

Item 7: a non-finite loss or gradient in fp32/bf16 stops the run with NonFiniteError naming the
step, before that step's optimizer update (exit code 3, one line on stderr); more than
``--max-skipped-steps`` consecutive fp16 skips stop it too; under 2-process gloo DDP a NaN on
rank 0 stops both ranks, non-zero, within 60 s.

Item 14 (GPU only, skipped without CUDA): fp16 resume keeps the loss scale and adds no skipped
steps; compiled and eager fp16 losses agree within 1e-2 relative.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time

import pytest
import torch
from _train_helpers import (
    FAULTY_SCRIPT,
    assert_states_equal,
    env,
    free_port,
    latest,
    logged_steps,
    read_log,
    resume_argv,
    run_script,
    tiny_argv,
    train,
    train_losses,
)
from torch.optim.optimizer import register_optimizer_step_pre_hook

from posenc.checkpoint import load_checkpoint
from posenc.train import TrainConfig, get_lr


class StepCounter:
    """Counts optimizer.step() calls of every optimizer while active."""

    def __enter__(self):
        self.calls = 0
        self.handle = register_optimizer_step_pre_hook(self._hook)
        return self

    def _hook(self, optimizer, args, kwargs) -> None:  # noqa: ARG002
        self.calls += 1

    def __exit__(self, *exc) -> None:
        self.handle.remove()


# -- item 6 -----------------------------------------------------------------------------------

SKIP_AT = 5


def test_fp16_inf_gradient_skips_the_step_halves_the_scale_and_training_goes_on(data_dir, tmp_path, one_thread):
    out = tmp_path / "run"
    # checkpoints keep the newest two: stopping after step SKIP_AT leaves exactly the states
    # before (ckpt SKIP_AT) and after (ckpt SKIP_AT + 1) the skipped step
    argv = tiny_argv(
        out, data_dir, pe="rope", dtype="float16", max_iters=12, ckpt_interval=1, stop_at=SKIP_AT + 1, dropout=0.1
    )
    with StepCounter() as counter:
        assert train(argv, faults=f"inf-grad@{SKIP_AT}") == 0
    before = load_checkpoint(out / f"ckpt-{SKIP_AT:07d}.pt")
    after = load_checkpoint(out / f"ckpt-{SKIP_AT + 1:07d}.pt")
    assert counter.calls == SKIP_AT, "GradScaler called optimizer.step() on the inf step"

    assert_states_equal(before["model"], after["model"], "parameters across the skipped step")
    for i, state in before["optimizer"]["state"].items():
        assert_states_equal(state, after["optimizer"]["state"][i], f"optimizer state of parameter {i}")
    assert after["scaler"]["scale"] == before["scaler"]["scale"] / 2

    assert train(resume_argv(out)) == 0
    log = [r for r in read_log(out) if r["kind"] == "train"]
    assert [r["step"] for r in log] == list(range(12))
    assert [r["skipped"] for r in log] == [s == SKIP_AT for s in range(12)], "exactly the injected step is skipped"
    assert [r["skipped_total"] for r in log] == [int(s >= SKIP_AT) for s in range(12)]
    assert log[SKIP_AT + 1]["loss_scale"] == log[SKIP_AT]["loss_scale"] / 2
    assert all(torch.isfinite(torch.tensor(r["loss"])) for r in log)
    assert json.loads((out / "summary.json").read_text())["skipped_steps"] == 1
    assert not torch.equal(latest(out)["model"]["wte.weight"], after["model"]["wte.weight"]), "training stopped"

    cfg = TrainConfig.from_dict(latest(out)["train_config"])
    assert [r["lr"] for r in log] == [get_lr(s, cfg) for s in range(12)]


def test_lr_schedule_is_a_function_of_the_step_alone():
    """The schedule has no state a skipped or resumed step could advance: warmup, cosine, floor."""
    cfg = TrainConfig(max_iters=100, warmup_iters=10, learning_rate=1e-3, min_lr=1e-4)
    lrs = [get_lr(s, cfg) for s in range(120)]
    assert lrs == [get_lr(s, cfg) for s in range(120)]
    assert all(a < b for a, b in zip(lrs[:10], lrs[1:11]))
    assert all(a >= b for a, b in zip(lrs[10:100], lrs[11:101]))
    assert lrs[10] == pytest.approx(1e-3) and lrs[100:] == [1e-4] * 20


# -- item 7 -----------------------------------------------------------------------------------

FAULT_AT = 4


@pytest.mark.parametrize("fault", ["nan-loss", "inf-grad"])
@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_non_finite_loss_or_gradient_stops_before_the_update(dtype, fault, data_dir, tmp_path, capsys, one_thread):
    out = tmp_path / "run"
    argv = tiny_argv(out, data_dir, pe="rope", dtype=dtype, max_iters=10, ckpt_interval=1)
    with StepCounter() as counter:
        assert train(argv, faults=f"{fault}@{FAULT_AT}") == 3
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"error: step {FAULT_AT}: non-finite") and dtype in err, err
    assert counter.calls == FAULT_AT, f"{counter.calls} optimizer updates, expected {FAULT_AT} (none at the fault)"
    assert logged_steps(out) == FAULT_AT
    assert latest(out)["step"] == FAULT_AT  # nothing after the fault was committed


def test_non_finite_loss_exits_3_with_one_line_in_a_fresh_interpreter(data_dir, tmp_path):
    result = run_script(tiny_argv(tmp_path / "run", data_dir, max_iters=10), faults=f"nan-loss@{FAULT_AT}")
    assert result.returncode == 3, result.stderr[-3000:]
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr[-3000:]
    assert lines[0].startswith(f"error: step {FAULT_AT}: "), lines[0]


@pytest.mark.parametrize(
    "inf_steps, limit, stops_at", [("3,4,5", 2, 5), ("3,4", 2, None), ("2,3", 1, 3), ("2,4,6", 1, None)]
)
def test_too_many_consecutive_fp16_skips_stop_the_run(
    inf_steps, limit, stops_at, data_dir, tmp_path, capsys, one_thread
):
    out = tmp_path / "run"
    argv = tiny_argv(out, data_dir, pe="rope", dtype="float16", max_iters=8, max_skipped_steps=limit)
    rc = train(argv, faults=f"inf-grad@{inf_steps}")
    err = capsys.readouterr().err.strip()
    if stops_at is None:
        assert rc == 0, err
        skipped = [r["step"] for r in read_log(out) if r["kind"] == "train" and r["skipped"]]
        assert skipped == [int(s) for s in inf_steps.split(",")]
    else:
        assert rc == 3
        assert err.startswith(f"error: step {stops_at}: {limit + 1} consecutive fp16 steps"), err
        assert logged_steps(out) == stops_at


@pytest.mark.slow
def test_nan_on_rank_0_stops_both_ddp_ranks(data_dir, tmp_path):
    """Two ranks started by hand (what torchrun does: RANK, WORLD_SIZE, MASTER_*), so that each
    rank's own exit code is visible."""
    out, port = tmp_path / "run", free_port()
    argv = [f"nan-loss@{FAULT_AT}", *tiny_argv(out, data_dir, pe="rope", max_iters=50)]
    procs, logs = [], []
    for rank in range(2):
        logs.append(open(tmp_path / f"rank{rank}.txt", "w+"))  # noqa: SIM115 -- closed in the finally below
        rank_env = env(
            RANK=str(rank),
            LOCAL_RANK=str(rank),
            WORLD_SIZE="2",
            LOCAL_WORLD_SIZE="2",
            MASTER_ADDR="127.0.0.1",
            MASTER_PORT=str(port),
        )
        procs.append(
            subprocess.Popen(
                [sys.executable, str(FAULTY_SCRIPT), *argv], env=rank_env, stdout=logs[rank], stderr=logs[rank]
            )
        )
    try:
        deadline = time.monotonic() + 180  # start-up of two interpreters on 2 busy cores
        while logged_steps(out) < FAULT_AT and time.monotonic() < deadline and all(p.poll() is None for p in procs):
            time.sleep(0.01)
        t_fault = time.monotonic()
        codes = [p.wait(timeout=max(1.0, t_fault + 60 - time.monotonic())) for p in procs]
        waited = time.monotonic() - t_fault
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
        text = []
        for f in logs:
            f.seek(0)
            text.append(f.read())
            f.close()
    assert codes == [3, 3], f"exit codes {codes}\n--- rank 0\n{text[0][-2000:]}\n--- rank 1\n{text[1][-2000:]}"
    assert waited < 60
    assert f"error: step {FAULT_AT}: non-finite" in text[0], text[0][-2000:]


# -- item 14: GPU only ------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.skipif(not torch.cuda.is_available(), reason="item 14 needs a CUDA device")
def test_gpu_fp16_resume_keeps_the_loss_scale_and_compiled_matches_eager(data_dir, tmp_path):
    common = dict(pe="rope", device="cuda", dtype="float16", max_iters=50, batch_size=8, eval_interval=25)
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    assert train(tiny_argv(straight, data_dir, "--no-compile", **common)) == 0
    assert train(tiny_argv(resumed, data_dir, "--no-compile", stop_at=25, **common)) == 0
    saved_scale = latest(resumed)["scaler"]["scale"]
    assert train(resume_argv(resumed)) == 0
    log_s = [r for r in read_log(straight) if r["kind"] == "train"]
    log_r = [r for r in read_log(resumed) if r["kind"] == "train"]
    assert log_r[25]["loss_scale"] == saved_scale
    assert sum(r["skipped"] for r in log_r) == sum(r["skipped"] for r in log_s)

    short = dict(common, max_iters=10)
    eager, compiled = tmp_path / "eager", tmp_path / "compiled"
    assert train(tiny_argv(eager, data_dir, "--no-compile", **short)) == 0
    assert train(tiny_argv(compiled, data_dir, "--compile", **short)) == 0
    for a, b in zip(train_losses(eager), train_losses(compiled), strict=True):
        assert abs(a - b) <= 1e-2 * abs(a), (a, b)

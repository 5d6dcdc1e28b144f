"""Exact resume (docs/reliability.md, items 1 and 4).

Item 1: for every encoding, 40 steps straight equal k steps + checkpoint + resume to 40, for
k in {1, 7, 39}, with dropout on: every logged loss, learning rate, grad norm and validation loss
with ``==``, and the final parameters and optimizer state with ``torch.equal``. Runs are in-process
(``run(argv)``); a resumed run builds a new model and optimizer from the checkpoint alone, and
restores the RNG from it. Resumes in a fresh interpreter are exercised by the signal test below
and by tests/test_checkpoint.py (SIGKILL).

Negative controls: a checkpoint re-saved unchanged still resumes exactly, while one whose RNG
state is replaced by a freshly seeded one, or whose data seed is changed, diverges -- so the
equality above is not vacuous.

Item 4: SIGTERM / SIGINT at random moments, 10 trials chained on one run: exit 143 / 130, a
checkpoint at the stop step, and the finished run equals an uninterrupted one.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time

import pytest
import torch
from _train_helpers import (
    SCRIPT,
    assert_states_equal,
    env,
    fork_train,
    latest,
    logged_steps,
    numerics,
    read_log,
    resume_argv,
    tiny_argv,
    train,
    train_losses,
    wait_for,
    wait_pid,
)

from posenc import VARIANTS
from posenc.checkpoint import save_checkpoint

N = 40
KS = (1, 7, 39)
DROPOUT = 0.1


def straight_argv(out_dir, data_dir, pe: str, **flags) -> list[str]:
    return tiny_argv(out_dir, data_dir, pe=pe, max_iters=N, dropout=DROPOUT, **flags)


@pytest.fixture(scope="module")
def reference(tmp_path_factory, data_dir):
    """The uninterrupted 40-step run of an encoding, trained once per module and encoding."""
    runs = {}

    def get(pe: str):
        if pe not in runs:
            out = tmp_path_factory.mktemp(f"straight-{pe}")
            assert train(straight_argv(out, data_dir, pe)) == 0
            runs[pe] = out
        return runs[pe]

    return get


def assert_same_run(resumed, reference) -> None:
    got, want = numerics(read_log(resumed)), numerics(read_log(reference))
    assert sum(r["kind"] == "train" for r in want) == N
    for g, w in zip(got, want):
        assert g == w, f"first differing log record: resumed {g} vs uninterrupted {w}"
    assert len(got) == len(want)
    a, b = latest(resumed), latest(reference)
    assert a["step"] == b["step"] == N
    assert_states_equal(a["model"], b["model"], "final parameters")
    opt_a, opt_b = a["optimizer"]["state"], b["optimizer"]["state"]
    assert opt_a.keys() == opt_b.keys()
    for i in opt_a:
        assert_states_equal(opt_a[i], opt_b[i], f"optimizer state of parameter {i}")


@pytest.mark.slow
@pytest.mark.parametrize("k", KS)
@pytest.mark.parametrize("pe", sorted(VARIANTS))
def test_resume_is_bitwise_exact(pe, k, reference, data_dir, tmp_path, one_thread):
    out = tmp_path / "run"
    assert train(straight_argv(out, data_dir, pe, stop_at=k)) == 0
    assert latest(out)["step"] == k
    assert len(train_losses(out)) == k, "--stop-at ran past its step"
    assert train(resume_argv(out)) == 0
    assert_same_run(out, reference(pe))


@pytest.mark.parametrize("tamper", ["resaved unchanged", "rng reset", "data seed changed"])
def test_negative_control_dropping_rng_or_data_state_diverges(tamper, reference, data_dir, tmp_path, one_thread):
    k, out = 7, tmp_path / "run"
    ref = reference("rope")
    assert train(straight_argv(out, data_dir, "rope", stop_at=k)) == 0
    ckpt = latest(out)
    if tamper == "rng reset":  # what a resume that forgot the RNG would run with: a fresh seed
        ckpt["rng"]["torch"] = [torch.Generator().manual_seed(ckpt["train_config"]["seed"]).get_state()]
    elif tamper == "data seed changed":  # the data order is keyed by (seed, step, micro); the saved run has it
        spec = json.loads((out / "run.json").read_text())
        spec["train"]["seed"] += 1
        (out / "run.json").write_text(json.dumps(spec))
    save_checkpoint(ckpt, out)  # rewrites the file and its manifest: a valid, loadable checkpoint
    assert train(resume_argv(out)) == 0

    got, want = train_losses(out), train_losses(ref)
    assert got[:k] == want[:k]
    if tamper == "resaved unchanged":
        assert_same_run(out, ref)
    else:
        assert got[k] != want[k], f"{tamper}: step {k} unchanged, so the resume does not depend on that state"
        assert not torch.equal(latest(out)["model"]["wte.weight"], latest(ref)["model"]["wte.weight"])


# -- item 4: SIGTERM / SIGINT ---------------------------------------------------------------------

SIGNAL_STEPS = 100
SIGNALS = [signal.SIGTERM, signal.SIGINT] * 5
FRESH_INTERPRETER_TRIALS = {0, 1}  # one SIGTERM and one SIGINT to `python pretrain_owt.py` itself


@pytest.mark.slow
def test_sigterm_and_sigint_stop_at_a_step_boundary_with_a_checkpoint(data_dir, tmp_path, one_thread):
    seed = 4
    rnd = random.Random(seed)
    ref, out = tmp_path / "reference", tmp_path / "run"
    argv = tiny_argv(out, data_dir, pe="rope", max_iters=SIGNAL_STEPS, dropout=DROPOUT)
    assert train(tiny_argv(ref, data_dir, pe="rope", max_iters=SIGNAL_STEPS, dropout=DROPOUT)) == 0

    for trial, sig in enumerate(SIGNALS):
        args = argv if trial == 0 else resume_argv(out)
        start = logged_steps(out) if trial else 0
        if trial in FRESH_INTERPRETER_TRIALS:
            log = open(tmp_path / f"trial-{trial}.txt", "w")  # noqa: SIM115 -- the child writes it until it exits
            proc = subprocess.Popen([sys.executable, str(SCRIPT), *map(str, args)], env=env(), stdout=log, stderr=log)
            pid = proc.pid
        else:
            pid = fork_train(args, tmp_path / f"trial-{trial}.txt")
        try:
            # signal only once training runs (before that the interpreter's default handler applies)
            wait_for(lambda: logged_steps(out) > start, 60, f"trial {trial}: training to start")  # noqa: B023
            time.sleep(rnd.uniform(0, 0.08))
            before = logged_steps(out)
            os.kill(pid, sig)
            rc = proc.wait(timeout=60) if trial in FRESH_INTERPRETER_TRIALS else wait_pid(pid)
        finally:
            if trial in FRESH_INTERPRETER_TRIALS:
                if proc.poll() is None:
                    proc.kill()
                    proc.wait()
                log.close()
        details = f"trial {trial} ({signal.Signals(sig).name}, seed {seed}): {(tmp_path / f'trial-{trial}.txt').read_text()[-2000:]}"
        assert rc == 128 + sig, details
        stop = latest(out)["step"]
        assert stop == logged_steps(out), f"{details}: checkpoint at {stop}, last logged step {logged_steps(out) - 1}"
        # the step in flight when the signal came finishes, and one more if the signal landed after
        # that step had read its stop flag (+1 for a record written between reading and signalling)
        assert before <= stop <= before + 3, details
        assert stop < SIGNAL_STEPS, f"{details}: the run finished before the signal"

    assert train(resume_argv(out)) == 0
    got, want = numerics(read_log(out)), numerics(read_log(ref))
    assert got == want
    assert_states_equal(latest(out)["model"], latest(ref)["model"], "final parameters")


# -- autoresume: a run killed before its first checkpoint ------------------------------------------

EARLY_STEPS = 400  # longer than the 2-4 s the kill waits, on a fast machine too; one checkpoint, at the end


@pytest.mark.slow
@pytest.mark.parametrize("trial", [0, 1])
def test_a_run_killed_in_its_first_seconds_reruns_with_resume_to_the_same_result(trial, data_dir, tmp_path):
    """What a scheduler does after a preemption: rerun the same command with --resume. A run killed
    2-4 s after launch (starting up, preparing, or training, before any checkpoint) starts again
    from step 0 and ends bitwise equal to a run never interrupted."""
    ref, out = tmp_path / "reference", tmp_path / "run"
    flags = dict(pe="alibi", max_iters=EARLY_STEPS, dropout=DROPOUT, ckpt_interval=EARLY_STEPS)
    assert train(tiny_argv(ref, data_dir, **flags)) == 0
    argv = [*tiny_argv(out, data_dir, **flags), "--resume"]
    proc = subprocess.Popen([sys.executable, str(SCRIPT), *argv], env=env(), cwd=tmp_path)
    time.sleep(random.Random(trial).uniform(2.0, 4.0))
    proc.kill()
    assert proc.wait(timeout=60) == -signal.SIGKILL, "the run finished before the kill; raise EARLY_STEPS"
    assert not (out / "checkpoints.json").exists()  # killed before its first checkpoint
    assert train(argv) == 0  # the same command again
    assert numerics(read_log(out)) == numerics(read_log(ref))
    assert_states_equal(latest(out)["model"], latest(ref)["model"], "final parameters")

"""Checkpoints (docs/reliability.md, items 2, 3 and 5).

Item 2: the state of a plain, a compiled, a DDP and a compiled-then-DDP model is saved without
wrapper prefixes, loads with ``torch.load(weights_only=True)`` and into a plain GPT with
``strict=True``. The checkpoint of a real 2-process DDP run is checked in
tests/test_distributed.py. A real ``--compile`` run is not part of the suite: inductor took
2.5 minutes for a 2-step tiny run on these 2 CPU cores. The script saves the state of the plain
module under the wrappers; the compiled wrapper's key renaming is what the test below covers.

Item 3: a run is SIGKILLed at 20 random moments -- during start-up, during training, and while a
checkpoint is being written -- and restarted with ``--resume`` each time; the latest checkpoint
loads every time and the finished run equals an uninterrupted one.

Item 5: a damaged checkpoint (0 bytes, cut at 50% / 99%, a flipped byte, a missing key) raises
CheckpointError naming the path and the reason; the script refuses to resume from it with one
line on stderr and exit code 2, and leaves the run folder as it was.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
from _train_helpers import (
    SCRIPT,
    assert_states_equal,
    env,
    fork_train,
    free_port,
    latest,
    logged_steps,
    numerics,
    read_log,
    resume_argv,
    run_script,
    tiny_argv,
    train,
    wait_for,
    wait_pid,
)
from torch.nn.parallel import DistributedDataParallel as DDP

from posenc import GPT, GPTConfig
from posenc.checkpoint import (
    MANIFEST,
    REQUIRED_KEYS,
    CheckpointError,
    clean_state_dict,
    load_checkpoint,
    save_checkpoint,
    unwrap,
)


def tiny_gpt() -> GPT:
    torch.manual_seed(0)
    return GPT(GPTConfig.from_preset("tiny", pe="rope", dropout=0.1))


def minimal_state(model_state: dict) -> dict:
    """A checkpoint with every required key; only the model is realistic."""
    return {
        "model": model_state,
        "optimizer": {},
        "scaler": {},
        "step": 3,
        "rng": {"torch": [], "cuda": []},
        "config": {},
        "train_config": {},
        "stats": {},
    }


def latest_path(run_dir: Path) -> Path:
    return run_dir / json.loads((run_dir / MANIFEST).read_text())["latest"]


@contextlib.contextmanager
def single_process_group():
    """A 1-rank gloo group, so that DDP can wrap a model inside the test process."""
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{free_port()}", rank=0, world_size=1)
    try:
        yield
    finally:
        dist.destroy_process_group()


# -- item 2 ---------------------------------------------------------------------------------


@pytest.mark.parametrize("wrapper", ["plain", "compiled", "ddp", "compiled+ddp"])
def test_any_wrapper_saves_a_state_that_loads_into_a_plain_model(wrapper, tmp_path):
    model = tiny_gpt()
    with single_process_group() if "ddp" in wrapper else contextlib.nullcontext():
        wrapped = model
        if "compiled" in wrapper:  # torch.compile is lazy: wrapping renames the keys, nothing compiles
            wrapped = torch.compile(wrapped)
        if "ddp" in wrapper:
            wrapped = DDP(wrapped)
        raw_keys = list(wrapped.state_dict())
        if wrapper != "plain":
            assert all(k.startswith(("_orig_mod.", "module.")) for k in raw_keys), raw_keys[:3]
        assert unwrap(wrapped) is model
        path = save_checkpoint(minimal_state(clean_state_dict(wrapped.state_dict())), tmp_path)

    state = torch.load(path, map_location="cpu", weights_only=True)
    fresh = GPT(model.config)
    fresh.load_state_dict(state["model"], strict=True)
    assert_states_equal(fresh.state_dict(), model.state_dict())


def test_a_plain_run_checkpoint_loads_into_a_plain_model(data_dir, tmp_path, one_thread):
    out = tmp_path / "run"
    assert train(tiny_argv(out, data_dir, pe="alibi", max_iters=3)) == 0
    state = torch.load(latest_path(out), map_location="cpu", weights_only=True)
    model = GPT(GPTConfig.from_dict(state["config"]))
    model.load_state_dict(state["model"], strict=True)
    assert state["step"] == 3


# -- item 3: SIGKILL at random moments -------------------------------------------------------

KILL_STEPS = 250  # ~100 are used on 2 busy cores; the margin is for faster machines
KILLS = 20


def temp_files(out: Path) -> set[str]:
    """Temporary files of an atomic write in progress (checkpoint or manifest)."""
    try:
        return {n for n in os.listdir(out) if n.startswith(".") and n.endswith(".tmp")}
    except FileNotFoundError:
        return set()


@pytest.mark.slow
def test_sigkill_at_random_moments_never_loses_the_latest_checkpoint(data_dir, tmp_path, one_thread):
    seed = 20
    rnd = random.Random(seed)
    ref, out = tmp_path / "reference", tmp_path / "run"
    flags = dict(pe="rope", max_iters=KILL_STEPS, dropout=0.1)
    assert train(tiny_argv(ref, data_dir, **flags)) == 0

    # when to kill: any time after launch (start-up, loading, training), a random time into
    # training, or the moment a checkpoint or manifest write is under way
    moments = ["after launch"] * 7 + ["during training"] * 7 + ["during a save"] * 6
    rnd.shuffle(moments)
    moments[0] = "during training"  # the first kill must come after a first checkpoint exists
    mid_save, steps_seen = 0, 0
    for trial, moment in enumerate(moments):
        args = tiny_argv(out, data_dir, ckpt_interval=1, **flags) if trial == 0 else resume_argv(out)
        start = logged_steps(out)
        stale = temp_files(out)
        pid = fork_train(args, tmp_path / f"trial-{trial}.txt")
        try:
            if moment == "after launch":
                time.sleep(rnd.uniform(0, 0.6))
            else:
                wait_for(lambda: logged_steps(out) > start and (out / MANIFEST).exists(), 60, "training to start")  # noqa: B023
                if moment == "during training":
                    time.sleep(rnd.uniform(0, 0.1))
                else:
                    wait_for(lambda: temp_files(out) - stale, 30, "a checkpoint write", poll=0.0001)  # noqa: B023
            os.kill(pid, signal.SIGKILL)
        finally:
            rc = wait_pid(pid)
        details = f"kill {trial} ({moment}, seed {seed}): {(tmp_path / f'trial-{trial}.txt').read_text()[-2000:]}"
        assert rc == -signal.SIGKILL, f"{details}: the run was not killed (exit {rc}); raise KILL_STEPS"
        mid_save += bool(temp_files(out) - stale)  # a temp file left behind: the kill cut a write
        ckpt = load_checkpoint(out)  # raises CheckpointError if the kill damaged it
        assert ckpt["step"] >= steps_seen, f"{details}: the latest checkpoint went back in time"
        steps_seen = ckpt["step"]
        GPT(GPTConfig.from_dict(ckpt["config"])).load_state_dict(ckpt["model"], strict=True)
    assert mid_save >= 3, f"only {mid_save} of {KILLS} kills interrupted a write; the test no longer covers saves"
    assert steps_seen < KILL_STEPS

    # the rest of the run in a fresh interpreter: the curve continues exactly
    result = run_script(resume_argv(out))
    assert result.returncode == 0, result.stderr[-3000:]
    assert numerics(read_log(out)) == numerics(read_log(ref))
    assert_states_equal(latest(out)["model"], latest(ref)["model"], "final parameters")


# -- item 5: damaged checkpoints -------------------------------------------------------------


def damage(run_dir: Path, kind: str) -> Path:
    """Damage the latest checkpoint of ``run_dir`` in place; the path of the damaged file."""
    path = latest_path(run_dir)
    data = path.read_bytes()
    if kind == "empty":
        path.write_bytes(b"")
    elif kind == "truncated 50%":
        path.write_bytes(data[: len(data) // 2])
    elif kind == "truncated 99%":
        path.write_bytes(data[: len(data) * 99 // 100])
    elif kind == "flipped byte":  # in the middle of the tensor data, where the zip reader checks nothing
        flipped = bytearray(data)
        flipped[len(data) // 2] ^= 0x01
        path.write_bytes(bytes(flipped))
    elif kind == "missing key":  # a well-formed file, committed in the manifest, without its optimizer
        state = torch.load(path, weights_only=True)
        del state["optimizer"]
        save_checkpoint(state, run_dir)
    else:
        raise ValueError(kind)
    return path


KINDS = {  # kind -> words the reason must contain
    "empty": "0 bytes",
    "truncated 50%": "truncated",
    "truncated 99%": "truncated",
    "flipped byte": "sha256",
    "missing key": "missing key(s) ['optimizer']",
}


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory, data_dir):
    out = tmp_path_factory.mktemp("finished") / "run"
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        assert train(tiny_argv(out, data_dir, pe="rope", max_iters=4, stop_at=3)) == 0
    finally:
        torch.set_num_threads(before)
    return out


def folder_snapshot(run_dir: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(run_dir.iterdir()) if p.is_file()}


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_damaged_checkpoint_raises_a_named_error(kind, finished_run, tmp_path):
    run_dir = tmp_path / "run"
    shutil.copytree(finished_run, run_dir)
    path = damage(run_dir, kind)
    for target in (run_dir, path):  # the run folder, or the file itself (checked against the manifest)
        with pytest.raises(CheckpointError) as info:
            load_checkpoint(target)
        assert info.value.path == path
        assert str(path) in str(info.value) and KINDS[kind] in str(info.value), str(info.value)


@pytest.mark.parametrize("kind", ["empty", "truncated 50%", "truncated 99%", "missing key"])
def test_damaged_file_without_a_manifest_raises_a_named_error(kind, finished_run, tmp_path):
    """A loose .pt file (no manifest to check it against) still fails with CheckpointError rather
    than a zip-reader traceback. A flipped byte inside tensor data is only detectable through
    the manifest's sha256, so it is not part of this test."""
    run_dir = tmp_path / "run"
    shutil.copytree(finished_run, run_dir)
    path = damage(run_dir, kind)
    loose = tmp_path / "loose" / path.name
    loose.parent.mkdir()
    shutil.copy(path, loose)
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(loose)
    assert str(loose) in str(info.value)
    reason = {"empty": "0 bytes", "missing key": "missing key"}.get(kind, "cannot be read by torch.load")
    assert reason in info.value.reason


@pytest.mark.parametrize(
    "setup, reason",
    [
        (lambda d: (d / MANIFEST).write_text('{"latest": "ckpt-00'), "unreadable manifest"),
        (lambda d: (d / MANIFEST).unlink(), "no checkpoints.json"),
        (lambda d: latest_path(d).unlink(), "does not exist"),
    ],
    ids=["cut manifest", "no manifest", "file listed in the manifest is gone"],
)
def test_damaged_run_folder_raises_a_named_error(setup, reason, finished_run, tmp_path):
    run_dir = tmp_path / "run"
    shutil.copytree(finished_run, run_dir)
    setup(run_dir)
    with pytest.raises(CheckpointError, match=reason):
        load_checkpoint(run_dir)


def test_from_checkpoint_takes_a_run_folder_or_a_checkpoint_file(finished_run):
    ckpt = latest(finished_run)
    for source in (finished_run, str(finished_run), latest_path(finished_run), str(latest_path(finished_run))):
        model = GPT.from_checkpoint(source)
        assert model.config == GPTConfig.from_dict(ckpt["config"])
        assert_states_equal(model.state_dict(), ckpt["model"])


def test_from_checkpoint_refuses_a_damaged_run_and_what_is_no_checkpoint(finished_run, tmp_path):
    run_dir = tmp_path / "run"
    shutil.copytree(finished_run, run_dir)
    damage(run_dir, "truncated 50%")
    with pytest.raises(CheckpointError, match="truncated"):
        GPT.from_checkpoint(run_dir)
    with pytest.raises(CheckpointError, match="does not exist"):
        GPT.from_checkpoint(tmp_path / "no-such-run")
    with pytest.raises(TypeError, match="run folder, a checkpoint file or a checkpoint dict, got a int"):
        GPT.from_checkpoint(3)


@pytest.mark.parametrize("key", REQUIRED_KEYS)
def test_every_required_key_is_checked(key, tmp_path):
    state = minimal_state(tiny_gpt().state_dict())
    del state[key]
    state.setdefault("step", 0)  # save_checkpoint names the file by step
    path = save_checkpoint(state, tmp_path)
    if key == "step":
        state = torch.load(path, weights_only=True)
        del state["step"]
        torch.save(state, path)
        (tmp_path / MANIFEST).unlink()
    with pytest.raises(CheckpointError, match=f"missing key.*'{key}'"):
        load_checkpoint(path)


def test_resume_needs_only_the_required_keys(finished_run, tmp_path):
    """Resume reads nothing beyond REQUIRED_KEYS: a checkpoint stripped to them resumes, so a key
    the trainer reads but load_checkpoint does not require cannot surface as a bare KeyError."""
    run_dir = tmp_path / "run"
    shutil.copytree(finished_run, run_dir)
    ckpt = latest(run_dir)
    stripped = {k: ckpt[k] for k in REQUIRED_KEYS}
    stripped["train_config"] = dict(ckpt["train_config"]) | {"max_iters": ckpt["step"] + 1}
    (run_dir / "summary.json").unlink(missing_ok=True)
    save_checkpoint(stripped, run_dir)
    assert train(resume_argv(run_dir)) == 0
    assert latest(run_dir)["step"] == ckpt["step"] + 1


@pytest.mark.slow
def test_resume_from_a_damaged_checkpoint_exits_with_one_line_and_starts_nothing(finished_run, tmp_path):
    """All five kinds at once, each in its own interpreter (started together: their torch
    imports overlap)."""
    runs = {}
    for kind in KINDS:
        run_dir = tmp_path / kind.replace(" ", "-").replace("%", "")
        shutil.copytree(finished_run, run_dir)
        path = damage(run_dir, kind)
        before = folder_snapshot(run_dir)
        proc = subprocess.Popen(
            [sys.executable, str(SCRIPT), *resume_argv(run_dir)],
            env=env(),
            cwd=tmp_path,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        runs[kind] = (run_dir, path, before, proc)
    for kind, (run_dir, path, before, proc) in runs.items():
        stdout, stderr = proc.communicate(timeout=120)
        lines = stderr.strip().splitlines()
        assert proc.returncode == 2, f"{kind}: exit {proc.returncode}\n{stderr[-3000:]}"
        assert len(lines) == 1 and "Traceback" not in stderr, f"{kind}: {stderr[-3000:]}"
        assert lines[0].startswith("error: checkpoint") and str(path) in lines[0] and KINDS[kind] in lines[0], lines[0]
        assert "posenc |" not in stdout, f"{kind}: a run started: {stdout[:500]}"
        assert folder_snapshot(run_dir) == before, f"{kind}: the run folder changed"
        assert not (tmp_path / "out").exists(), f"{kind}: a fresh run was started elsewhere"

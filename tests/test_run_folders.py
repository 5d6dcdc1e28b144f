"""A run folder never loses work: the same command again continues the run (or, finished, says so
and changes nothing), another run is refused unless ``--overwrite``, one process at a time trains
in a folder, and a ``--data-dir`` that holds no prepared shards is refused, not filled."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from _train_helpers import env, read_log, run_script, tiny_argv, train

from posenc.train.run import FolderInUse, hold_folder


def files(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.is_file() and p.name != "run.lock"}


def test_the_same_command_again_continues_from_the_latest_checkpoint(data_dir, tmp_path, capsys):
    argv = tiny_argv(tmp_path, data_dir, max_iters=8, eval_interval=4, ckpt_interval=4)
    assert train([*argv, "--stop-at", "4"]) == 0
    first = read_log(tmp_path)
    assert train(argv) == 0  # no --resume, no --stop-at: the same run spec
    log = read_log(tmp_path)
    assert [r["step"] for r in log if r["kind"] == "train"] == list(range(8))
    assert log[: len(first)] == first  # steps 0-3 kept as logged, timings included: not trained again
    assert json.loads((tmp_path / "summary.json").read_text())["steps"] == 8


def test_a_finished_run_says_so_prints_its_summary_and_rewrites_nothing(data_dir, tmp_path, capsys):
    argv = tiny_argv(tmp_path, data_dir, max_iters=2, eval_interval=2)
    assert train(argv) == 0
    before = files(tmp_path)
    capsys.readouterr()
    assert train(argv) == 0
    out = capsys.readouterr().out
    assert "finished; nothing to do" in out and "done: train loss" in out, out
    assert files(tmp_path) == before


def test_another_run_in_the_folder_is_refused_with_the_fields_and_the_ways_on(data_dir, tmp_path, capsys):
    argv = tiny_argv(tmp_path, data_dir, max_iters=2, eval_interval=2)
    assert train(argv) == 0
    before = files(tmp_path)
    capsys.readouterr()
    assert train(tiny_argv(tmp_path, data_dir, max_iters=3, eval_interval=2, lr=0.01)) == 2
    err = capsys.readouterr().err
    assert "max_iters: 2 != 3" in err and "learning_rate: 0.003 != 0.01" in err, err
    assert "--resume --out-dir" in err and "another --out-dir" in err and "--overwrite" in err, err
    assert files(tmp_path) == before  # nothing replaced, nothing appended


def test_overwrite_deletes_the_saved_run_and_starts_the_new_one(data_dir, tmp_path):
    assert train(tiny_argv(tmp_path, data_dir, max_iters=4, eval_interval=2, ckpt_interval=2)) == 0
    (tmp_path / "notes.txt").write_text("mine")
    assert train([*tiny_argv(tmp_path, data_dir, max_iters=2, eval_interval=2), "--overwrite"]) == 0
    assert [r["step"] for r in read_log(tmp_path) if r["kind"] == "train"] == [0, 1]
    assert sorted(p.name for p in tmp_path.glob("ckpt-*.pt")) == ["ckpt-0000002.pt"]  # none of the old run's
    assert json.loads((tmp_path / "run.json").read_text())["train"]["max_iters"] == 2
    assert (tmp_path / "notes.txt").read_text() == "mine"  # only the run's own files go


def test_resume_and_overwrite_together_are_refused(data_dir, tmp_path, capsys):
    assert train([*tiny_argv(tmp_path, data_dir), "--resume", "--overwrite"]) == 2
    assert "give one of them" in capsys.readouterr().err


def test_a_folder_in_use_is_refused_at_once_naming_it_and_the_holder(data_dir, tmp_path, capsys):
    with hold_folder(tmp_path):  # another run training there now
        t0 = time.monotonic()
        assert train(tiny_argv(tmp_path, data_dir, max_iters=2)) == 2
        assert time.monotonic() - t0 < 10
    err = capsys.readouterr().err
    assert f"{tmp_path} is in use by process {os.getpid()}" in err, err
    assert not (tmp_path / "run.json").exists() and not (tmp_path / "log.jsonl").exists()


def test_a_killed_holder_leaves_no_stale_lock(tmp_path):
    child = subprocess.Popen(
        [
            sys.executable,
            "-c",
            f"from posenc.train.run import hold_folder\nwith hold_folder({str(tmp_path)!r}):\n"
            "    print('held', flush=True)\n    import time; time.sleep(60)",
        ],
        stdout=subprocess.PIPE,
        env=env(),
        text=True,
    )
    try:
        assert child.stdout.readline().strip() == "held"
        with pytest.raises(FolderInUse, match=f"process {child.pid}"), hold_folder(tmp_path):
            pass
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait(timeout=30)
    with hold_folder(tmp_path):  # released by the operating system with the process
        pass


@pytest.mark.parametrize("kind", ["missing", "unprepared"])
def test_a_data_dir_without_prepared_shards_is_refused_with_the_prepare_command(kind, data_dir, tmp_path, capsys):
    folder = tmp_path / "data"
    if kind == "unprepared":
        folder.mkdir()
        (folder / "notes.txt").write_text("not shards")
    assert train(tiny_argv(tmp_path / "run", folder, max_iters=1)) == 2
    err = capsys.readouterr().err
    assert str(folder) in err and f"posenc prepare --dataset embedded --tokenizer bytes --out-dir {folder}" in err, err
    assert "Traceback" not in err
    assert (sorted(p.name for p in folder.iterdir()) == ["notes.txt"]) if kind == "unprepared" else not folder.exists()
    assert not (tmp_path / "run").exists()  # no run folder to resume or refuse later


def test_the_default_data_folder_is_prepared_on_first_use(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # data/<dataset>-<tokenizer> is relative to the working folder
    assert train(tiny_argv(tmp_path / "run", None, max_iters=1, eval_interval=1)) == 0
    assert (tmp_path / "data" / "embedded-bytes" / "meta.json").is_file()


def test_the_example_script_continues_and_refuses_through_the_same_path(data_dir, tmp_path):
    argv = tiny_argv(tmp_path, data_dir, max_iters=2, eval_interval=2)
    assert train(argv) == 0
    before = files(tmp_path)
    same = run_script(argv)
    assert same.returncode == 0 and "finished; nothing to do" in same.stdout, same.stderr[-2000:]
    other = run_script(tiny_argv(tmp_path, data_dir, max_iters=3, eval_interval=2))
    assert other.returncode == 2 and "max_iters: 2 != 3" in other.stderr, other.stderr[-2000:]
    assert files(tmp_path) == before


def test_a_study_run_folder_in_use_is_refused_not_trained_twice(data_dir, tmp_path, capsys):
    from posenc import jobs
    from posenc.train.args import spec_from_args
    from posenc.train.args import train_parser as parser

    spec = spec_from_args(parser().parse_args(tiny_argv(tmp_path, data_dir, max_iters=2)))
    assert jobs.plan_run(tmp_path, spec) is True
    with hold_folder(tmp_path):  # another sweep's worker trains it now
        assert jobs.train_in_process(tmp_path) == 2
    assert f"in use by process {os.getpid()}" in capsys.readouterr().err
    assert not (tmp_path / "log.jsonl").exists()


def test_the_run_core_takes_a_run_spec_and_a_folder_its_saved_one(data_dir, tmp_path):
    from posenc.train import RunSpec, train_folder, train_spec
    from posenc.train.args import spec_from_args
    from posenc.train.args import train_parser as parser

    spec = spec_from_args(parser().parse_args(tiny_argv(tmp_path, data_dir, max_iters=2)))
    with pytest.raises(TypeError, match="train_spec takes a RunSpec, got tuple"):
        train_spec((spec.model, spec.train))
    spec.save(tmp_path)  # what a sweep's plan_run leaves: the run, saved, not started
    summary = train_folder(tmp_path, progress=False, log=lambda *a: None)
    assert summary["steps"] == 2 and RunSpec.load(tmp_path).identity() == spec.identity()
    assert train_folder(tmp_path, progress=False, log=lambda *a: None)["finished"] is True

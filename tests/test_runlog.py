"""posenc.train.runlog: log.jsonl survives a resume as one run, and the optional scalar sinks
receive exactly the numbers log.jsonl holds."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from posenc.train.runlog import RunLog, read_log, read_summary, write_summary


def records(n: int, start: int = 0) -> list[dict]:
    return [
        {
            "step": s,
            "kind": "train",
            "loss": 5.0 - 0.1 * s,
            "lr": 1e-3,
            "grad_norm": 1.0,
            "tokens_per_s": 10.0,
            "loss_scale": 1.0,
            "tokens": s,
            "skipped": False,
        }
        for s in range(start, n)
    ]


def test_a_resumed_log_drops_what_came_after_the_checkpoint(tmp_path: Path) -> None:
    log = RunLog(tmp_path, start_step=0)
    for r in records(10):
        log.write(r)
    log.close()
    with open(tmp_path / "log.jsonl", "a") as f:
        f.write('{"step": 10, "kind": "tra')  # a line cut by a kill
    resumed = RunLog(tmp_path, start_step=6)
    assert [r["step"] for r in resumed.records] == list(range(6))
    for r in records(8, start=6):
        resumed.write(r)
    resumed.close()
    assert [r["step"] for r in read_log(tmp_path)] == list(range(8))


def test_a_fresh_run_replaces_an_old_log(tmp_path: Path) -> None:
    log = RunLog(tmp_path, start_step=0)
    log.write(records(1)[0])
    log.close()
    again = RunLog(tmp_path, start_step=0)
    again.close()
    assert read_log(tmp_path) == []


def test_summary_round_trip_and_a_missing_one(tmp_path: Path) -> None:
    assert read_summary(tmp_path) is None
    write_summary(tmp_path, {"val_loss": 1.5})
    assert read_summary(tmp_path) == {"val_loss": 1.5}
    (tmp_path / "summary.json").write_text('{"val_lo')  # cut short
    assert read_summary(tmp_path) is None


def test_tensorboard_receives_the_same_scalars(tmp_path: Path) -> None:
    from tensorboard.backend.event_processing import event_accumulator as accumulator  # a dev dependency

    log = RunLog(tmp_path, start_step=0, sinks=("tensorboard",))
    written = records(5) + [{"step": 5, "kind": "eval", "val_loss": 4.2, "train_loss": 4.4, "tokens": 5, "time_s": 1.0}]
    for r in written:
        log.write(r)
    log.close()
    acc = accumulator.EventAccumulator(str(tmp_path / "tensorboard"))
    acc.Reload()
    losses = [(e.step, e.value) for e in acc.Scalars("train/loss")]
    assert losses == [(r["step"], pytest.approx(r["loss"])) for r in written if r["kind"] == "train"]
    assert [(e.step, pytest.approx(e.value)) for e in acc.Scalars("eval/val_loss")] == [(5, 4.2)]
    assert json.loads((tmp_path / "log.jsonl").read_text().splitlines()[0])["loss"] == written[0]["loss"]

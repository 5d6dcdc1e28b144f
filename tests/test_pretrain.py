"""examples/pretrain_owt.py end to end on CPU: every encoding trains, outputs are written, user
errors end in one clear line. Exactness of resume, signals and DDP: tests/test_resume.py,
tests/test_checkpoint.py, tests/test_distributed.py."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest

from _scripts import ROOT, load_script
from _train_helpers import data_dir  # noqa: F401  (session fixture: the embedded corpus, prepared once)
from posenc import VARIANTS

script = load_script(ROOT / "examples" / "pretrain_owt.py", "pretrain_owt")  # with its real plot_curves


def train(out: Path, data: Path, *extra: str) -> int:
    argv = ["--preset", "tiny", "--data-dir", str(data), "--out-dir", str(out), "--no-progress", *extra]
    return script.run(argv)


def evals(out: Path) -> list[float]:
    return [r["val_loss"] for r in map(json.loads, (out / "log.jsonl").read_text().splitlines()) if r["kind"] == "eval"]


@pytest.mark.parametrize("pe", sorted(VARIANTS))
def test_every_encoding_trains_and_the_loss_drops(pe, data_dir, tmp_path):
    assert train(tmp_path, data_dir, "--pe", pe, "--max-iters", "20", "--eval-interval", "10") == 0
    val = evals(tmp_path)
    assert len(val) == 3  # steps 0, 10, 20
    # From ln(256) = 5.55 at init; 20 steps of a tiny byte model reliably drop by more than 0.5.
    assert val[0] > 5.0 and val[-1] < val[0] - 0.5, val
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["pe"] == pe and summary["val_loss"] == val[-1]


def test_outputs_a_comparison_script_can_read(data_dir, tmp_path, capsys):
    assert train(tmp_path, data_dir, "--pe", "rnope", "--qk-norm", "--max-iters", "10", "--eval-interval", "5") == 0
    for name in ("log.jsonl", "curves.png", "summary.json", "samples.txt", "checkpoints.json"):
        assert (tmp_path / name).stat().st_size > 0, name
    assert (tmp_path / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    summary = json.loads((tmp_path / "summary.json").read_text())
    steps = [json.loads(line) for line in (tmp_path / "log.jsonl").read_text().splitlines()]
    train_losses = [r["loss"] for r in steps if r["kind"] == "train"]
    assert len(train_losses) == summary["steps"] == 10
    # the reported train loss is the mean over the last evaluation interval (steps 5..9), as in the study
    assert summary["train_loss"] == pytest.approx(sum(train_losses[5:]) / 5, rel=1e-12)
    assert summary["tokens"] == 10 * 4 * 2 * 32
    assert summary["layer_codes"] == "RRRN" and summary["qk_norm"] is True
    assert len(summary["samples"]) == 3 and all(isinstance(s, str) and s for s in summary["samples"])
    for r in steps[1:]:
        assert {"step", "kind"} <= set(r)
        if r["kind"] == "train":
            assert {"loss", "lr", "tokens", "tokens_per_s", "grad_norm", "loss_scale", "skipped"} <= set(r)
    assert "done: train loss" in capsys.readouterr().out


def test_help_documents_every_flag(capsys):
    with pytest.raises(SystemExit) as exit_info:
        script.parse_args(["--help"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    parser_actions = []
    original = argparse.ArgumentParser.parse_args

    def capture(self, args=None, namespace=None):
        parser_actions.extend(self._actions)
        return original(self, [], namespace)

    argparse.ArgumentParser.parse_args = capture
    try:
        script.parse_args([])
    finally:
        argparse.ArgumentParser.parse_args = original
    flags = [a for a in parser_actions if a.option_strings and "--help" not in a.option_strings]
    assert len(flags) >= 40
    for action in flags:
        assert action.help and len(action.help) > 10, action.option_strings
        assert action.option_strings[0] in text


@pytest.mark.parametrize(
    ("extra", "needle"),
    [
        (["--rnope-pattern", "RRXN"], "'X'"),
        (["--batch-size", "0"], "batch_size"),
        (["--dtype", "float64"], "float64"),  # argparse refuses: exit 2 with usage
        (["--rope-base", "-1"], "rope_base"),
        (["--block-size", "1000000"], "block_size"),  # longer than the data's validation split
    ],
)
def test_bad_input_ends_in_one_clear_line(extra, needle, data_dir, tmp_path, capsys):
    try:
        code = train(tmp_path, data_dir, "--max-iters", "2", *extra)
    except SystemExit as e:  # argparse's own refusal
        code = e.code
    err = capsys.readouterr().err
    assert code == 2
    assert "Traceback" not in err
    if needle is not None:
        assert needle in err, err
    assert not (tmp_path / "checkpoints.json").exists()


def test_resume_refuses_changed_configuration(data_dir, tmp_path, capsys):
    assert train(tmp_path, data_dir, "--max-iters", "4", "--stop-at", "2") == 0
    assert script.run(["--resume", "--out-dir", str(tmp_path), "--lr", "1"]) == 2
    assert "--lr" in capsys.readouterr().err
    assert script.run(["--resume", "--out-dir", str(tmp_path), "--no-progress"]) == 0
    assert json.loads((tmp_path / "summary.json").read_text())["steps"] == 4


def test_resume_without_a_checkpoint_is_refused(tmp_path, capsys):
    assert script.run(["--resume", "--out-dir", str(tmp_path / "nothing"), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "does not exist" in err and "Traceback" not in err

"""The ``posenc`` command end to end on CPU: every encoding trains through ``posenc train``,
outputs are written, user errors end in one clear line, and the other subcommands run. Exactness
of resume, signals and DDP: tests/test_resume.py, tests/test_checkpoint.py, tests/test_distributed.py."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from _data_helpers import prep, write_jsonl

from posenc import VARIANTS, GPTConfig
from posenc.cli import main, train_parser

ROOT = Path(__file__).resolve().parents[1]


def run(*argv: str) -> int:
    return main([str(a) for a in argv])


def train(out: Path, data: Path, *extra: str) -> int:
    return run("train", "--preset", "tiny", "--data-dir", data, "--out-dir", out, "--no-progress", *extra)


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
    assert summary["val_loss"] == val[-1]
    # what was built is the variant: its layers, whatever the command line called it
    expected = GPTConfig.from_preset("tiny", pe=pe).architecture()
    assert summary["architecture"] == expected and summary["layer_codes"] == expected["layer_codes"]


def test_outputs_a_comparison_script_can_read(data_dir, tmp_path, capsys):
    assert (
        train(tmp_path, data_dir, "--layer-pattern", "RRRN", "--qk-norm", "--max-iters", "10", "--eval-interval", "5")
        == 0
    )
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
    assert {layer["attention"]["qk_norm"] for layer in summary["architecture"]["layers"]} == {"rms"}
    assert len(summary["samples"]) == 3 and all(isinstance(s, str) and s for s in summary["samples"])
    for r in steps[1:]:
        assert {"step", "kind"} <= set(r)
        if r["kind"] == "train":
            assert {"loss", "lr", "tokens", "tokens_per_s", "grad_norm", "loss_scale", "skipped"} <= set(r)
    assert "done: train loss" in capsys.readouterr().out


def test_help_documents_every_flag(capsys):
    with pytest.raises(SystemExit) as exit_info:
        run("train", "--help")
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    flags = [a for a in train_parser()._actions if a.option_strings and "--help" not in a.option_strings]
    assert len(flags) >= 40
    for action in flags:
        assert action.help and len(action.help) > 10, action.option_strings
        assert action.option_strings[0] in text


@pytest.mark.parametrize(
    ("extra", "needle"),
    [
        (["--layer-pattern", "RRXN"], "'X'"),
        (["--batch-size", "0"], "--batch-size"),
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
    assert train(tmp_path, data_dir, "--max-iters", "4", "--resume", "--lr", "1") == 2
    err = capsys.readouterr().err
    assert "other settings" in err and "learning_rate: 0.003 != 1.0" in err, err
    assert run("train", "--resume", "--out-dir", tmp_path, "--no-progress") == 0  # bare: the saved run
    assert json.loads((tmp_path / "summary.json").read_text())["steps"] == 4


def test_the_same_command_with_resume_starts_then_continues(data_dir, tmp_path):
    """A scheduler reruns one command: --resume with the run's flags starts a new folder, and later
    continues it from its checkpoint."""
    flags = ("--max-iters", "4", "--resume")
    assert train(tmp_path, data_dir, *flags, "--stop-at", "2") == 0
    assert json.loads((tmp_path / "run.json").read_text())["train"]["max_iters"] == 4
    assert train(tmp_path, data_dir, *flags) == 0
    assert [r["step"] for r in map(json.loads, (tmp_path / "log.jsonl").read_text().splitlines())][-1] == 4


@pytest.mark.parametrize("folder", ["nothing", "empty"])
def test_a_bare_resume_without_a_saved_run_is_refused_with_what_to_run(folder, tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    assert run("train", "--resume", "--out-dir", tmp_path / folder, "--no-progress") == 2
    err = capsys.readouterr().err
    assert "holds no saved run" in err and "posenc train --out-dir" in err and "Traceback" not in err
    assert not (tmp_path / "nothing").exists()


def test_init_from_starts_a_longer_context_run_from_trained_weights(data_dir, tmp_path):
    base, longer = tmp_path / "base", tmp_path / "longer"
    assert train(base, data_dir, "--pe", "rope", "--max-iters", "20", "--eval-interval", "10") == 0
    assert (
        train(
            longer,
            data_dir,
            "--pe",
            "rope",
            "--init-from",
            base,
            "--block-size",
            "64",
            "--max-iters",
            "2",
            "--eval-interval",
            "2",
            "--warmup-iters",
            "0",
        )
        == 0
    )
    trained = evals(base)[-1]
    first = evals(longer)[0]  # before any step at the new context: the trained weights, not a fresh init
    assert first < 5.0 and abs(first - trained) < 1.0, (first, trained)
    summary = json.loads((longer / "summary.json").read_text())
    assert summary["config"]["block_size"] == 64 and summary["train_config"]["init_from"] == str(base)
    assert summary["steps"] == 2  # a fresh step count and optimizer


def test_unknown_command_and_usage(capsys):
    assert run("nonesuch") == 2
    assert "unknown command 'nonesuch'" in capsys.readouterr().err
    assert run() == 0
    out = capsys.readouterr().out
    assert all(cmd in out for cmd in ("prepare", "train", "compare", "eval"))


def test_eval_command_prints_the_extrapolation_of_a_run(data_dir, tmp_path, capsys):
    assert train(tmp_path, data_dir, "--pe", "rope", "--max-iters", "2", "--eval-interval", "2") == 0
    capsys.readouterr()
    assert run("eval", tmp_path, "--multipliers", "1", "2", "--windows", "2", "--device", "cpu", "--json") == 0
    result = json.loads(capsys.readouterr().out)
    assert set(result["extrapolation"]) == {"1", "2"} and all(v > 0 for v in result["extrapolation"].values())


def test_python_dash_m_posenc_is_the_same_command(tmp_path):
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "posenc",
            "prepare",
            "--dataset",
            "embedded",
            "--tokenizer",
            "bytes",
            "--out-dir",
            str(tmp_path / "d"),
            "--no-progress",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    assert (tmp_path / "d" / "meta.json").exists() and (tmp_path / "d" / "train.bin").stat().st_size > 0


def test_init_from_weights_that_do_not_fit_is_refused_by_name(data_dir, tmp_path, capsys):
    base = tmp_path / "base"
    assert train(base, data_dir, "--pe", "absolute", "--max-iters", "1", "--eval-interval", "1") == 0
    capsys.readouterr()
    # a learned absolute table of 32 positions cannot become one of 64
    assert train(tmp_path / "longer", data_dir, "--pe", "absolute", "--init-from", base, "--block-size", "64") == 2
    err = capsys.readouterr().err
    assert "init_from" in err and "wpe.weight" in err and "Traceback" not in err


def test_pack_documents_trains_with_document_segments(tmp_path):
    # short documents (a few dozen bytes each), so that most 32-token rows hold a document boundary
    docs = [f"Document {i}: " + " ".join(f"word{j}" for j in range(i % 7 + 1)) for i in range(4000)]
    data = prep(tmp_path / "data", [write_jsonl(tmp_path / "docs.jsonl", docs)])
    packed, plain = tmp_path / "packed", tmp_path / "plain"
    files = ("--dataset", "files", "--data-files", str(tmp_path / "docs.jsonl"), "--max-iters", "20")
    assert train(packed, data, "--pe", "rope", "--pack-documents", *files, "--eval-interval", "10") == 0
    assert train(plain, data, "--pe", "rope", *files, "--eval-interval", "10") == 0
    val = evals(packed)
    assert val[-1] < val[0] - 0.5
    assert json.loads((packed / "summary.json").read_text())["train_config"]["pack_documents"] is True
    steps = lambda out: [
        json.loads(line)["loss"] for line in (out / "log.jsonl").read_text().splitlines() if '"train"' in line
    ]  # noqa: E731
    assert steps(packed) != steps(plain)  # the segments change the training: rows hold several documents


def test_a_data_dir_of_another_corpus_is_refused_not_overwritten(tmp_path, capsys):
    data = prep(tmp_path / "data", [write_jsonl(tmp_path / "docs.jsonl", [f"doc {i}" * 9 for i in range(50)])])
    before = (data / "train.bin").read_bytes()
    assert train(tmp_path / "run", data, "--pe", "rope", "--max-iters", "1") == 2  # the preset's corpus: embedded
    err = capsys.readouterr().err
    assert "holds the shards of source='files'" in err and "source='embedded'" in err and "Traceback" not in err
    assert (data / "train.bin").read_bytes() == before

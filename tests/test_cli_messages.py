"""What the ``posenc`` command says: errors name the flag the user typed (never a config field or a
traceback), help shows real defaults, and the training and evaluation consoles read as a person
needs them. End-to-end runs use the tiny preset for a few steps."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
import torch

from posenc.cli import eval_parser, export_parser, main, prepare_args, train_parser
from posenc.flags import name_flags
from posenc.sweep import parser as compare_parser
from posenc.train.args import FIELD_FLAGS
from posenc.train.runlog import Throughput


def run(*argv) -> int:
    return main([str(a) for a in argv])


def train(out: Path, data: Path, *extra) -> int:
    return run("train", "--preset", "tiny", "--data-dir", data, "--out-dir", out, "--no-progress", *extra)


def exit_code(fn) -> int:
    try:
        return fn()
    except SystemExit as e:
        return e.code


# -- errors name what the user typed ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("extra", "want"),
    [
        (["--max-iters", "0"], "error: --max-iters must be >= 1, got 0"),
        (["--lr", "-1"], "error: --lr must be a finite number >= 0, got -1.0"),
        (["--block-size", "0"], "error: --block-size must be >= 1, got 0"),
    ],
)
def test_a_config_error_names_the_flag(extra, want, data_dir, tmp_path, capsys):
    assert train(tmp_path / "r", data_dir, *extra) == 2
    err = capsys.readouterr().err.strip()
    assert err == want
    assert not (tmp_path / "r").exists()


def test_every_train_flag_that_sets_a_config_field_is_mapped():
    """The mapping is one table, built from the flags themselves: each --flag of a field is named."""
    dests = {a.dest: a.option_strings[0] for a in train_parser()._actions if a.option_strings}
    for field, flag in FIELD_FLAGS.items():
        assert flag in dests.values(), (field, flag)
    assert FIELD_FLAGS["TrainConfig.learning_rate"] == "--lr"
    assert name_flags("TrainConfig.device='cuda': no", FIELD_FLAGS) == "--device cuda: no"
    assert name_flags("Other.max_iters=3", FIELD_FLAGS) == "Other.max_iters=3"


def test_eval_errors_name_windows_and_device(tmp_path, capsys):
    assert exit_code(lambda: run("eval", tmp_path, "--windows", "0")) == 2
    err = capsys.readouterr().err
    assert "--windows" in err and "must be >= 1, got 0" in err and "usage:" not in err
    if not torch.cuda.is_available():
        assert run("eval", tmp_path, "--device", "cuda") == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("error: --device cuda: CUDA is not available") and "TrainConfig" not in err


@pytest.mark.parametrize("device", ["mps", "xla", "cuda"])
def test_a_device_this_machine_lacks_is_one_line_and_leaves_no_folder(device, data_dir, tmp_path, capsys):
    if device == "cuda" and torch.cuda.is_available() or device == "mps" and torch.backends.mps.is_available():
        pytest.skip(f"this machine has {device}")
    assert train(tmp_path / "r", data_dir, "--device", device) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"error: --device {device}") and "\n" not in err and "Traceback" not in err
    assert not (tmp_path / "r").exists()  # no run.json behind


def test_out_of_memory_is_one_line_naming_batch_and_context(data_dir, tmp_path, capsys):
    from posenc.train.args import run_train

    class OutOfMemory:  # what the allocator raises when the batch does not fit (a real one would fill the machine)
        def on_loss(self, step, micro, loss):
            raise RuntimeError("[enforce fail at alloc_cpu.cpp:117] DefaultCPUAllocator: can't allocate memory")

    args = train_parser().parse_args(
        ["--preset", "tiny", "--data-dir", str(data_dir), "--out-dir", str(tmp_path), "--no-progress"]
        + ["--batch-size", "6"]
    )
    assert run_train(args, hooks=OutOfMemory()) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: out of memory") and "\n" not in err
    assert "--batch-size 6 x context 32 = 192 tokens per micro-step" in err and "--grad-accum" in err


def test_an_unknown_choice_gives_the_closest_names_and_the_list_without_usage(capsys):
    assert exit_code(lambda: run("train", "--pe", "ropee")) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "usage:" not in err
    assert "unknown 'ropee'; did you mean rope" in err and "qknorm_l2" in err and "--pe" in err


# -- help ------------------------------------------------------------------------------------------


def help_text(parser) -> str:
    return parser.format_help()


@pytest.mark.parametrize(
    "parser",
    [train_parser, eval_parser, export_parser, compare_parser],
    ids=["train", "eval", "export", "compare"],
)
def test_help_never_shows_none_or_false_defaults(parser):
    text = " ".join(help_text(parser("posenc")).split())
    assert "(default: None)" not in text and "(default: False)" not in text


def printed_help(fn, capsys) -> str:
    with pytest.raises(SystemExit) as done:
        fn(["--help"])
    assert done.value.code == 0
    return " ".join(capsys.readouterr().out.split())


def test_help_of_prepare_and_the_vision_example_shows_no_empty_defaults(capsys):
    """examples/pretrain_owt.py and examples/compare.py print the train and compare help above."""
    from posenc.vision.vit import main as vit_main

    for fn in (prepare_args, vit_main):
        text = printed_help(fn, capsys)
        assert "(default: None)" not in text and "(default: False)" not in text, fn


def test_train_help_shows_what_each_preset_fills():
    text = " ".join(help_text(train_parser("posenc train")).split())
    assert "optimizer steps (default: owt-16m 1717, cpu 1000, tiny 20)" in text
    assert "context length (default: owt-16m 1024, cpu 128, tiny 32)" in text
    assert "AdamW weight decay (>= 2-D weights only) (default: 0.1)" in text


def test_eval_and_vit_help_show_their_real_defaults(capsys):
    text = " ".join(help_text(eval_parser("posenc eval")).split())
    assert "(default: 16)" in text and "(default: 1 2 4 8 16)" in text and "(default: auto)" in text
    from posenc.vision.vit import main as vit_main

    text = printed_help(vit_main, capsys)
    assert "(default: 30)" in text and "(default: 0 1 2)" in text and "--quick" in text


def test_print_config_shows_the_resolved_run_and_trains_nothing(tmp_path, capsys):
    assert run("train", "--preset", "tiny", "--max-iters", "7", "--out-dir", tmp_path / "r", "--print-config") == 0
    spec = json.loads(capsys.readouterr().out)
    assert spec["train"]["max_iters"] == 7 and spec["train"]["batch_size"] == 4 and spec["model"]["block_size"] == 32
    assert not (tmp_path / "r").exists()


# -- the training console --------------------------------------------------------------------------


def test_console_of_a_stopped_then_resumed_run(data_dir, tmp_path, capsys):
    out = tmp_path / "r"
    assert train(out, data_dir, "--max-iters", "4", "--eval-interval", "2", "--stop-at", "2") == 0
    first = capsys.readouterr().out
    assert "train loss None" not in first and "input None" not in first and "None" not in first.splitlines()[0]
    assert f"continue with: posenc train --resume --out-dir {out}" in first
    assert run("train", "--resume", "--out-dir", out, "--no-progress") == 0
    second = capsys.readouterr().out
    assert "resumed from step 2 of 4" in second
    last = second.strip().splitlines()[-1]
    assert "curves.png" in last and str(out) in last


def test_wall_time_counts_every_session_of_a_resumed_run(data_dir, tmp_path):
    class Slow:  # the first session takes at least 1.5 s
        def on_loss(self, step, micro, loss):
            time.sleep(0.4)
            return loss

    from posenc.train.args import run_train

    argv = ["--preset", "tiny", "--data-dir", str(data_dir), "--out-dir", str(tmp_path), "--no-progress"]
    argv += ["--max-iters", "4", "--grad-accum", "1", "--eval-interval", "2"]
    assert run_train(train_parser().parse_args([*argv, "--stop-at", "2"]), hooks=Slow()) == 0
    assert run_train(train_parser().parse_args([*argv, "--resume"])) == 0
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["wall_time_s"] >= summary["train_time_s"] and summary["wall_time_s"] > 0.8


def test_tokens_per_second_is_smoothed():
    """The issue's consecutive raw rates: the warm-up step is dropped, a speed-up shows gradually."""
    speed = Throughput(smoothing=0.1)
    shown = [speed.update(r) for r in (247, 12987, 23035, 22000, 24000)]
    assert shown[1] == pytest.approx(12987)  # the warm-up step no longer weighs
    assert all(b / a < 1 / 0.9 + 1e-9 for a, b in zip(shown[1:], shown[2:]))  # at most +11% a step
    assert 12987 < shown[-1] < 23035
    steady = Throughput()
    assert [round(steady.update(1000.0)) for _ in range(5)] == [1000] * 5


# -- the eval console ------------------------------------------------------------------------------


def test_eval_prints_tables_and_where_it_saved_them(data_dir, tmp_path, capsys):
    assert train(tmp_path, data_dir, "--max-iters", "2", "--eval-interval", "2") == 0
    capsys.readouterr()
    assert run("eval", tmp_path, "--multipliers", "1", "2", "--windows", "2", "--device", "cpu") == 0
    text = capsys.readouterr().out
    assert "context  tokens  loss" in text and "\n1x " in text and "\n2x " in text
    assert "loss by position at 1x" in text and "loss by position at 2x" in text
    assert text.strip().splitlines()[-1] == f"saved in {tmp_path / 'eval.json'}"
    assert run("eval", tmp_path, "--multipliers", "1", "2", "--windows", "2", "--device", "cpu", "--json") == 0
    assert set(json.loads(capsys.readouterr().out)["extrapolation"]) == {"1", "2"}


def test_a_default_with_a_percent_sign_is_shown_as_is():
    from posenc.flags import Parser

    p = Parser(prog="x")
    p.add_argument("--fmt", default="%d items", help="format")
    assert "format (default: %d items)" in p.format_help()

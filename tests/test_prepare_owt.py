"""examples/prepare_owt.py: one summary line, a no-op rerun, a data error as one line and exit 2."""

from __future__ import annotations

import subprocess
import sys

from _data_helpers import REPO
from _scripts import load_script


def load_cli():
    return load_script(REPO / "examples" / "prepare_owt.py", "prepare_owt")


def test_cli_prints_one_summary_line_and_reports_a_rerun(tmp_path, jsonl, capsys):
    cli = load_cli()
    argv = [
        "--data-files",
        str(jsonl),
        "--tokenizer",
        "bytes",
        "--out-dir",
        str(tmp_path / "out"),
        "--num-proc",
        "1",
        "--train-fraction",
        "0.8",
        "--val-fraction",
        "0.2",
        "--no-progress",
    ]
    assert cli.main(argv) == 0
    first = capsys.readouterr()
    assert first.err == "" and first.out.count("\n") == 1 and "train" in first.out and "val" in first.out
    assert cli.main(argv) == 0
    assert "already up to date" in capsys.readouterr().out


def test_cli_turns_a_data_error_into_one_line_and_exit_code_2(tmp_path):
    proc = subprocess.run(
        [
            sys.executable,
            str(REPO / "examples" / "prepare_owt.py"),
            "--data-files",
            str(tmp_path / "nope.jsonl"),
            "--tokenizer",
            "bytes",
            "--out-dir",
            str(tmp_path / "out"),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    assert proc.stderr.strip().count("\n") == 0 and "nope.jsonl: data file not found" in proc.stderr

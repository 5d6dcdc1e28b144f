"""posenc.io: atomic_write replaces a file completely or not at all, whatever happens to the writer."""

from __future__ import annotations

import hashlib
import os
import signal
import stat
import time
from pathlib import Path

import pytest

from posenc.io import atomic_write, replace_durably, sha256_file


def temp_files(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith(".") and p.name.endswith(".tmp"))


@pytest.mark.parametrize(
    "data, expected",
    [
        (b"\x00\xffbinary", b"\x00\xffbinary"),
        ("Ünïcödé 🙂\n", "Ünïcödé 🙂\n".encode()),
        (lambda f: (f.write(b"piece one, "), f.write(b"piece two")), b"piece one, piece two"),
    ],
    ids=["bytes", "str", "callable"],
)
def test_atomic_write_replaces_the_content_and_leaves_no_temp_file(tmp_path, data, expected):
    path = tmp_path / "file.bin"
    path.write_bytes(b"old content")
    assert atomic_write(path, data) == path
    assert path.read_bytes() == expected
    assert temp_files(tmp_path) == []
    assert atomic_write(tmp_path / "new.bin", data).read_bytes() == expected  # no previous file


@pytest.mark.parametrize("error", [RuntimeError("writer failed"), KeyboardInterrupt()], ids=["exception", "ctrl-c"])
def test_a_failing_writer_keeps_the_old_content_and_removes_its_temp_file(tmp_path, error):
    path = tmp_path / "file.bin"
    path.write_bytes(b"old content")

    def writer(f):
        f.write(b"half of the new")
        f.flush()  # the temporary file really holds bytes when the writer fails
        assert temp_files(tmp_path), "the bytes go to a temporary file beside the target"
        raise error

    with pytest.raises(type(error)):
        atomic_write(path, writer)
    assert path.read_bytes() == b"old content"
    assert temp_files(tmp_path) == []


def test_a_failed_rename_keeps_the_old_content_and_removes_the_temp_file(tmp_path):
    target = tmp_path / "a-folder"
    (target / "inside").mkdir(parents=True)  # os.replace cannot put a file over a non-empty folder
    with pytest.raises(OSError):
        atomic_write(target, b"new")
    assert (target / "inside").is_dir() and temp_files(tmp_path) == []


def test_unsupported_data_is_refused_before_anything_is_written(tmp_path):
    path = tmp_path / "file.bin"
    path.write_bytes(b"old content")
    with pytest.raises(TypeError, match="bytes, str or a callable writer, got int"):
        atomic_write(path, 123)
    assert path.read_bytes() == b"old content" and temp_files(tmp_path) == []


def test_the_new_file_gets_the_umask_permissions_of_open(tmp_path):
    plain = tmp_path / "plain"
    plain.write_bytes(b"")
    written = atomic_write(tmp_path / "atomic", b"")
    assert stat.S_IMODE(written.stat().st_mode) == stat.S_IMODE(plain.stat().st_mode)


def test_sha256_file_matches_hashlib_across_read_blocks(tmp_path):
    blob = os.urandom((1 << 20) * 2 + 123)  # three read blocks
    path = atomic_write(tmp_path / "blob", blob)
    assert sha256_file(path) == hashlib.sha256(blob).hexdigest()


def test_replace_durably_moves_the_file(tmp_path):
    (tmp_path / "a").write_bytes(b"new")
    (tmp_path / "b").write_bytes(b"old")
    replace_durably(tmp_path / "a", tmp_path / "b")
    assert (tmp_path / "b").read_bytes() == b"new" and not (tmp_path / "a").exists()


# ---------------------------------------------------------------------------------------------
# SIGKILL: no finally blocks run, so only the rename order protects the file

OLD, NEW = b"o" * (1 << 20), b"n" * (1 << 20)


def fork(child) -> int:
    """Run ``child()`` in a forked process that never returns into pytest; return its pid."""
    pid = os.fork()
    if pid == 0:
        try:
            child()
        finally:
            os._exit(0)
    return pid


def wait_killed(pid: int) -> None:
    _, status = os.waitpid(pid, 0)
    assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL, status


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_a_writer_killed_mid_write_leaves_the_old_content(tmp_path):
    path = tmp_path / "file.bin"
    path.write_bytes(OLD)

    def writer(f):
        f.write(NEW[: len(NEW) // 2])
        f.flush()
        os.kill(os.getpid(), signal.SIGKILL)

    wait_killed(fork(lambda: atomic_write(path, writer)))
    assert path.read_bytes() == OLD
    assert len(temp_files(tmp_path)) == 1, "a killed writer leaves its temporary file, named .<name>.*.tmp"
    assert temp_files(tmp_path)[0].startswith(".file.bin.")


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_a_writer_killed_at_any_moment_leaves_the_old_or_the_new_complete_content(tmp_path):
    path = tmp_path / "file.bin"
    path.write_bytes(OLD)

    def rewrite_forever():
        while True:
            for content in (NEW, OLD):
                atomic_write(path, lambda f, c=content: [f.write(c[i : i + 65536]) for i in range(0, len(c), 65536)])

    for delay in (0.0, 0.002, 0.005, 0.01, 0.02, 0.05):
        pid = fork(rewrite_forever)
        time.sleep(delay)
        os.kill(pid, signal.SIGKILL)
        wait_killed(pid)
        content = path.read_bytes()
        assert content in (OLD, NEW), f"torn file after a kill at {delay}s: {len(content)} bytes"
    assert len(temp_files(tmp_path)) <= 6  # at most one per killed writer

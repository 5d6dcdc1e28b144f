"""Crash-safe file writes and file digests.

:func:`atomic_write` is the one way the library writes a file: the bytes go to a temporary file in
the same folder (``.<name>.<pid>-<random>.tmp``), which is flushed, fsynced and renamed over the
target, and the rename is made durable by an fsync of the folder. A reader therefore sees the old
file or the complete new one, never a mix, even when the writing process is killed; a killed
writer can leave its temporary file behind (the name above, so it can be found and removed), an
exception never does.
"""

from __future__ import annotations

import hashlib
import os
import secrets
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

Writer = Callable[[BinaryIO], object]


def fsync_dir(folder: str | os.PathLike[str]) -> None:
    """Make a rename inside ``folder`` durable (a no-op where directories cannot be opened)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def replace_durably(tmp: str | os.PathLike[str], final: str | os.PathLike[str]) -> None:
    """Atomically move a fully written (and fsynced) ``tmp`` over ``final``, durably."""
    os.replace(tmp, final)
    fsync_dir(Path(final).parent)


def sha256_file(path: str | os.PathLike[str]) -> str:
    """Hex sha256 of the file at ``path``, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def temp_path(path: str | os.PathLike[str]) -> Path:
    """A fresh temporary name beside ``path``: ``.<name>.<pid>-<random>.tmp``."""
    final = Path(path)
    return final.with_name(f".{final.name}.{os.getpid()}-{secrets.token_hex(4)}.tmp")


def atomic_write(path: str | os.PathLike[str], data: bytes | str | Writer) -> Path:
    """Replace the file at ``path`` with ``data`` so that no reader or crash sees a partial file.

    ``data`` is ``bytes``, ``str`` (written as UTF-8) or a callable that receives the binary file
    object and writes to it (for content produced piecewise: a token stream, ``torch.save``).
    On any exception, the callable's included, the temporary file is removed, ``path`` keeps its
    old content and the exception propagates. Returns ``path`` as a :class:`~pathlib.Path`.
    """
    if isinstance(data, str):
        data = data.encode("utf-8")
    if not isinstance(data, (bytes, bytearray, memoryview)) and not callable(data):
        raise TypeError(f"atomic_write: data must be bytes, str or a callable writer, got {type(data).__name__}")
    final = Path(path)
    tmp = temp_path(final)
    # O_EXCL: never write into someone else's file; 0o666 lets the umask decide, as open() does.
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666)
    try:
        with os.fdopen(fd, "wb") as f:
            if callable(data):
                data(f)
            else:
                f.write(data)
            f.flush()
            os.fsync(f.fileno())
        replace_durably(tmp, final)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return final

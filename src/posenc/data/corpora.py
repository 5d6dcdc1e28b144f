"""Corpora (``source``) and the document split.

- ``"owt"``: OpenWebText from the Hugging Face hub (``Skylion007/openwebtext``).
- ``"files"``: local ``.jsonl``/``.json`` or ``.parquet`` files with a ``text`` field, or ``.txt``
  files, *one document per file* (prose documents span many lines, so a line is no document).
  They are read with the same ``datasets`` builders and split by the same code as ``"owt"``; a
  local copy of OpenWebText therefore gives the study's data.
- ``"embedded"``: :func:`embedded_documents`, the Python standard library's documentation topics
  and source files: no download, no network, any machine with Python.

Split (:func:`split_documents`): the documents are shuffled with
``np.random.default_rng(seed).permutation(n)``; the first ``floor(n * train_fraction)`` documents
of that order are the training split, the next ``floor(n * val_fraction)`` the validation split
(when the two fractions sum to 1 the training split takes every remaining document). Defaults
(:data:`DEFAULT_FRACTIONS`): the study's 10% / 0.1% for ``"owt"`` and ``"files"``; 98% / 2% of
every document for ``"embedded"``.
"""

from __future__ import annotations

import functools
import math
import os
import sysconfig
import tokenize
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal, Protocol

import numpy as np

from posenc.data import network
from posenc.data.errors import DataError

Source = Literal["owt", "embedded", "files"]

OWT_DATASET = "Skylion007/openwebtext"
#: (train, val) fractions of documents when ``prepare`` is given none.
DEFAULT_FRACTIONS: dict[str, tuple[float, float]] = {
    "owt": (0.10, 0.001),  # the study
    "files": (0.10, 0.001),  # same as owt: a local OpenWebText copy must give the study's split
    "embedded": (0.98, 0.02),  # small corpus: use all of it
}
EMBEDDED_MIN_BYTES = 5_000_000

_OFFLINE_HINT = (
    "offline alternatives: local files (posenc.data.prepare(..., source='files', data_files=[...])) "
    "or the embedded corpus (posenc.data.prepare(..., source='embedded'))"
)


# ---------------------------------------------------------------------------------------------
# Embedded corpus

# Directories of the standard library left out of the embedded corpus: installed third-party
# packages, test suites (they embed odd encodings and binary-like data), compiled caches, the
# codec tables of ``encodings`` (numbers, not language) and ``pydoc_data`` (added as topics).
_STDLIB_SKIP_DIRS = frozenset(
    {"site-packages", "dist-packages", "test", "tests", "idle_test", "__pycache__", "pydoc_data", "encodings"}
)


def _stdlib_source_files(root: Path) -> list[Path]:
    files = []
    for path in root.rglob("*.py"):
        rel = path.relative_to(root)
        dirs = rel.parts[:-1]
        if any(d in _STDLIB_SKIP_DIRS or d.startswith("config-") for d in dirs):
            continue
        if rel.name.startswith("_sysconfigdata"):  # build paths of this machine
            continue
        files.append(path)
    return sorted(files, key=lambda p: p.relative_to(root).as_posix())


@functools.lru_cache(maxsize=1)
def _embedded_corpus() -> tuple[str, ...]:
    from pydoc_data.topics import topics

    docs = [topics[key] for key in sorted(topics)]
    root = Path(sysconfig.get_path("stdlib"))
    for path in _stdlib_source_files(root):
        try:
            with tokenize.open(path) as f:  # honours PEP 263 coding cookies
                docs.append(f.read())
        except (OSError, SyntaxError, UnicodeDecodeError):
            continue
    docs = [d.replace("\0", "") for d in docs]
    docs = [d for d in docs if d.strip()]
    size = sum(len(d.encode("utf-8")) for d in docs)
    if size < EMBEDDED_MIN_BYTES:
        raise DataError(
            f"the embedded corpus from {root} has {size:,} bytes, under {EMBEDDED_MIN_BYTES:,}: "
            "this Python installation lacks its standard-library sources; use local files instead "
            "(posenc.data.prepare(..., source='files', data_files=[...]))"
        )
    return tuple(docs)


def embedded_documents() -> list[str]:
    """The offline corpus: ``pydoc_data.topics`` texts (sorted by topic), then the standard
    library's ``.py`` files (sorted by path; tests, site-packages and codec tables left out).

    Deterministic for a given Python installation, at least 5 MB of UTF-8, no NUL characters, no
    empty documents; every call returns an equal (fresh) list.
    """
    return list(_embedded_corpus())


# ---------------------------------------------------------------------------------------------
# Corpus objects: a length and texts by index, picklable for the tokenizer processes


class Corpus(Protocol):
    def __len__(self) -> int: ...

    def texts(self, indices: np.ndarray) -> list[str]: ...


class ListCorpus:
    def __init__(self, docs: Sequence[str]) -> None:
        self.docs = docs

    def __len__(self) -> int:
        return len(self.docs)

    def texts(self, indices: np.ndarray) -> list[str]:
        return [self.docs[int(i)] for i in indices]


class DatasetCorpus:
    """A Hugging Face ``Dataset`` with a ``text`` column; pickles by reference to its arrow files."""

    def __init__(self, dataset: Any, origin: str) -> None:
        self.dataset = dataset
        self.origin = origin

    def __len__(self) -> int:
        return len(self.dataset)

    def texts(self, indices: np.ndarray) -> list[str]:
        texts = self.dataset[[int(i) for i in indices]]["text"]
        for i, t in zip(indices, texts):
            if not isinstance(t, str):
                raise DataError(f"{self.origin}: document {int(i)} has no text (text is {t!r})")
        return texts


# ---------------------------------------------------------------------------------------------
# Hugging Face datasets: OpenWebText and local files


def _import_datasets(purpose: str) -> Any:
    try:
        import datasets
    except ImportError as e:
        raise DataError(
            f"{purpose} needs the Hugging Face 'datasets' package: pip install 'posenc[train]' "
            "(or pip install datasets); the embedded corpus (source='embedded') needs neither"
        ) from e
    return datasets


class _quiet_datasets:
    """Turns datasets' own progress bars off for the duration when progress is off."""

    def __init__(self, datasets: Any, progress: bool) -> None:
        self.datasets, self.progress, self.was_on = datasets, progress, True

    def __enter__(self) -> None:
        self.was_on = self.datasets.is_progress_bar_enabled()
        if not self.progress and self.was_on:
            self.datasets.disable_progress_bars()

    def __exit__(self, *exc: object) -> None:
        if not self.progress and self.was_on:
            self.datasets.enable_progress_bars()


def _hub_host() -> str:
    endpoint = os.environ.get("HF_ENDPOINT", "https://huggingface.co")
    return endpoint.split("://", 1)[-1].split("/", 1)[0].split(":", 1)[0]


def _hub_offline_mode() -> bool:
    return any(
        os.environ.get(v, "").upper() in {"1", "ON", "YES", "TRUE"} for v in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE")
    )


def load_owt(num_proc: int | None, progress: bool) -> DatasetCorpus:
    """OpenWebText's ``text`` column; :class:`DataError` within seconds when the hub is unreachable."""
    datasets = _import_datasets("source='owt'")
    # Without this probe an unreachable hub costs ~25 s of retries before datasets gives up.
    if not _hub_offline_mode() and not network.reachable(_hub_host()):
        raise DataError(
            f"{OWT_DATASET}: the Hugging Face hub ({_hub_host()}) cannot be reached; {_OFFLINE_HINT}; "
            "a copy already in the datasets cache loads with HF_HUB_OFFLINE=1"
        )
    try:
        with _quiet_datasets(datasets, progress):
            ds = datasets.load_dataset(OWT_DATASET, split="train", num_proc=num_proc)
    except Exception as e:  # hub, auth, cache or disk errors: one line with the way out
        raise DataError(
            f"{OWT_DATASET}: could not load from the Hugging Face hub ({type(e).__name__}: {e}); {_OFFLINE_HINT}"
        ) from None
    if "text" not in ds.column_names:
        raise DataError(f"{OWT_DATASET}: no 'text' column (columns: {ds.column_names})")
    return DatasetCorpus(ds.select_columns(["text"]), OWT_DATASET)


_FILE_BUILDERS = {".jsonl": "json", ".json": "json", ".parquet": "parquet", ".txt": "text"}


def resolve_files(data_files: Sequence[str | os.PathLike[str]] | str | os.PathLike[str] | None) -> list[Path]:
    """``data_files`` as absolute paths, checked: present, a supported suffix, one format."""
    if not data_files:
        raise DataError("source='files' needs data_files=[...] (.jsonl, .json, .parquet or .txt paths)")
    if isinstance(data_files, (str, os.PathLike)):
        data_files = [data_files]
    paths = [Path(p).expanduser().resolve() for p in data_files]
    for p in paths:
        if not p.is_file():
            raise DataError(f"{p}: data file not found")
        if p.suffix.lower() not in _FILE_BUILDERS:
            raise DataError(f"{p}: unsupported file type {p.suffix!r}; expected .jsonl, .json, .parquet or .txt")
    kinds = {_FILE_BUILDERS[p.suffix.lower()] for p in paths}
    if len(kinds) > 1:
        listing = ", ".join(f"{p.name} ({_FILE_BUILDERS[p.suffix.lower()]})" for p in paths[:6])
        raise DataError(f"data files mix formats: {listing}; pass files of one format")
    return paths


def load_files(paths: list[Path], progress: bool) -> DatasetCorpus:
    """The ``text`` field of local files checked by :func:`resolve_files` (``.txt``: one document each)."""
    datasets = _import_datasets("source='files'")
    builder = _FILE_BUILDERS[paths[0].suffix.lower()]
    kwargs: dict[str, Any] = {"sample_by": "document"} if builder == "text" else {}
    origin = str(paths[0]) if len(paths) == 1 else f"{paths[0]} (+{len(paths) - 1} files)"
    try:
        with _quiet_datasets(datasets, progress):
            ds = datasets.load_dataset(builder, data_files=[str(p) for p in paths], split="train", **kwargs)
    except Exception as e:  # malformed json, unreadable parquet, ...
        raise DataError(f"{origin}: cannot read as {builder} ({type(e).__name__}: {e})") from None
    if "text" not in ds.column_names:
        raise DataError(f"{origin}: no 'text' field (fields: {ds.column_names})")
    return DatasetCorpus(ds.select_columns(["text"]), origin)


# ---------------------------------------------------------------------------------------------
# Split


def split_documents(n: int, seed: int, train_fraction: float, val_fraction: float) -> dict[str, np.ndarray]:
    """Document indices of each split, in shard order (see the module docstring for the rule)."""
    for name, f in (("train_fraction", train_fraction), ("val_fraction", val_fraction)):
        if not (isinstance(f, (int, float)) and 0.0 < f <= 1.0):
            raise DataError(f"{name} must be in (0, 1], got {f!r}")
    if train_fraction + val_fraction > 1.0 + 1e-9:
        raise DataError(f"train_fraction + val_fraction must be <= 1, got {train_fraction} + {val_fraction}")
    order = np.random.default_rng(seed).permutation(n)
    eps = 1e-9  # 0.3 * 10 is 2.9999999999999996 in floating point
    n_val = math.floor(n * val_fraction + eps)
    if abs(train_fraction + val_fraction - 1.0) <= 1e-9:
        n_train = n - n_val
    else:
        n_train = math.floor(n * train_fraction + eps)
    return {"train": order[:n_train], "val": order[n_train : n_train + n_val]}

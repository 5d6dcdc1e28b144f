"""Pretraining data: corpora, tokenizers, flat token shards and their loader.

``prepare`` turns a corpus into ``train.bin`` and ``val.bin`` (flat token arrays that numpy can
memory-map, nanoGPT's format) plus ``meta.json``; ``load_split`` opens one shard after checking
it against the metadata. Training never re-tokenizes.

Corpora (``source``):

- ``"owt"``: OpenWebText from the Hugging Face hub (``Skylion007/openwebtext``).
- ``"files"``: local ``.jsonl``/``.json`` or ``.parquet`` files with a ``text`` field, or ``.txt``
  files, *one document per file* (prose documents span many lines, so a line is no document).
  They are read with the same ``datasets`` builders and split by the same code as ``"owt"``; a
  local copy of OpenWebText therefore gives the study's data.
- ``"embedded"``: :func:`embedded_documents`, the Python standard library's documentation topics
  and source files: no download, no network, any machine with Python.

Split: the documents are shuffled with ``np.random.default_rng(seed).permutation(n)``; the first
``floor(n * train_fraction)`` documents of that order are the training split, the next
``floor(n * val_fraction)`` the validation split (when the two fractions sum to 1 the training
split takes every remaining document). Defaults: the study's 10% / 0.1% for ``"owt"`` and
``"files"``; 98% / 2% of every document for ``"embedded"``. Shards keep the shuffled order.

Tokens: every document is encoded with ``encode_ordinary`` (text that spells ``<|endoftext|>`` is
ordinary text) and followed by the end-of-text id. Tokenizers: ``"gpt2"`` (GPT-2 BPE through
tiktoken, vocab 50257, EOT 50256) and ``"bytes"`` (UTF-8 bytes, vocab 256, EOT 0; the NUL
character is removed from documents because it is the separator).

Shard dtype: ``uint16`` only when every id of the vocabulary is below 65536, else ``uint32``.

Crash safety: every file is written to a temporary name and renamed into place; ``meta.json`` is
removed before the first shard changes and written last, so a folder with shards but no
``meta.json`` is a preparation that did not finish, and :func:`load_split` refuses it. A rerun with
the same inputs and options (recorded as a fingerprint in ``meta.json``) whose shards have the
recorded sizes writes nothing.

The module prints nothing except progress bars on stderr (``progress=True``).
"""

from __future__ import annotations

import functools
import hashlib
import json
import math
import multiprocessing
import os
import platform
import signal
import socket
import sys
import sysconfig
import threading
import tokenize
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, Literal, Protocol

import numpy as np

from posenc._io import fsync_dir, replace_durably, sha256_file

FORMAT_VERSION = 1
OWT_DATASET = "Skylion007/openwebtext"
SPLITS: tuple[str, ...] = ("train", "val")
#: (train, val) fractions of documents when ``prepare`` is given none.
DEFAULT_FRACTIONS: dict[str, tuple[float, float]] = {
    "owt": (0.10, 0.001),  # the study
    "files": (0.10, 0.001),  # same as owt: a local OpenWebText copy must give the study's split
    "embedded": (0.98, 0.02),  # small corpus: use all of it
}
EMBEDDED_MIN_BYTES = 5_000_000
META_NAME = "meta.json"

Source = Literal["owt", "embedded", "files"]
TokenizerName = Literal["gpt2", "bytes"]
DtypeName = Literal["auto", "uint16", "uint32"]
Split = Literal["train", "val"]

_OFFLINE_HINT = (
    "offline alternatives: local files with --data-files (prepare(source='files', data_files=[...])), "
    "or the embedded corpus with --dataset embedded (source='embedded')"
)


class DataError(ValueError):
    """A data problem: a missing, partial or mismatched file, an unusable input, a bad option.

    The message names the path (where there is one) and the reason.
    """


class TokenizerError(DataError):
    """The tokenizer cannot be loaded (its files are not cached and cannot be downloaded)."""


# ---------------------------------------------------------------------------------------------
# Tokenizers


class Tokenizer:
    """A text tokenizer: ``encode`` (no special tokens), ``decode`` and the end-of-text id."""

    name: str
    vocab_size: int
    eot: int

    def encode(self, text: str) -> list[int]:
        """Token ids of ``text``; special-token text is encoded as ordinary text."""
        raise NotImplementedError

    def decode(self, ids: Sequence[int]) -> str:
        """Text of ``ids``; the EOT id decodes to the tokenizer's end-of-text marker."""
        raise NotImplementedError

    def encode_documents(self, texts: Sequence[str]) -> np.ndarray:
        """All documents encoded, each followed by ``eot``, as one int64 array."""
        flat: list[int] = []
        for text in texts:
            flat.extend(self.encode(text))
            flat.append(self.eot)
        return np.array(flat, dtype=np.int64)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r}, vocab_size={self.vocab_size}, eot={self.eot})"

    def __reduce__(self) -> tuple[Any, ...]:
        # Worker processes rebuild the tokenizer from its name instead of pickling BPE tables.
        return (get_tokenizer, (self.name,))


class ByteTokenizer(Tokenizer):
    """UTF-8 bytes as tokens: vocab 256, EOT 0 (NUL, which is removed from documents)."""

    name = "bytes"
    vocab_size = 256
    eot = 0

    def encode(self, text: str) -> list[int]:
        """UTF-8 bytes of ``text`` with NUL removed (NUL is the document separator)."""
        return list(text.encode("utf-8").replace(b"\0", b""))

    def decode(self, ids: Sequence[int]) -> str:
        """Text of UTF-8 bytes ``ids``; NUL (EOT) decodes to ``"\\0"``; invalid UTF-8 to U+FFFD."""
        return bytes(bytearray(int(i) for i in ids)).decode("utf-8", errors="replace")

    def encode_documents(self, texts: Sequence[str]) -> np.ndarray:
        """All documents as bytes, each followed by 0, without a Python int per byte."""
        blob = b"".join(t.encode("utf-8").replace(b"\0", b"") + b"\0" for t in texts)
        return np.frombuffer(blob, dtype=np.uint8).astype(np.int64)


class GPT2Tokenizer(Tokenizer):
    """GPT-2 BPE via tiktoken's ``r50k_base`` (the same ranks and ids as tiktoken's ``gpt2``)."""

    name = "gpt2"
    vocab_size = 50257
    eot = 50256

    def __init__(self, encoding: Any) -> None:
        self._enc = encoding

    def encode(self, text: str) -> list[int]:
        """BPE ids of ``text`` (``encode_ordinary``: ``<|endoftext|>`` in text is ordinary text)."""
        return self._enc.encode_ordinary(text)

    def decode(self, ids: Sequence[int]) -> str:
        """Text of ``ids``; the EOT id decodes to ``<|endoftext|>``."""
        return self._enc.decode([int(i) for i in ids])

    def encode_documents(self, texts: Sequence[str]) -> np.ndarray:
        """All documents encoded, each followed by EOT (one thread: parallelism is per process)."""
        flat: list[int] = []
        for ids in self._enc.encode_ordinary_batch(list(texts), num_threads=1):
            flat.extend(ids)
            flat.append(self.eot)
        return np.array(flat, dtype=np.int64)


_TIKTOKEN_ENCODING = "r50k_base"
_TIKTOKEN_URL = "https://openaipublic.blob.core.windows.net/encodings/r50k_base.tiktoken"
_TIKTOKEN_HOST = "openaipublic.blob.core.windows.net"
#: Seconds allowed to resolve and connect to a download host before calling it unreachable.
_PROBE_TIMEOUT_S = 5.0


def _tiktoken_cache_file() -> Path | None:
    """Where tiktoken keeps the r50k ranks (its own lookup rule); None when caching is off."""
    if "TIKTOKEN_CACHE_DIR" in os.environ:
        cache_dir = os.environ["TIKTOKEN_CACHE_DIR"]
    elif "DATA_GYM_CACHE_DIR" in os.environ:
        cache_dir = os.environ["DATA_GYM_CACHE_DIR"]
    else:
        import tempfile

        cache_dir = os.path.join(tempfile.gettempdir(), "data-gym-cache")
    if cache_dir == "":
        return None
    return Path(cache_dir) / hashlib.sha1(_TIKTOKEN_URL.encode()).hexdigest()


def _reachable(host: str, port: int = 443, timeout: float | None = None) -> bool:
    """Whether a TCP connection to ``host`` opens within ``timeout`` seconds, DNS included.

    Runs in a daemon thread because name resolution ignores socket timeouts; a resolver that
    hangs therefore costs ``timeout`` seconds, not minutes.
    """
    timeout = _PROBE_TIMEOUT_S if timeout is None else timeout
    result: list[bool] = []

    def probe() -> None:
        try:
            with socket.create_connection((host, port), timeout=timeout):
                result.append(True)
        except OSError:
            result.append(False)

    thread = threading.Thread(target=probe, name=f"posenc-probe-{host}", daemon=True)
    thread.start()
    thread.join(timeout)
    return bool(result and result[0])


def _gpt2_encoding() -> Any:
    try:
        import tiktoken
    except ImportError as e:
        raise TokenizerError("the gpt2 tokenizer needs tiktoken: pip install tiktoken") from e
    cache_file = _tiktoken_cache_file()
    hint = (
        f"set TIKTOKEN_CACHE_DIR to a folder holding tiktoken's {_TIKTOKEN_ENCODING} ranks "
        f"(file {cache_file.name if cache_file else '<sha1 of the URL>'}, downloaded from {_TIKTOKEN_URL}), "
        "or use the byte-level tokenizer, which needs no files: --tokenizer bytes (get_tokenizer('bytes'))"
    )
    if (cache_file is None or not cache_file.is_file()) and not _reachable(_TIKTOKEN_HOST):
        where = f"not in the cache ({cache_file})" if cache_file else "not cached (TIKTOKEN_CACHE_DIR is empty)"
        raise TokenizerError(
            f"GPT-2 BPE ranks are {where} and {_TIKTOKEN_HOST} cannot be reached; {hint}"
        ) from None
    try:
        return tiktoken.get_encoding(_TIKTOKEN_ENCODING)  # tiktoken keeps it for the next call
    except Exception as e:  # a download or hash failure: report it, not the HTTP stack
        raise TokenizerError(
            f"could not load the GPT-2 BPE ranks ({type(e).__name__}: {e}); {hint}"
        ) from None


def get_tokenizer(name: TokenizerName) -> Tokenizer:
    """The tokenizer called ``name``: ``"gpt2"`` (GPT-2 BPE) or ``"bytes"`` (UTF-8 bytes).

    ``"gpt2"`` reads tiktoken's cached ranks (``TIKTOKEN_CACHE_DIR``) or downloads them; when
    neither works it raises :class:`TokenizerError` within a few seconds.
    """
    if name == "bytes":
        return ByteTokenizer()
    if name == "gpt2":
        return GPT2Tokenizer(_gpt2_encoding())
    raise DataError(f"unknown tokenizer {name!r}; expected 'gpt2' or 'bytes'")


def shard_dtype(vocab_size: int, requested: DtypeName = "auto") -> np.dtype:
    """The shard dtype for a vocabulary: ``uint16`` when every id fits (vocab <= 65536), else ``uint32``.

    ``requested="uint16"`` for a larger vocabulary raises :class:`DataError` rather than wrap ids.
    """
    if isinstance(vocab_size, bool) or not isinstance(vocab_size, (int, np.integer)) or vocab_size <= 0:
        raise DataError(f"vocab_size must be a positive int, got {vocab_size!r}")
    if vocab_size > 2**32:
        raise DataError(f"vocab_size {vocab_size} does not fit uint32 token ids")
    fits16 = vocab_size <= 2**16  # largest id is vocab_size - 1
    if requested == "auto":
        return np.dtype(np.uint16 if fits16 else np.uint32)
    if requested == "uint16":
        if not fits16:
            raise DataError(
                f"dtype uint16 requested for vocab_size {vocab_size}: ids up to {vocab_size - 1} "
                "do not fit below 65536; use uint32 (or 'auto')"
            )
        return np.dtype(np.uint16)
    if requested == "uint32":
        return np.dtype(np.uint32)
    raise DataError(f"unknown dtype {requested!r}; expected 'auto', 'uint16' or 'uint32'")


# ---------------------------------------------------------------------------------------------
# Corpora

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
            "this Python installation lacks its standard-library sources; use --data-files instead"
        )
    return tuple(docs)


def embedded_documents() -> list[str]:
    """The offline corpus: ``pydoc_data.topics`` texts (sorted by topic), then the standard
    library's ``.py`` files (sorted by path; tests, site-packages and codec tables left out).

    Deterministic for a given Python installation, at least 5 MB of UTF-8, no NUL characters, no
    empty documents; every call returns an equal (fresh) list.
    """
    return list(_embedded_corpus())


class _Corpus(Protocol):
    def __len__(self) -> int: ...

    def texts(self, indices: np.ndarray) -> list[str]: ...


class _ListCorpus:
    def __init__(self, docs: Sequence[str]) -> None:
        self.docs = docs

    def __len__(self) -> int:
        return len(self.docs)

    def texts(self, indices: np.ndarray) -> list[str]:
        return [self.docs[int(i)] for i in indices]


class _DatasetCorpus:
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


def _import_datasets(purpose: str) -> Any:
    try:
        import datasets
    except ImportError as e:
        raise DataError(
            f"{purpose} needs the Hugging Face 'datasets' package: pip install 'posenc[train]' "
            "(or pip install datasets); the embedded corpus (--dataset embedded) needs neither"
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
    return any(os.environ.get(v, "").upper() in {"1", "ON", "YES", "TRUE"} for v in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"))


def _load_owt(num_proc: int | None, progress: bool) -> _DatasetCorpus:
    datasets = _import_datasets("--dataset owt")
    # Without this probe an unreachable hub costs ~25 s of retries before datasets gives up.
    if not _hub_offline_mode() and not _reachable(_hub_host()):
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
    return _DatasetCorpus(ds.select_columns(["text"]), OWT_DATASET)


_FILE_BUILDERS = {".jsonl": "json", ".json": "json", ".parquet": "parquet", ".txt": "text"}


def _resolve_files(data_files: Sequence[str | os.PathLike[str]] | None) -> list[Path]:
    if not data_files:
        raise DataError("source='files' needs data_files (--data-files a.jsonl b.jsonl ...)")
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


def _load_files(paths: list[Path], progress: bool) -> _DatasetCorpus:
    datasets = _import_datasets("--data-files")
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
    return _DatasetCorpus(ds.select_columns(["text"]), origin)


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


# ---------------------------------------------------------------------------------------------
# Tokenizing in parallel

_worker_encoder: _Encoder | None = None


class _Encoder:
    """Documents -> checked shard-dtype tokens; runs in the workers so that only compact arrays
    travel back to the writer."""

    def __init__(self, corpus: _Corpus, tokenizer: Tokenizer, dtype: np.dtype) -> None:
        self.corpus, self.tokenizer, self.dtype = corpus, tokenizer, dtype

    def __call__(self, indices: np.ndarray) -> tuple[np.ndarray, int, int]:
        ids = self.tokenizer.encode_documents(self.corpus.texts(indices))
        top = -1
        if ids.size:
            top, low = int(ids.max()), int(ids.min())
            # The dtype was chosen from vocab_size; an id outside it would wrap silently.
            if low < 0 or top >= self.tokenizer.vocab_size:
                bad = low if low < 0 else top
                raise DataError(
                    f"tokenizer {self.tokenizer.name!r} produced id {bad} outside [0, {self.tokenizer.vocab_size})"
                )
        return ids.astype(self.dtype), len(indices), top


def _init_worker(encoder: _Encoder) -> None:
    global _worker_encoder
    _worker_encoder = encoder
    # A forked worker inherits the parent's handlers (the training script catches SIGTERM to stop
    # at a step boundary); Pool.terminate() must kill workers, and Ctrl-C is the parent's to handle.
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def _run_worker(indices: np.ndarray) -> tuple[np.ndarray, int, int]:
    if _worker_encoder is None:
        raise RuntimeError("worker started without _init_worker")
    return _worker_encoder(indices)


def _chunks(indices: np.ndarray, workers: int) -> list[np.ndarray]:
    # Small chunks keep every worker busy and the progress bar moving; big ones amortize IPC.
    size = max(1, min(512, len(indices) // (4 * workers) or 1))
    return [indices[i : i + size] for i in range(0, len(indices), size)]


_POOL_MIN_DOCS = 64  # below this, starting processes costs more than it saves


class _Progress:
    """tqdm when installed, else a line to stderr every 10%; nothing when disabled."""

    def __init__(self, total: int, desc: str, enabled: bool) -> None:
        self.total, self.desc, self.enabled, self.done, self.next_report = total, desc, enabled, 0, 0.1
        self.bar: Any = None
        if enabled:
            try:
                from tqdm.auto import tqdm
            except ImportError:
                tqdm = None
            if tqdm is not None:
                self.bar = tqdm(total=total, desc=desc, unit="doc", file=sys.stderr, dynamic_ncols=True)

    def update(self, n: int) -> None:
        self.done += n
        if self.bar is not None:
            self.bar.update(n)
        elif self.enabled and self.total and self.done / self.total >= self.next_report:
            print(f"{self.desc}: {self.done:,}/{self.total:,} documents", file=sys.stderr, flush=True)
            self.next_report = math.floor(self.done / self.total * 10 + 1) / 10

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def _encoded_chunks(encoder: _Encoder, chunks: list[np.ndarray], pool: Any) -> Iterator[tuple[np.ndarray, int, int]]:
    if pool is None:
        return map(encoder, chunks)
    return pool.imap(_run_worker, chunks)  # ordered: shards must not depend on the worker count


def _mp_context() -> Any:
    # fork needs no re-import of __main__, so a straight-line script without a main guard works.
    methods = multiprocessing.get_all_start_methods()
    return multiprocessing.get_context("fork" if "fork" in methods else None)


# ---------------------------------------------------------------------------------------------
# Files

#: Test hook: called with a step name before every write step; lets tests interrupt preparation.
_step_hook: Callable[[str], None] | None = None


def _step(name: str) -> None:
    if _step_hook is not None:
        _step_hook(name)


def _tmp_path(final: Path) -> Path:
    return final.with_name(f".{final.name}.{os.getpid()}.tmp")


def _stale_tmp_files(folder: Path) -> list[Path]:
    names = [f"{s}.bin" for s in SPLITS] + [META_NAME]
    return sorted(p for n in names for p in folder.glob(f".{n}.*.tmp"))


def _write_shard(
    path: Path,
    split: str,
    indices: np.ndarray,
    encoder: _Encoder,
    pool: Any,
    workers: int,
    progress: bool,
) -> dict[str, Any]:
    digest, tokens, documents, max_id = hashlib.sha256(), 0, 0, -1
    tmp = _tmp_path(path)
    bar = _Progress(len(indices), f"tokenizing {split}", progress)
    try:
        with open(tmp, "wb") as f:
            for ids, n_docs, top in _encoded_chunks(encoder, _chunks(indices, workers), pool):
                max_id = max(max_id, top)
                data = ids.tobytes()
                _step(f"{split}:chunk")
                f.write(data)
                digest.update(data)
                tokens += ids.size
                documents += n_docs
                bar.update(n_docs)
            f.flush()
            os.fsync(f.fileno())
        _step(f"{split}:written")
        replace_durably(tmp, path)
        _step(f"{split}:replaced")
    except OSError as e:  # disk full, permissions: a data problem, reported with the path
        raise DataError(f"{path}: cannot write the shard ({e.strerror or e})") from None
    finally:
        bar.close()
        tmp.unlink(missing_ok=True)
    return {
        "tokens": tokens,
        "documents": documents,
        "max_id": max_id,
        "sha256": digest.hexdigest(),
        "bytes": tokens * encoder.dtype.itemsize,
    }


def _write_json(path: Path, obj: dict[str, Any]) -> None:
    tmp = _tmp_path(path)
    try:
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(obj, f, indent=2, sort_keys=True)
            f.write("\n")
            f.flush()
            os.fsync(f.fileno())
        _step("meta:written")
        replace_durably(tmp, path)
    except OSError as e:
        raise DataError(f"{path}: cannot write the metadata ({e.strerror or e})") from None
    finally:
        tmp.unlink(missing_ok=True)


def _read_meta_file(path: Path) -> dict[str, Any]:
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise DataError(f"{path}: unreadable metadata ({type(e).__name__}: {e}); prepare the folder again") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT_VERSION:
        found = meta.get("format") if isinstance(meta, dict) else type(meta).__name__
        raise DataError(f"{path}: metadata format {found!r}, expected {FORMAT_VERSION}; prepare the folder again")
    splits = meta.get("splits")
    if not isinstance(splits, dict) or any(not isinstance(splits.get(s), dict) for s in SPLITS):
        raise DataError(f"{path}: metadata lacks the 'train'/'val' split records; prepare the folder again")
    return meta


def _up_to_date(folder: Path, fingerprint: str) -> bool:
    meta_path = folder / META_NAME
    if not meta_path.is_file():
        return False
    try:
        meta = _read_meta_file(meta_path)
    except DataError:
        return False
    if meta.get("inputs") != fingerprint:
        return False
    for split in SPLITS:
        shard = folder / f"{split}.bin"
        if not shard.is_file() or shard.stat().st_size != meta["splits"][split].get("bytes"):
            return False
    return True


def _documents_digest(docs: Sequence[str]) -> str:
    digest = hashlib.sha256()
    for d in docs:
        data = d.encode("utf-8")
        digest.update(len(data).to_bytes(8, "little"))
        digest.update(data)
    return digest.hexdigest()


# ---------------------------------------------------------------------------------------------
# Public: prepare and load


def prepare(
    out_dir: str | os.PathLike[str],
    *,
    source: Source = "embedded",
    data_files: Sequence[str | os.PathLike[str]] | None = None,
    tokenizer: TokenizerName = "gpt2",
    seed: int = 2357,
    num_proc: int | None = None,
    train_fraction: float | None = None,
    val_fraction: float | None = None,
    dtype: DtypeName = "auto",
    progress: bool = True,
) -> Path:
    """Tokenize a corpus into ``out_dir/{train,val}.bin`` and ``out_dir/meta.json``; return ``out_dir``.

    ``source`` picks the corpus (``"owt"``, ``"files"`` with ``data_files``, ``"embedded"``);
    ``train_fraction``/``val_fraction`` default to the source's split (:data:`DEFAULT_FRACTIONS`).
    ``num_proc`` worker processes tokenize (default: the CPU count, at most 8); the shards do not
    depend on it. ``dtype`` ``"auto"`` picks uint16 when the vocabulary allows, else uint32.

    Does nothing when ``meta.json`` records the same inputs and options and the shards have the
    recorded sizes. Raises :class:`DataError` (or :class:`TokenizerError`) naming the path and the
    reason; an interrupted call leaves a folder that :func:`load_split` refuses until a rerun.
    """
    if source not in DEFAULT_FRACTIONS:
        raise DataError(f"unknown source {source!r}; expected 'owt', 'embedded' or 'files'")
    if source != "files" and data_files:
        raise DataError(f"data_files are read only with source='files', not source={source!r}")
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise DataError(f"seed must be a non-negative int, got {seed!r}")
    if num_proc is not None and (isinstance(num_proc, bool) or not isinstance(num_proc, int) or num_proc < 1):
        raise DataError(f"num_proc must be a positive int or None, got {num_proc!r}")
    default_train, default_val = DEFAULT_FRACTIONS[source]
    fractions = {
        "train": default_train if train_fraction is None else train_fraction,
        "val": default_val if val_fraction is None else val_fraction,
    }
    tok = get_tokenizer(tokenizer)
    np_dtype = shard_dtype(tok.vocab_size, dtype)
    folder = Path(out_dir).expanduser()

    # What the shards depend on, known without loading the corpus where possible (owt, files).
    inputs: dict[str, Any] = {
        "format": FORMAT_VERSION,
        "source": source,
        "tokenizer": tok.name,
        "dtype": np_dtype.name,
        "seed": seed,
        "fractions": fractions,
    }
    meta_extra: dict[str, Any] = {}
    docs: list[str] | None = None
    paths: list[Path] = []
    if source == "embedded":
        docs = embedded_documents()
        meta_extra["python"] = platform.python_version()
        inputs["python"] = meta_extra["python"]
        inputs["documents_sha256"] = _documents_digest(docs)
    elif source == "files":
        paths = _resolve_files(data_files)
        meta_extra["data_files"] = [str(p) for p in paths]
        inputs["data_files"] = [[str(p), p.stat().st_size, p.stat().st_mtime_ns] for p in paths]
    else:
        meta_extra["dataset"] = OWT_DATASET
        inputs["dataset"] = OWT_DATASET
    fingerprint = hashlib.sha256(json.dumps(inputs, sort_keys=True).encode()).hexdigest()
    if _up_to_date(folder, fingerprint):
        return folder

    corpus: _Corpus
    if docs is not None:
        corpus = _ListCorpus(docs)
    elif source == "files":
        corpus = _load_files(paths, progress)
    else:
        corpus = _load_owt(num_proc, progress)
    n_docs = len(corpus)
    order = split_documents(n_docs, seed, fractions["train"], fractions["val"])
    for split in SPLITS:
        if len(order[split]) == 0:
            raise DataError(
                f"{source}: {n_docs} documents with {split}_fraction={fractions[split]} give an empty "
                f"{split} split; use more documents or a larger fraction"
            )

    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise DataError(f"{folder}: cannot create the output folder ({e.strerror})") from None
    # From here on the folder is in preparation: no meta.json until the end.
    _step("start")
    (folder / META_NAME).unlink(missing_ok=True)
    fsync_dir(folder)
    for stale in _stale_tmp_files(folder):
        stale.unlink(missing_ok=True)

    workers = num_proc or max(1, min(os.cpu_count() or 1, 8))
    encoder = _Encoder(corpus, tok, np_dtype)
    pool = None
    if workers > 1 and n_docs >= _POOL_MIN_DOCS:
        pool = _mp_context().Pool(workers, initializer=_init_worker, initargs=(encoder,))
    try:
        splits = {
            split: _write_shard(folder / f"{split}.bin", split, order[split], encoder, pool, workers, progress)
            for split in SPLITS
        }
    finally:
        if pool is not None:
            pool.terminate()
            pool.join()

    meta = {
        "format": FORMAT_VERSION,
        "tokenizer": tok.name,
        "vocab_size": tok.vocab_size,
        "eot": tok.eot,
        "dtype": np_dtype.name,
        "source": source,
        "seed": seed,
        "fractions": fractions,
        "documents": n_docs,
        "splits": splits,
        "inputs": fingerprint,
        **meta_extra,
    }
    _write_json(folder / META_NAME, meta)
    return folder


def read_meta(data_dir: str | os.PathLike[str]) -> dict[str, Any]:
    """The ``meta.json`` of a prepared folder (tokenizer, vocab_size, eot, dtype, splits, ...).

    Raises :class:`DataError` when it is missing (never prepared, or preparation interrupted) or
    unreadable.
    """
    folder = Path(data_dir).expanduser()
    meta_path = folder / META_NAME
    if not meta_path.is_file():
        leftovers = [p.name for p in (folder / f"{s}.bin" for s in SPLITS) if p.exists()]
        leftovers += [p.name for p in _stale_tmp_files(folder)] if folder.is_dir() else []
        if leftovers:
            raise DataError(
                f"{meta_path}: missing; the preparation of {folder} was interrupted (found {', '.join(leftovers)} "
                "without metadata); run the same examples/prepare_owt.py command again to finish it"
            )
        raise DataError(
            f"{meta_path}: missing; {folder} is not a prepared data folder: run examples/prepare_owt.py "
            f"--out-dir {folder} (e.g. --dataset embedded --tokenizer bytes for an offline corpus)"
        )
    return _read_meta_file(meta_path)


def load_split(
    data_dir: str | os.PathLike[str],
    split: Split,
    *,
    vocab_size: int | None = None,
    block_size: int | None = None,
    verify: bool = False,
) -> np.memmap:
    """The tokens of ``split`` (``"train"`` or ``"val"``) as a read-only 1-D memmap.

    Refuses with :class:`DataError` (path and reason): a folder without ``meta.json`` (never
    prepared, or preparation interrupted), a missing shard, a shard whose size differs from the
    metadata (partial or truncated), a largest id >= ``vocab_size`` (the model's), fewer than
    ``block_size + 1`` tokens, and with ``verify=True`` a sha256 mismatch.
    """
    if split not in SPLITS:
        raise DataError(f"unknown split {split!r}; expected 'train' or 'val'")
    folder = Path(data_dir).expanduser()
    meta = read_meta(folder)
    meta_path = folder / META_NAME
    record = meta["splits"][split]
    path = folder / f"{split}.bin"
    try:
        dtype = np.dtype(meta["dtype"])
        tokens, expected_bytes, max_id = int(record["tokens"]), int(record["bytes"]), int(record["max_id"])
        meta_vocab = int(meta["vocab_size"])
    except (KeyError, TypeError, ValueError) as e:
        raise DataError(f"{meta_path}: malformed metadata ({type(e).__name__}: {e}); prepare the folder again") from None
    if dtype not in (np.dtype(np.uint16), np.dtype(np.uint32)):
        raise DataError(f"{meta_path}: dtype {dtype.name!r}, expected uint16 or uint32")
    if dtype == np.uint16 and (meta_vocab > 2**16 or max_id >= 2**16):
        raise DataError(f"{meta_path}: uint16 shards for vocab_size {meta_vocab} (max id {max_id}) cannot hold every id")
    if expected_bytes != tokens * dtype.itemsize:
        raise DataError(f"{meta_path}: {split} records {tokens} tokens but {expected_bytes} bytes")
    if not path.is_file():
        raise DataError(f"{path}: shard missing (meta.json records {tokens:,} tokens); prepare the folder again")
    size = path.stat().st_size
    if size != expected_bytes:
        raise DataError(
            f"{path}: {size:,} bytes but meta.json records {expected_bytes:,} ({tokens:,} {dtype.name} tokens): "
            "the shard is partial or truncated; prepare the folder again"
        )
    if vocab_size is not None and max_id >= vocab_size:
        raise DataError(
            f"{path}: token ids up to {max_id} ({meta.get('tokenizer')} tokenizer) but the model's vocab_size "
            f"is {vocab_size}; use a model vocabulary > {max_id} or the matching tokenizer"
        )
    if block_size is not None and tokens < block_size + 1:
        raise DataError(
            f"{path}: {tokens:,} tokens, fewer than block_size + 1 = {block_size + 1}; "
            "use a smaller block_size or a larger split"
        )
    if tokens == 0:
        raise DataError(f"{path}: the {split} split is empty")
    if verify:
        actual = sha256_file(path)
        if actual != record.get("sha256"):
            raise DataError(f"{path}: sha256 {actual} does not match meta.json ({record.get('sha256')}): the shard changed")
    return np.memmap(path, dtype=dtype, mode="r", shape=(tokens,))

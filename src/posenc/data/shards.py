"""Flat token shards: ``prepare`` writes them, ``load_split`` opens them after checking them.

``prepare`` turns a corpus (:mod:`posenc.data.corpora`) into ``train.bin`` and ``val.bin`` (flat
token arrays that numpy can memory-map, nanoGPT's format) plus ``meta.json``. The shards keep the
shuffled document order of :func:`~posenc.data.corpora.split_documents`; every document is
followed by the end-of-text id (:mod:`posenc.data.tokenizers`). Training never re-tokenizes.

Shard dtype: ``uint16`` only when every id of the vocabulary is below 65536, else ``uint32``.

Crash safety: every file is written with :func:`posenc.io.atomic_write`; ``meta.json`` is removed
before the first shard changes and written last, so a folder with shards but no ``meta.json`` is a
preparation that did not finish, and :func:`load_split` refuses it. A rerun with the same inputs
and options (recorded as a fingerprint in ``meta.json``) whose shards have the recorded sizes
writes nothing.

Tokenizing runs in ``num_proc`` worker processes (:mod:`posenc.data.workers`); the shards do not
depend on their number. Nothing is printed except progress bars on stderr (``progress=True``).
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import IO, Any, Literal

import numpy as np

from posenc.data.corpora import (
    DEFAULT_FRACTIONS,
    OWT_DATASET,
    Corpus,
    ListCorpus,
    Source,
    embedded_documents,
    load_files,
    load_owt,
    resolve_files,
    split_documents,
)
from posenc.data.errors import DataError
from posenc.data.tokenizers import TokenizerName, get_tokenizer
from posenc.data.workers import (
    POOL_MIN_DOCS,
    Encoder,
    Progress,
    chunks,
    encoded_chunks,
    init_worker,
    mp_context,
)
from posenc.io import atomic_write, fsync_dir, sha256_file

FORMAT_VERSION = 1
SPLITS: tuple[str, ...] = ("train", "val")
META_NAME = "meta.json"

DtypeName = Literal["auto", "uint16", "uint32"]
Split = Literal["train", "val"]


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
# Files

#: Test hook: called with a step name before every write step; lets tests interrupt preparation.
_step_hook: Callable[[str], None] | None = None


def _step(name: str) -> None:
    if _step_hook is not None:
        _step_hook(name)


def _stale_tmp_files(folder: Path) -> list[Path]:
    names = [f"{s}.bin" for s in SPLITS] + [META_NAME]
    return sorted(p for n in names for p in folder.glob(f".{n}.*.tmp"))


def _write_shard(
    path: Path, split: str, indices: np.ndarray, encoder: Encoder, pool: Any, workers: int, progress: bool
) -> dict[str, Any]:
    digest, counts = hashlib.sha256(), {"tokens": 0, "documents": 0, "max_id": -1}
    bar = Progress(len(indices), f"tokenizing {split}", progress)

    def write(f: IO[bytes]) -> None:
        for ids, n_docs, top in encoded_chunks(encoder, chunks(indices, workers), pool):
            data = ids.tobytes()
            _step(f"{split}:chunk")
            f.write(data)
            digest.update(data)
            counts["tokens"] += ids.size
            counts["documents"] += n_docs
            counts["max_id"] = max(counts["max_id"], top)
            bar.update(n_docs)
        _step(f"{split}:written")

    try:
        atomic_write(path, write)
        _step(f"{split}:replaced")
    except OSError as e:  # disk full, permissions: a data problem, reported with the path
        raise DataError(f"{path}: cannot write the shard ({e.strerror or e})") from None
    finally:
        bar.close()
    return {**counts, "sha256": digest.hexdigest(), "bytes": counts["tokens"] * encoder.dtype.itemsize}


def _write_json(path: Path, obj: dict[str, Any]) -> None:
    def write(f: IO[bytes]) -> None:
        f.write((json.dumps(obj, indent=2, sort_keys=True) + "\n").encode("utf-8"))
        _step("meta:written")

    try:
        atomic_write(path, write)
    except OSError as e:
        raise DataError(f"{path}: cannot write the metadata ({e.strerror or e})") from None


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


def refuse_another_corpus(folder: str | Path, source: str, tokenizer: str) -> None:
    """Raise :class:`DataError` when ``folder`` holds the shards of another source or tokenizer: a
    training run reads the corpus it asks for, and never replaces a prepared one with it (an
    explicit :func:`prepare` may)."""
    folder = Path(folder).expanduser()
    meta_path = folder / "meta.json"
    if not meta_path.exists():
        return
    try:
        meta = json.loads(meta_path.read_text())
    except (OSError, ValueError):
        return  # an unreadable meta.json is an interrupted preparation: it is redone
    held = (meta.get("source"), meta.get("tokenizer"))
    if held != (source, tokenizer):
        raise DataError(
            f"{folder} holds the shards of source={held[0]!r} with tokenizer={held[1]!r}; this asks for "
            f"source={source!r} with tokenizer={tokenizer!r}. Point --data-dir at another folder (or remove "
            "this one), or ask for the corpus it holds (--dataset, --tokenizer): it is not overwritten"
        )


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
    _check_options(source, data_files, seed, num_proc)
    default_train, default_val = DEFAULT_FRACTIONS[source]
    fractions = {
        "train": default_train if train_fraction is None else train_fraction,
        "val": default_val if val_fraction is None else val_fraction,
    }
    tok = get_tokenizer(tokenizer)
    np_dtype = shard_dtype(tok.vocab_size, dtype)
    folder = Path(out_dir).expanduser()
    inputs, meta_extra, docs, paths = _inputs(source, data_files, tok.name, np_dtype.name, seed, fractions)
    fingerprint = hashlib.sha256(json.dumps(inputs, sort_keys=True).encode()).hexdigest()
    if _up_to_date(folder, fingerprint):
        return folder

    corpus: Corpus
    if docs is not None:
        corpus = ListCorpus(docs)
    elif source == "files":
        corpus = load_files(paths, progress)
    else:
        corpus = load_owt(num_proc, progress)
    n_docs = len(corpus)
    order = split_documents(n_docs, seed, fractions["train"], fractions["val"])
    for split in SPLITS:
        if len(order[split]) == 0:
            raise DataError(
                f"{source}: {n_docs} documents with {split}_fraction={fractions[split]} give an empty "
                f"{split} split; use more documents or a larger fraction"
            )
    splits = _write_shards(folder, order, Encoder(corpus, tok, np_dtype), n_docs, num_proc, progress)
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


def _check_options(source: str, data_files: Any, seed: Any, num_proc: Any) -> None:
    if source not in DEFAULT_FRACTIONS:
        raise DataError(f"unknown source {source!r}; expected 'owt', 'embedded' or 'files'")
    if source != "files" and data_files:
        raise DataError(f"data_files are read only with source='files', not source={source!r}")
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise DataError(f"seed must be a non-negative int, got {seed!r}")
    if num_proc is not None and (isinstance(num_proc, bool) or not isinstance(num_proc, int) or num_proc < 1):
        raise DataError(f"num_proc must be a positive int or None, got {num_proc!r}")


def _inputs(
    source: str, data_files: Any, tokenizer: str, dtype: str, seed: int, fractions: dict[str, float]
) -> tuple[dict[str, Any], dict[str, Any], list[str] | None, list[Path]]:
    """What the shards depend on, known without loading the corpus where possible (owt, files):
    (inputs, extra meta.json fields, the embedded documents or None, the files)."""
    inputs: dict[str, Any] = {
        "format": FORMAT_VERSION,
        "source": source,
        "tokenizer": tokenizer,
        "dtype": dtype,
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
        paths = resolve_files(data_files)
        meta_extra["data_files"] = [str(p) for p in paths]
        inputs["data_files"] = [[str(p), p.stat().st_size, p.stat().st_mtime_ns] for p in paths]
    else:
        meta_extra["dataset"] = OWT_DATASET
        inputs["dataset"] = OWT_DATASET
    return inputs, meta_extra, docs, paths


def _write_shards(
    folder: Path, order: dict[str, Any], encoder: Encoder, n_docs: int, num_proc: int | None, progress: bool
) -> dict[str, Any]:
    """Write every split's shard; the folder is in preparation (no meta.json) until the caller's end."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise DataError(f"{folder}: cannot create the output folder ({e.strerror})") from None
    _step("start")
    (folder / META_NAME).unlink(missing_ok=True)
    fsync_dir(folder)
    for stale in _stale_tmp_files(folder):
        stale.unlink(missing_ok=True)
    workers = num_proc or max(1, min(os.cpu_count() or 1, 8))
    pool = None
    if workers > 1 and n_docs >= POOL_MIN_DOCS:
        pool = mp_context().Pool(workers, initializer=init_worker, initargs=(encoder,))
    try:
        return {
            split: _write_shard(folder / f"{split}.bin", split, order[split], encoder, pool, workers, progress)
            for split in SPLITS
        }
    finally:
        if pool is not None:
            pool.terminate()
            pool.join()


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
                "without metadata); call posenc.data.prepare() again with the same arguments to finish it"
            )
        raise DataError(
            f"{meta_path}: missing; {folder} is not a prepared data folder: create it with "
            f"posenc.data.prepare({str(folder)!r}, ...) (e.g. source='embedded', tokenizer='bytes' for an "
            "offline corpus)"
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
        raise DataError(
            f"{meta_path}: malformed metadata ({type(e).__name__}: {e}); prepare the folder again"
        ) from None
    if dtype not in (np.dtype(np.uint16), np.dtype(np.uint32)):
        raise DataError(f"{meta_path}: dtype {dtype.name!r}, expected uint16 or uint32")
    if dtype == np.uint16 and (meta_vocab > 2**16 or max_id >= 2**16):
        raise DataError(
            f"{meta_path}: uint16 shards for vocab_size {meta_vocab} (max id {max_id}) cannot hold every id"
        )
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
            raise DataError(
                f"{path}: sha256 {actual} does not match meta.json ({record.get('sha256')}): the shard changed"
            )
    return np.memmap(path, dtype=dtype, mode="r", shape=(tokens,))

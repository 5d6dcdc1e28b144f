"""Tokenizing a corpus in worker processes, in document order, with a progress bar on stderr.

Workers receive document indices and return shard-dtype arrays, so only compact arrays travel
back; ``Pool.imap`` keeps the chunks in order, so the shards do not depend on the worker count.
"""

from __future__ import annotations

import math
import multiprocessing
import signal
import sys
from collections.abc import Iterator
from typing import Any

import numpy as np

from posenc.data.corpora import Corpus
from posenc.data.errors import DataError
from posenc.data.tokenizers import Tokenizer

_worker_encoder: Encoder | None = None
POOL_MIN_DOCS = 64  # below this, starting processes costs more than it saves


class Encoder:
    """Documents -> checked shard-dtype tokens; runs in the workers so that only compact arrays
    travel back to the writer."""

    def __init__(self, corpus: Corpus, tokenizer: Tokenizer, dtype: np.dtype) -> None:
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


def init_worker(encoder: Encoder) -> None:
    global _worker_encoder
    _worker_encoder = encoder
    # A forked worker inherits the parent's handlers (the training script catches SIGTERM to stop
    # at a step boundary); Pool.terminate() must kill workers, and Ctrl-C is the parent's to handle.
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def _run_worker(indices: np.ndarray) -> tuple[np.ndarray, int, int]:
    if _worker_encoder is None:
        raise RuntimeError("worker started without init_worker")
    return _worker_encoder(indices)


def chunks(indices: np.ndarray, workers: int) -> list[np.ndarray]:
    # Small chunks keep every worker busy and the progress bar moving; big ones amortize IPC.
    size = max(1, min(512, len(indices) // (4 * workers) or 1))
    return [indices[i : i + size] for i in range(0, len(indices), size)]


def encoded_chunks(encoder: Encoder, parts: list[np.ndarray], pool: Any) -> Iterator[tuple[np.ndarray, int, int]]:
    if pool is None:
        return map(encoder, parts)
    return pool.imap(_run_worker, parts)  # ordered: shards must not depend on the worker count


def mp_context() -> Any:
    # fork needs no re-import of __main__, so a straight-line script without a main guard works.
    methods = multiprocessing.get_all_start_methods()
    return multiprocessing.get_context("fork" if "fork" in methods else None)


class Progress:
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

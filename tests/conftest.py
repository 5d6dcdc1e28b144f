"""Shared test settings.

Threads: see below. Hypothesis: the default profile keeps the suite fast on two CPU cores; run
``pytest --hypothesis-profile=thorough`` for a longer search. ``deadline=None`` because the first
call of a torch op can take far longer than the steady state, which is not a bug.
"""

from __future__ import annotations

import os
import sys

# One intra-op thread for the whole session, set before torch is first imported. Two reasons:
# the tests' models are tiny, so a second thread costs more in synchronisation than it saves on
# two cores; and the reliability tests fork the test process, which deadlocks in the child when
# the parent already runs an OpenMP thread pool.
os.environ["OMP_NUM_THREADS"] = "1"
if "torch" in sys.modules:
    sys.modules["torch"].set_num_threads(1)

from collections.abc import Iterator  # noqa: E402
from pathlib import Path  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402
from _data_helpers import SHARED_TIKTOKEN_CACHE, make_documents, write_jsonl  # noqa: E402
from hypothesis import settings  # noqa: E402

settings.register_profile("posenc", deadline=None, max_examples=25, print_blob=True)
settings.register_profile("thorough", deadline=None, max_examples=1000, print_blob=True)
settings.load_profile("posenc")


@pytest.fixture(scope="session")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The embedded corpus, byte-tokenized, prepared once per session."""
    from posenc.data import prepare

    return prepare(
        tmp_path_factory.mktemp("data") / "embedded-bytes", source="embedded", tokenizer="bytes", progress=False
    )


@pytest.fixture
def one_thread() -> Iterator[None]:
    """One intra-op thread: on 2 shared cores a second thread makes a tiny model ~10x slower, and
    bitwise comparisons need the same thread count on both sides anyway."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def datasets_cache(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Keeps datasets' arrow cache out of the home folder (skips without datasets); one folder for
    the session so that the same jsonl is converted once."""
    datasets = pytest.importorskip("datasets")
    cache = tmp_path_factory.getbasetemp() / "hf-datasets-cache"
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", str(cache))
    monkeypatch.setenv("HF_DATASETS_CACHE", str(cache))
    return cache


@pytest.fixture
def gpt2_cache(monkeypatch: pytest.MonkeyPatch) -> Path:
    """Points TIKTOKEN_CACHE_DIR at an existing copy of the GPT-2 ranks, or skips."""
    env = os.environ.get("TIKTOKEN_CACHE_DIR")
    for candidate in ([Path(env)] if env else []) + [SHARED_TIKTOKEN_CACHE]:
        if candidate.is_dir() and any(candidate.iterdir()):
            monkeypatch.setenv("TIKTOKEN_CACHE_DIR", str(candidate.resolve()))
            return candidate
    pytest.skip(f"no offline GPT-2 BPE ranks (TIKTOKEN_CACHE_DIR unset, {SHARED_TIKTOKEN_CACHE} absent)")


@pytest.fixture
def docs() -> list[str]:
    return make_documents()


@pytest.fixture
def jsonl(tmp_path: Path, docs: list[str], datasets_cache: Path) -> Path:
    """The 40 documents of ``docs`` as a jsonl file (reading it needs datasets: skips without)."""
    return write_jsonl(tmp_path / "corpus.jsonl", docs)

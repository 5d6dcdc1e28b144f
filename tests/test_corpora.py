"""posenc.data.corpora: local files, the embedded corpus, OpenWebText offline, the split rule."""

from __future__ import annotations

import json
import re
import socket
import time
from pathlib import Path

import numpy as np
import pytest
from _data_helpers import SEED, make_documents, no_network, prep, split_at_eot, write_jsonl

from posenc.data import (
    DataError,
    corpora,
    embedded_documents,
    get_tokenizer,
    load_split,
    network,
    prepare,
    read_meta,
    split_documents,
)

FLAG = re.compile(r"(?<![\w-])--\w")  # a command-line flag; library messages name arguments instead

# ---------------------------------------------------------------------------------------------
# Local files


def test_txt_is_one_document_per_file_and_parquet_reads_the_text_column(tmp_path, datasets_cache):
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    docs = make_documents(10)
    txts = []
    for i, d in enumerate(docs):
        p = tmp_path / f"doc{i:02d}.txt"
        p.write_bytes(d.replace("\r\n", "\n").encode("utf-8"))  # datasets reads text with universal newlines
        txts.append(p)
    parquet = tmp_path / "docs.parquet"
    pq.write_table(pa.table({"title": [f"t{i}" for i in range(len(docs))], "text": docs}), parquet)

    tok = get_tokenizer("bytes")
    got = {}
    for name, files in (("txt", txts), ("parquet", [parquet])):
        out = prep(tmp_path / name, files, train_fraction=0.5, val_fraction=0.5)
        both = np.concatenate([load_split(out, "train"), load_split(out, "val")])
        got[name] = sorted(tok.decode(d.tolist()) for d in split_at_eot(both, 0))
    assert got["parquet"] == sorted(docs)
    assert got["txt"] == sorted(d.replace("\r\n", "\n") for d in docs)


@pytest.mark.parametrize(
    "setup, needle",
    [
        (lambda d: [d / "missing.jsonl"], "data file not found"),
        (lambda d: [write_jsonl(d / "a.jsonl", ["x"]), (d / "b.txt").write_text("y") and d / "b.txt"], "mix formats"),
        (lambda d: [(d / "a.csv").write_text("text\nx") and d / "a.csv"], "unsupported file type"),
        (lambda d: [(d / "a.jsonl").write_text('{"body": "x"}\n') and d / "a.jsonl"], "no 'text' field"),
        (lambda d: [(d / "a.jsonl").write_text('{"text": "x"\n') and d / "a.jsonl"], "cannot read as json"),
    ],
    ids=["missing", "mixed", "csv", "no-text-field", "bad-json"],
)
def test_bad_data_files_are_refused_with_the_path(tmp_path, datasets_cache, setup, needle):
    files = setup(tmp_path)
    with pytest.raises(DataError, match=needle) as err:
        prep(tmp_path / "out", files)
    assert str(files[0].name) in str(err.value)
    assert not (tmp_path / "out").exists()


def test_files_without_data_files_names_the_argument(tmp_path):
    with pytest.raises(DataError, match=r"source='files' needs data_files=\[") as err:
        prepare(tmp_path / "out", source="files", tokenizer="bytes", progress=False)
    assert not FLAG.search(str(err.value))
    with pytest.raises(DataError, match=r"data_files are read only with source='files', not source='embedded'"):
        prepare(tmp_path / "out", source="embedded", data_files=["a.jsonl"], tokenizer="bytes", progress=False)


# ---------------------------------------------------------------------------------------------
# Split


def test_split_rule():
    s = split_documents(100_000, SEED, 0.10, 0.001)  # the study's split
    assert len(s["train"]) == 10_000 and len(s["val"]) == 100
    assert not set(s["train"].tolist()) & set(s["val"].tolist())
    order = np.random.default_rng(SEED).permutation(100_000)  # the documented rule, recomputed
    assert np.array_equal(s["train"], order[:10_000]) and np.array_equal(s["val"], order[10_000:10_100])
    s = split_documents(685, SEED, 0.98, 0.02)  # fractions summing to 1 use every document
    assert len(s["train"]) + len(s["val"]) == 685 and len(s["val"]) == 13
    assert np.array_equal(np.sort(np.concatenate([s["train"], s["val"]])), np.arange(685))
    for bad in [(0.0, 0.1), (0.9, 0.2), (0.5, -0.1), (1.5, 0.0)]:
        with pytest.raises(DataError, match="fraction"):
            split_documents(10, SEED, *bad)


def test_an_empty_split_is_refused(tmp_path, jsonl):
    with pytest.raises(DataError, match="empty val split"):
        prep(tmp_path / "out", [jsonl], train_fraction=0.10, val_fraction=0.001)  # 40 docs -> 0 val


# ---------------------------------------------------------------------------------------------
# Embedded corpus


def test_embedded_corpus_is_offline_large_and_deterministic(monkeypatch):
    monkeypatch.setattr(socket, "create_connection", no_network)
    monkeypatch.setattr(socket.socket, "connect", no_network)
    corpora._embedded_corpus.cache_clear()  # really read the files again, under the network ban
    first = embedded_documents()
    corpora._embedded_corpus.cache_clear()
    second = embedded_documents()
    assert first == second and first is not second
    assert sum(len(d.encode("utf-8")) for d in first) >= 5_000_000
    assert all(d.strip() and "\0" not in d for d in first)
    import pydoc_data.topics

    assert pydoc_data.topics.topics[sorted(pydoc_data.topics.topics)[0]] == first[0]
    assert Path(json.__file__).read_text(encoding="utf-8") in first


def test_prepare_embedded_uses_every_document(tmp_path):
    out = prepare(tmp_path / "emb", source="embedded", tokenizer="bytes", num_proc=1, progress=False)
    meta = read_meta(out)
    n = len(embedded_documents())
    assert meta["documents"] == n
    assert meta["splits"]["train"]["documents"] + meta["splits"]["val"]["documents"] == n
    assert meta["splits"]["val"]["documents"] == int(n * 0.02 + 1e-9) > 0
    assert meta["python"]
    val = load_split(out, "val", vocab_size=256, block_size=1024)
    corpus = set(embedded_documents())
    assert all(get_tokenizer("bytes").decode(d.tolist()) in corpus for d in split_at_eot(np.asarray(val), 0))


# ---------------------------------------------------------------------------------------------
# OpenWebText without network

OFFLINE_ALTERNATIVES = r"source='files', data_files=\[\.\.\.\].*source='embedded'"


def test_owt_without_network_names_the_offline_alternatives_quickly(tmp_path, monkeypatch):
    datasets = pytest.importorskip("datasets")

    def must_not_load(*args, **kwargs):
        raise AssertionError("load_dataset called although the hub is unreachable")

    monkeypatch.setattr(socket, "create_connection", no_network)
    monkeypatch.setattr(datasets, "load_dataset", must_not_load)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("HF_DATASETS_OFFLINE", raising=False)
    t0 = time.perf_counter()
    with pytest.raises(DataError, match=rf"Skylion007/openwebtext.*{OFFLINE_ALTERNATIVES}") as err:
        prepare(tmp_path / "owt", source="owt", tokenizer="bytes", progress=False)
    assert time.perf_counter() - t0 < 5
    assert not FLAG.search(str(err.value))
    assert not (tmp_path / "owt").exists()


def test_owt_load_failure_names_the_alternatives_and_keeps_the_old_folder(tmp_path, jsonl, monkeypatch):
    datasets = pytest.importorskip("datasets")

    def unreachable(*args, **kwargs):
        raise ConnectionError("Couldn't reach 'Skylion007/openwebtext' on the Hub (LocalEntryNotFoundError)")

    out = prep(tmp_path / "out", [jsonl])  # an earlier, valid preparation in the same folder
    monkeypatch.setattr(network, "reachable", lambda *a, **k: True)
    monkeypatch.setattr(datasets, "load_dataset", unreachable)
    with pytest.raises(DataError, match=rf"ConnectionError.*{OFFLINE_ALTERNATIVES}") as err:
        prepare(out, source="owt", tokenizer="bytes", progress=False)
    assert not FLAG.search(str(err.value))
    assert load_split(out, "train").size > 0

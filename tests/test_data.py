"""posenc.data: shards round-trip, reruns are no-ops, bad or interrupted folders are refused.

Fixtures are generated here (small jsonl/parquet/txt files in tmp_path); nothing binary is
committed. The expected split order is recomputed independently from the documented rule
(``np.random.default_rng(seed).permutation(n)``).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

from _scripts import load_script
from posenc import data
from posenc.data import (
    DataError,
    TokenizerError,
    embedded_documents,
    get_tokenizer,
    load_split,
    prepare,
    read_meta,
    shard_dtype,
    split_documents,
)

REPO = Path(__file__).resolve().parents[1]
SHARED_TIKTOKEN_CACHE = REPO.parent / "shared" / "tiktoken-cache"
EOT_TEXT = {"bytes": "\0", "gpt2": "<|endoftext|>"}
SEED = 2357


def make_documents(n: int = 40) -> list[str]:
    """Varied documents: multi-line prose, non-ASCII, emoji, an empty one, and text that spells
    the end-of-text marker (it must stay ordinary text)."""
    extras = [
        "",
        "Ünïcödé — 日本語のテキスト 🙂🚀",
        "literal <|endoftext|> inside a document",
        "line one\nline two\n\n  indented\tline\r\nwindows line",
    ]
    docs = [f"Document {i}: " + " ".join(f"word{j}" for j in range(i % 7 + 1)) + ("\n" * (i % 3)) for i in range(n)]
    for k, extra in enumerate(extras):
        docs[k * 7 % n] = extra
    return docs


def write_jsonl(path: Path, docs: list[str]) -> Path:
    with open(path, "w", encoding="utf-8") as f:
        for i, d in enumerate(docs):
            f.write(json.dumps({"id": i, "text": d}) + "\n")
    return path


@pytest.fixture(autouse=True)
def _isolated_datasets_cache(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    """Keep datasets' arrow cache out of the home folder; one folder for the session so that the
    same jsonl is converted once."""
    datasets = pytest.importorskip("datasets")
    cache = tmp_path_factory.getbasetemp() / "hf-datasets-cache"
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", str(cache))
    monkeypatch.setenv("HF_DATASETS_CACHE", str(cache))


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
def jsonl(tmp_path: Path, docs: list[str]) -> Path:
    return write_jsonl(tmp_path / "corpus.jsonl", docs)


def prep(out: Path, files: list[Path], **kw) -> Path:
    opts = dict(source="files", data_files=[str(f) for f in files], tokenizer="bytes", train_fraction=0.8,
                val_fraction=0.2, num_proc=1, progress=False)
    opts.update(kw)
    return prepare(out, **opts)


def file_state(folder: Path) -> dict[str, tuple[int, int, bytes]]:
    return {p.name: (p.stat().st_mtime_ns, p.stat().st_ino, p.read_bytes()) for p in sorted(folder.iterdir())}


def split_at_eot(tokens: np.ndarray, eot: int) -> list[np.ndarray]:
    ends = np.flatnonzero(tokens == eot)
    assert ends.size and ends[-1] == tokens.size - 1, "every document ends with EOT"
    starts = np.concatenate([[0], ends[:-1] + 1])
    return [tokens[s:e] for s, e in zip(starts, ends)]


# ---------------------------------------------------------------------------------------------
# Round trip


@pytest.mark.parametrize("tokenizer", ["bytes", "gpt2"])
def test_round_trip_decode_equals_documents_joined_by_eot(tokenizer, request, tmp_path, docs, jsonl):
    if tokenizer == "gpt2":
        request.getfixturevalue("gpt2_cache")
    out = prep(tmp_path / "out", [jsonl], tokenizer=tokenizer)
    tok = get_tokenizer(tokenizer)
    train, val = load_split(out, "train"), load_split(out, "val")

    order = np.random.default_rng(SEED).permutation(len(docs))  # the documented split rule
    expected = {"train": [docs[i] for i in order[:32]], "val": [docs[i] for i in order[32:40]]}
    everything = np.concatenate([train, val]).tolist()
    eot_text = EOT_TEXT[tokenizer]
    assert tok.decode(everything) == "".join(d + eot_text for d in expected["train"] + expected["val"])
    # Per document too: a literal "<|endoftext|>" in text must not become the EOT id.
    for split, arr in (("train", train), ("val", val)):
        assert [tok.decode(d.tolist()) for d in split_at_eot(np.asarray(arr), tok.eot)] == expected[split]

    meta = read_meta(out)
    assert meta["tokenizer"] == tokenizer and meta["vocab_size"] == tok.vocab_size and meta["eot"] == tok.eot
    assert meta["dtype"] == "uint16" and train.dtype == np.uint16
    for split, arr in (("train", train), ("val", val)):
        rec = meta["splits"][split]
        assert rec["documents"] == len(expected[split])
        assert rec["tokens"] == arr.size and rec["bytes"] == arr.size * 2
        assert rec["max_id"] == int(arr.max())
        assert rec["sha256"] == hashlib.sha256((out / f"{split}.bin").read_bytes()).hexdigest()


def test_worker_count_does_not_change_shards(tmp_path):
    docs = make_documents(300)  # above the in-process threshold, so a pool really runs
    files = [write_jsonl(tmp_path / "big.jsonl", docs)]
    one = prep(tmp_path / "one", files, num_proc=1)
    two = prep(tmp_path / "two", files, num_proc=2)
    for name in ("train.bin", "val.bin", "meta.json"):
        assert (one / name).read_bytes() == (two / name).read_bytes(), name


def test_txt_is_one_document_per_file_and_parquet_reads_the_text_column(tmp_path):
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
def test_bad_data_files_are_refused_with_the_path(tmp_path, setup, needle):
    files = setup(tmp_path)
    with pytest.raises(DataError, match=needle) as err:
        prep(tmp_path / "out", files)
    assert str(files[0].name) in str(err.value)
    assert not (tmp_path / "out").exists()


def test_split_rule():
    s = split_documents(100_000, SEED, 0.10, 0.001)  # the study's split
    assert len(s["train"]) == 10_000 and len(s["val"]) == 100
    assert not set(s["train"].tolist()) & set(s["val"].tolist())
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
# Reruns and refusals


def test_rerun_with_same_inputs_is_a_noop_and_new_options_rewrite(tmp_path, jsonl):
    out = prep(tmp_path / "out", [jsonl])
    before = file_state(out)
    time.sleep(0.01)
    prep(tmp_path / "out", [jsonl])
    assert file_state(out) == before  # same bytes, same mtimes, same inodes: nothing rewritten

    prep(tmp_path / "out", [jsonl], seed=1)
    assert read_meta(out)["seed"] == 1
    assert (out / "train.bin").read_bytes() != before["train.bin"][2]


def test_truncated_shard_is_refused_naming_the_file_and_a_rerun_repairs_it(tmp_path, jsonl):
    out = prep(tmp_path / "out", [jsonl])
    good = (out / "train.bin").read_bytes()
    (out / "train.bin").write_bytes(good[: len(good) // 2])
    with pytest.raises(DataError, match=r"train\.bin.*partial or truncated"):
        load_split(out, "train")
    assert load_split(out, "val").size > 0  # the other split is intact
    prep(tmp_path / "out", [jsonl])
    assert (out / "train.bin").read_bytes() == good


def test_missing_shard_is_refused(tmp_path, jsonl):
    out = prep(tmp_path / "out", [jsonl])
    (out / "val.bin").unlink()
    with pytest.raises(DataError, match=r"val\.bin.*shard missing"):
        load_split(out, "val")


def test_missing_meta_is_refused(tmp_path, jsonl):
    with pytest.raises(DataError, match=r"meta\.json.*missing.*prepare_owt\.py"):
        load_split(tmp_path / "never-prepared", "train")
    out = prep(tmp_path / "out", [jsonl])
    (out / "meta.json").unlink()
    with pytest.raises(DataError, match=r"meta\.json.*interrupted"):
        load_split(out, "train")


def test_max_id_at_or_above_the_model_vocab_is_refused(tmp_path, jsonl):
    out = prep(tmp_path / "out", [jsonl])
    max_id = read_meta(out)["splits"]["train"]["max_id"]
    assert max_id == int(load_split(out, "train").max()) and max_id > 200  # UTF-8 lead bytes of the emoji
    with pytest.raises(DataError, match=rf"train\.bin.*ids up to {max_id}.*vocab_size is {max_id}"):
        load_split(out, "train", vocab_size=max_id)
    assert load_split(out, "train", vocab_size=max_id + 1).size > 0


def test_split_shorter_than_block_size_plus_one_is_refused(tmp_path, jsonl):
    out = prep(tmp_path / "out", [jsonl])
    n = load_split(out, "val").size
    with pytest.raises(DataError, match=rf"val\.bin.*{n} tokens.*block_size \+ 1 = {n + 1}"):
        load_split(out, "val", block_size=n)
    assert load_split(out, "val", block_size=n - 1).size == n


def test_verify_detects_a_changed_shard(tmp_path, jsonl):
    out = prep(tmp_path / "out", [jsonl])
    raw = bytearray((out / "train.bin").read_bytes())
    raw[10] ^= 1
    (out / "train.bin").write_bytes(bytes(raw))
    load_split(out, "train")  # same size: only the checksum can tell
    with pytest.raises(DataError, match=r"train\.bin.*sha256"):
        load_split(out, "train", verify=True)


def test_dtype_follows_the_vocabulary():
    assert shard_dtype(256) == np.uint16
    assert shard_dtype(50257) == np.uint16
    assert shard_dtype(65536) == np.uint16  # largest id 65535 still fits
    assert shard_dtype(65537) == np.uint32
    assert shard_dtype(100277) == np.uint32  # a cl100k-sized vocabulary
    assert shard_dtype(256, "uint32") == np.uint32
    with pytest.raises(DataError, match="uint16 requested for vocab_size 65537"):
        shard_dtype(65537, "uint16")
    with pytest.raises(DataError, match="unknown dtype"):
        shard_dtype(256, "int8")


def test_uint32_shards_hold_the_same_tokens_and_a_lying_uint16_meta_is_refused(tmp_path, jsonl):
    a = prep(tmp_path / "u16", [jsonl])
    b = prep(tmp_path / "u32", [jsonl], dtype="uint32")
    assert load_split(b, "train").dtype == np.uint32
    assert np.array_equal(load_split(a, "train"), load_split(b, "train"))

    meta = json.loads((a / "meta.json").read_text())
    meta["vocab_size"] = 100277
    (a / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(DataError, match="uint16 shards for vocab_size 100277"):
        load_split(a, "train")


# ---------------------------------------------------------------------------------------------
# Interrupted preparation


class Interrupt:
    """A step hook that raises KeyboardInterrupt at the n-th write step (1-based)."""

    def __init__(self, at: int | None = None) -> None:
        self.at, self.steps = at, []

    def __call__(self, name: str) -> None:
        self.steps.append(name)
        if len(self.steps) == self.at:
            raise KeyboardInterrupt(name)


def test_interrupting_at_every_write_step_then_rerunning_gives_identical_files(tmp_path, jsonl, monkeypatch):
    ref_hook = Interrupt()
    monkeypatch.setattr(data, "_step_hook", ref_hook)
    ref = prep(tmp_path / "ref", [jsonl])
    ref_files = {n: (ref / n).read_bytes() for n in ("train.bin", "val.bin", "meta.json")}
    steps = list(ref_hook.steps)
    monkeypatch.setattr(data, "_step_hook", None)
    assert len(steps) >= 10 and steps[0] == "start" and steps[-1] == "meta:written"

    # A folder that already holds another preparation, so leftovers are old, plausible shards.
    previous = prep(tmp_path / "previous", [jsonl], seed=1)
    for at in range(1, len(steps) + 1):
        folder = tmp_path / f"cut{at}"
        shutil.copytree(previous, folder)
        monkeypatch.setattr(data, "_step_hook", Interrupt(at))
        with pytest.raises(KeyboardInterrupt):
            prep(folder, [jsonl])
        if steps[at - 1] == "start":  # nothing touched yet: the previous preparation stays valid
            assert read_meta(folder)["seed"] == 1 and load_split(folder, "train", verify=True).size > 0
        else:
            for split in ("train", "val"):
                with pytest.raises(DataError, match=r"meta\.json.*interrupted"):
                    load_split(folder, split)
        assert not list(folder.glob(".*.tmp")), f"temporary files left after an exception at {steps[at - 1]}"
        monkeypatch.setattr(data, "_step_hook", None)
        prep(folder, [jsonl])
        assert {n: (folder / n).read_bytes() for n in ref_files} == ref_files, steps[at - 1]


KILL_SCRIPT = textwrap.dedent(
    """
    import os, signal, sys
    import datasets
    datasets.config.HF_DATASETS_CACHE = os.environ["HF_DATASETS_CACHE"]
    from posenc import data
    seen = []
    def hook(name):
        seen.append(name)
        if len(seen) == int(sys.argv[3]):
            os.kill(os.getpid(), signal.SIGKILL)  # no finally blocks, no cleanup
    data._step_hook = hook
    data.prepare(sys.argv[1], source="files", data_files=[sys.argv[2]], tokenizer="bytes",
                 train_fraction=0.8, val_fraction=0.2, num_proc=1, progress=False)
    """
)


def test_sigkill_during_preparation_leaves_a_refused_folder_that_a_rerun_completes(tmp_path, jsonl, monkeypatch):
    hook = Interrupt()
    monkeypatch.setattr(data, "_step_hook", hook)
    ref = prep(tmp_path / "ref", [jsonl])
    monkeypatch.setattr(data, "_step_hook", None)
    # A killed process leaves its temporary file behind at these steps: mid-shard, shard
    # complete but not renamed, metadata complete but not renamed.
    points = [hook.steps.index("train:chunk") + 2, hook.steps.index("val:written") + 1, len(hook.steps)]
    env = dict(os.environ, HF_DATASETS_CACHE=str(data_cache_dir()))
    for at in points:
        folder = tmp_path / f"kill{at}"
        proc = subprocess.run([sys.executable, "-c", KILL_SCRIPT, str(folder), str(jsonl), str(at)],
                              env=env, capture_output=True, text=True, timeout=120)
        assert proc.returncode == -signal.SIGKILL, proc.stderr
        assert list(folder.glob(".*.tmp")), "a SIGKILL leaves the temporary file"
        with pytest.raises(DataError, match="interrupted"):
            load_split(folder, "train")
        prep(folder, [jsonl])
        assert not list(folder.glob(".*.tmp"))
        for name in ("train.bin", "val.bin", "meta.json"):
            assert (folder / name).read_bytes() == (ref / name).read_bytes(), (at, name)


def data_cache_dir() -> Path:
    import datasets

    return Path(datasets.config.HF_DATASETS_CACHE)


# ---------------------------------------------------------------------------------------------
# Embedded corpus


def test_embedded_corpus_is_offline_large_and_deterministic(monkeypatch):
    def no_network(*args, **kwargs):
        raise OSError("network disabled by the test")

    monkeypatch.setattr(socket, "create_connection", no_network)
    monkeypatch.setattr(socket.socket, "connect", no_network)
    data._embedded_corpus.cache_clear()  # really read the files again, under the network ban
    first = embedded_documents()
    data._embedded_corpus.cache_clear()
    second = embedded_documents()
    assert first == second and first is not second
    assert sum(len(d.encode("utf-8")) for d in first) >= 5_000_000
    assert all(d.strip() and "\0" not in d for d in first)
    import json as json_module
    import pydoc_data.topics

    assert pydoc_data.topics.topics[sorted(pydoc_data.topics.topics)[0]] == first[0]
    assert Path(json_module.__file__).read_text(encoding="utf-8") in first


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
# No network


def test_owt_without_network_names_the_offline_alternatives_quickly(tmp_path, monkeypatch):
    datasets = pytest.importorskip("datasets")

    def no_network(*args, **kwargs):
        raise OSError("network disabled by the test")

    def must_not_load(*args, **kwargs):
        raise AssertionError("load_dataset called although the hub is unreachable")

    monkeypatch.setattr(socket, "create_connection", no_network)
    monkeypatch.setattr(datasets, "load_dataset", must_not_load)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("HF_DATASETS_OFFLINE", raising=False)
    t0 = time.perf_counter()
    with pytest.raises(DataError, match=r"Skylion007/openwebtext.*--data-files.*--dataset embedded"):
        prepare(tmp_path / "owt", source="owt", tokenizer="bytes", progress=False)
    assert time.perf_counter() - t0 < 5
    assert not (tmp_path / "owt").exists()


def test_owt_load_failure_names_the_alternatives_and_keeps_the_old_folder(tmp_path, jsonl, monkeypatch):
    datasets = pytest.importorskip("datasets")

    def unreachable(*args, **kwargs):
        raise ConnectionError("Couldn't reach 'Skylion007/openwebtext' on the Hub (LocalEntryNotFoundError)")

    out = prep(tmp_path / "out", [jsonl])  # an earlier, valid preparation in the same folder
    monkeypatch.setattr(data, "_reachable", lambda *a, **k: True)
    monkeypatch.setattr(datasets, "load_dataset", unreachable)
    with pytest.raises(DataError, match=r"ConnectionError.*--data-files.*--dataset embedded"):
        prepare(out, source="owt", tokenizer="bytes", progress=False)
    assert load_split(out, "train").size > 0


def test_gpt2_tokenizer_without_cached_files_fails_fast(tmp_path, monkeypatch):
    requests = pytest.importorskip("requests")

    def no_network(*args, **kwargs):
        raise OSError("network disabled by the test")

    def hang(*args, **kwargs):
        time.sleep(60)

    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", str(tmp_path))  # empty
    monkeypatch.setattr(socket, "create_connection", no_network)
    monkeypatch.setattr(requests, "get", hang)  # what tiktoken would download with, without a timeout
    t0 = time.perf_counter()
    with pytest.raises(TokenizerError, match=r"TIKTOKEN_CACHE_DIR.*--tokenizer bytes"):
        get_tokenizer("gpt2")
    assert time.perf_counter() - t0 < 5

    # A resolver that never answers costs the probe timeout, not minutes.
    monkeypatch.setattr(socket, "create_connection", hang)
    monkeypatch.setattr(data, "_PROBE_TIMEOUT_S", 0.5)
    t0 = time.perf_counter()
    with pytest.raises(TokenizerError, match="cannot be reached"):
        get_tokenizer("gpt2")
    assert time.perf_counter() - t0 < 3
    with pytest.raises(TokenizerError):
        prepare(tmp_path / "out", source="embedded", tokenizer="gpt2", progress=False)
    assert not (tmp_path / "out").exists()


def test_gpt2_tokenizer_matches_the_reference_ids(gpt2_cache):
    tok = get_tokenizer("gpt2")
    assert (tok.name, tok.vocab_size, tok.eot) == ("gpt2", 50257, 50256)
    assert tok.encode("Hello world") == [15496, 995]  # GPT-2's published ids
    assert tok.encode("<|endoftext|>") != [tok.eot]
    assert tok.decode([tok.eot]) == "<|endoftext|>"


# ---------------------------------------------------------------------------------------------
# Command line


def load_cli():
    return load_script(REPO / "examples" / "prepare_owt.py", "prepare_owt")


def test_cli_prints_one_summary_line_and_reports_a_rerun(tmp_path, jsonl, capsys):
    cli = load_cli()
    argv = ["--data-files", str(jsonl), "--tokenizer", "bytes", "--out-dir", str(tmp_path / "out"),
            "--num-proc", "1", "--train-fraction", "0.8", "--val-fraction", "0.2", "--no-progress"]
    assert cli.main(argv) == 0
    first = capsys.readouterr()
    assert first.err == "" and first.out.count("\n") == 1 and "train" in first.out and "val" in first.out
    assert cli.main(argv) == 0
    assert "already up to date" in capsys.readouterr().out


def test_cli_turns_a_data_error_into_one_line_and_exit_code_2(tmp_path):
    proc = subprocess.run(
        [sys.executable, str(REPO / "examples" / "prepare_owt.py"), "--data-files", str(tmp_path / "nope.jsonl"),
         "--tokenizer", "bytes", "--out-dir", str(tmp_path / "out")],
        capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    assert proc.stderr.strip().count("\n") == 0 and "nope.jsonl: data file not found" in proc.stderr

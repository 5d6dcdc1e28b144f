"""posenc.data.shards: shards round-trip, reruns are no-ops, bad or interrupted folders are refused."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
from _data_helpers import EOT_TEXT, SEED, make_documents, prep, split_at_eot, write_jsonl

from posenc.data import (
    DataError,
    get_tokenizer,
    load_split,
    read_meta,
    shard_dtype,
    shards,
)


def file_state(folder: Path) -> dict[str, tuple[int, int, bytes]]:
    return {p.name: (p.stat().st_mtime_ns, p.stat().st_ino, p.read_bytes()) for p in sorted(folder.iterdir())}


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


def test_worker_count_does_not_change_shards(tmp_path, datasets_cache):
    docs = make_documents(300)  # above the in-process threshold, so a pool really runs
    files = [write_jsonl(tmp_path / "big.jsonl", docs)]
    one = prep(tmp_path / "one", files, num_proc=1)
    two = prep(tmp_path / "two", files, num_proc=2)
    for name in ("train.bin", "val.bin", "meta.json"):
        assert (one / name).read_bytes() == (two / name).read_bytes(), name


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
    never = tmp_path / "never-prepared"
    with pytest.raises(DataError, match=r"meta\.json.*missing.*posenc\.data\.prepare\(") as err:
        load_split(never, "train")
    assert repr(str(never)) in str(err.value) and "prepare_owt" not in str(err.value)
    out = prep(tmp_path / "out", [jsonl])
    (out / "meta.json").unlink()
    with pytest.raises(DataError, match=r"meta\.json.*interrupted.*prepare\(\) again with the same arguments") as err:
        load_split(out, "train")
    assert "prepare_owt" not in str(err.value)


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
    monkeypatch.setattr(shards, "_step_hook", ref_hook)
    ref = prep(tmp_path / "ref", [jsonl])
    ref_files = {n: (ref / n).read_bytes() for n in ("train.bin", "val.bin", "meta.json")}
    steps = list(ref_hook.steps)
    monkeypatch.setattr(shards, "_step_hook", None)
    assert len(steps) >= 10 and steps[0] == "start" and steps[-1] == "meta:written"

    # A folder that already holds another preparation, so leftovers are old, plausible shards.
    previous = prep(tmp_path / "previous", [jsonl], seed=1)
    for at in range(1, len(steps) + 1):
        folder = tmp_path / f"cut{at}"
        shutil.copytree(previous, folder)
        monkeypatch.setattr(shards, "_step_hook", Interrupt(at))
        with pytest.raises(KeyboardInterrupt):
            prep(folder, [jsonl])
        if steps[at - 1] == "start":  # nothing touched yet: the previous preparation stays valid
            assert read_meta(folder)["seed"] == 1 and load_split(folder, "train", verify=True).size > 0
        else:
            for split in ("train", "val"):
                with pytest.raises(DataError, match=r"meta\.json.*interrupted"):
                    load_split(folder, split)
        assert not list(folder.glob(".*.tmp")), f"temporary files left after an exception at {steps[at - 1]}"
        monkeypatch.setattr(shards, "_step_hook", None)
        prep(folder, [jsonl])
        assert {n: (folder / n).read_bytes() for n in ref_files} == ref_files, steps[at - 1]


KILL_SCRIPT = textwrap.dedent(
    """
    import os, signal, sys
    import datasets
    datasets.config.HF_DATASETS_CACHE = os.environ["HF_DATASETS_CACHE"]
    from posenc.data import prepare, shards
    seen = []
    def hook(name):
        seen.append(name)
        if len(seen) == int(sys.argv[3]):
            os.kill(os.getpid(), signal.SIGKILL)  # no finally blocks, no cleanup
    shards._step_hook = hook
    prepare(sys.argv[1], source="files", data_files=[sys.argv[2]], tokenizer="bytes",
            train_fraction=0.8, val_fraction=0.2, num_proc=1, progress=False)
    """
)


def test_sigkill_during_preparation_leaves_a_refused_folder_that_a_rerun_completes(
    tmp_path, jsonl, datasets_cache, monkeypatch
):
    hook = Interrupt()
    monkeypatch.setattr(shards, "_step_hook", hook)
    ref = prep(tmp_path / "ref", [jsonl])
    monkeypatch.setattr(shards, "_step_hook", None)
    # A killed process leaves its temporary file behind at these steps: mid-shard, shard
    # complete but not renamed, metadata complete but not renamed.
    points = [hook.steps.index("train:chunk") + 2, hook.steps.index("val:written") + 1, len(hook.steps)]
    env = dict(os.environ, HF_DATASETS_CACHE=str(datasets_cache))
    for at in points:
        folder = tmp_path / f"kill{at}"
        proc = subprocess.run(
            [sys.executable, "-c", KILL_SCRIPT, str(folder), str(jsonl), str(at)],
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert proc.returncode == -signal.SIGKILL, proc.stderr
        assert list(folder.glob(".*.tmp")), "a SIGKILL leaves the temporary file"
        with pytest.raises(DataError, match="interrupted"):
            load_split(folder, "train")
        prep(folder, [jsonl])
        assert not list(folder.glob(".*.tmp"))
        for name in ("train.bin", "val.bin", "meta.json"):
            assert (folder / name).read_bytes() == (ref / name).read_bytes(), (at, name)

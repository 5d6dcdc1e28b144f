"""Helpers shared by the posenc.data tests (tokenizers, corpora, shards, the CLI); their fixtures
(``docs``, ``jsonl``, ``datasets_cache``, ``gpt2_cache``) are in conftest.py.

Data is generated here (small jsonl files in tmp_path); nothing binary is committed. The
expected split order is recomputed independently from the documented rule
(``np.random.default_rng(seed).permutation(n)``).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from posenc.data import prepare

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


def prep(out: Path, files: list[Path], **kw) -> Path:
    """``prepare`` on local files with the byte tokenizer, in-process, an 80/20 split."""
    opts = dict(
        source="files",
        data_files=[str(f) for f in files],
        tokenizer="bytes",
        train_fraction=0.8,
        val_fraction=0.2,
        num_proc=1,
        progress=False,
    )
    opts.update(kw)
    return prepare(out, **opts)


def split_at_eot(tokens: np.ndarray, eot: int) -> list[np.ndarray]:
    ends = np.flatnonzero(tokens == eot)
    assert ends.size and ends[-1] == tokens.size - 1, "every document ends with EOT"
    starts = np.concatenate([[0], ends[:-1] + 1])
    return [tokens[s:e] for s, e in zip(starts, ends)]


def no_network(*args, **kwargs):
    raise OSError("network disabled by the test")

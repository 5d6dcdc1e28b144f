"""The token sequences of the real-model study (:mod:`posenc.studies.real`): the embedded corpus's
longest documents in a model's own tokenizer, with passkeys planted for the extension rows.

Documents: those of :func:`posenc.data.corpora.embedded_documents` with at least ``MIN_CHARS_PER_TOKEN``
characters per wanted token, ordered longest first; a window is a document's first tokens, one
window per document (a document too short in tokens is skipped).

Passkeys (a needle in natural text, after Mohtashami & Jaggi 2023): a sequence of ``length`` tokens
holds ``len(KEYS)`` planted sentences "The pass key for the red door is 51720. Remember it. ..." at
random depths, each asked by a query "What is the pass key for the red door? The pass key for the
red door is 51720" whose answer ends at ``QUERY_AT[k] * length`` (1x, 1.5x, 2x of a context of
``length / 2``). Key k lies anywhere before its own query, so each query is a retrieval over its
whole length; each query asks a different key, so no answer is visible to a later query.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any

KEYS: tuple[str, ...] = ("the red door", "the blue box", "the green gate")
QUERY_AT: tuple[float, ...] = (0.5, 0.75, 1.0)  # of the sequence: 1x, 1.5x and 2x of its half
MIN_CHARS_PER_TOKEN = 2.5


@dataclass(frozen=True)
class Sequence:
    """Token ids; ``planted``: [lo, hi) spans of inserted text; ``answers``: [lo, hi) of each key's answer."""

    document: int
    tokens: list[int]
    planted: tuple[tuple[int, int], ...] = ()
    answers: tuple[tuple[int, int], ...] = ()
    key_positions: tuple[int, ...] = ()


def encode(tokenizer: Any, text: str) -> list[int]:
    """Token ids of ``text`` without special tokens (a Hugging Face tokenizer or posenc's)."""
    try:
        return list(tokenizer.encode(text, add_special_tokens=False))
    except TypeError:
        return list(tokenizer.encode(text))


def long_documents(tokenizer: Any, n: int, length: int) -> list[tuple[int, list[int]]]:
    """(index in the corpus, first ``length`` tokens) of the ``n`` longest documents with that many."""
    from posenc.data.corpora import embedded_documents

    docs = embedded_documents()
    order = sorted(range(len(docs)), key=lambda i: (-len(docs[i]), i))
    out = []
    for i in order:
        if len(out) == n or len(docs[i]) < MIN_CHARS_PER_TOKEN * length:
            break
        ids = encode(tokenizer, docs[i][: int(8 * length)])
        if len(ids) >= length:
            out.append((i, ids[:length]))
    if len(out) < n:
        raise ValueError(f"the embedded corpus has {len(out)} documents of {length} tokens, fewer than the {n} asked")
    return out


def ablation_windows(tokenizer: Any, n: int, length: int) -> list[Sequence]:
    return [Sequence(i, ids) for i, ids in long_documents(tokenizer, n, length)]


def extension_sequences(tokenizer: Any, n: int, length: int, seed: int) -> list[Sequence]:
    """``n`` sequences of ``length`` tokens with the passkeys planted (module docstring)."""
    return [
        plant(tokenizer, i, ids, random.Random(f"{seed}-{w}"))
        for w, (i, ids) in enumerate(long_documents(tokenizer, n, length))
    ]


def plant(tokenizer: Any, document: int, text: list[int], rng: random.Random) -> Sequence:
    """``text`` (its length kept) with each key's sentence at a random depth before its query; depths
    are drawn again while two pieces would overlap."""
    length = len(text)
    queries, sentences = [], []
    for k, name in enumerate(KEYS):
        value = f"{rng.randrange(10000, 100000)}"
        question = encode(tokenizer, f"\nWhat is the pass key for {name}? The pass key for {name} is")
        answer = encode(tokenizer, f" {value}")
        end = int(QUERY_AT[k] * length)
        queries.append((end - len(question) - len(answer), question + answer, len(answer)))
        sentences.append(
            encode(
                tokenizer, f"\nThe pass key for {name} is {value}. Remember it. {value} is the pass key for {name}.\n"
            )
        )
    for _ in range(1000):
        keys = [rng.randrange(0, max(1, q[0] - len(s))) for q, s in zip(queries, sentences, strict=True)]
        spans = sorted([(keys[k], len(s)) for k, s in enumerate(sentences)] + [(q[0], len(q[1])) for q in queries])
        if all(a + n <= b for (a, n), (b, _) in zip(spans, spans[1:], strict=False)) and spans[0][0] >= 0:
            break
    else:
        raise ValueError(f"a sequence of {length} tokens is too short for the planted passkeys")
    pieces = sorted([(keys[k], s) for k, s in enumerate(sentences)] + [(q[0], q[1]) for q in queries])
    tokens: list[int] = []
    used = 0  # document tokens placed so far
    for start, ids in [*pieces, (length, [])]:
        take = start - len(tokens)
        tokens += text[used : used + take] + ids
        used += take
    planted = tuple((start, start + len(ids)) for start, ids in pieces)
    answers = tuple((q[0] + len(q[1]) - q[2], q[0] + len(q[1])) for q in queries)
    return Sequence(document, tokens, planted, answers, tuple(keys))


def load_pretrained(path: str) -> tuple[Any, Any, dict[str, Any]]:
    """(GPT, tokenizer, {"path", "sha256"}) of a GGUF file or a Hugging Face model folder, loaded as
    ``posenc train --init-from`` loads them (:mod:`posenc.train.source`); a name of
    :data:`posenc.pretrained.MODELS` is fetched first."""
    from pathlib import Path

    from posenc.data.tokenizers import get_tokenizer
    from posenc.io import sha256_file
    from posenc.train.source import load_source

    if not Path(path).exists():
        from posenc.pretrained import MODELS, fetch

        if path not in MODELS:
            raise ValueError(f"--model {path!r} is neither a file, a folder nor one of {sorted(MODELS)}")
        path = str(fetch(path))
    digest = sha256_file(Path(path)) if Path(path).is_file() else None
    return load_source(str(path)), get_tokenizer(str(path)), {"path": shown_path(path), "sha256": digest}


def shown_path(path: str) -> str:
    """``path`` as a page shows it: under the home folder as ``~/...`` (no user's folder in a page)."""
    from pathlib import Path

    try:
        return "~/" + Path(path).resolve().relative_to(Path.home().resolve()).as_posix()
    except ValueError:
        return str(path)

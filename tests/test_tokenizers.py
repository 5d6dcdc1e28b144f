"""posenc.data.tokenizers: reference ids, ordinary special-token text, fast offline failure."""

from __future__ import annotations

import pickle
import re
import socket
import time

import pytest
from _data_helpers import no_network

from posenc.data import ByteTokenizer, TokenizerError, get_tokenizer, network, prepare


def test_byte_tokenizer_drops_nul_and_round_trips_utf8():
    tok = get_tokenizer("bytes")
    assert isinstance(tok, ByteTokenizer) and (tok.vocab_size, tok.eot) == (256, 0)
    text = "a\0b Ünï 🙂"
    assert tok.encode(text) == list("ab Ünï 🙂".encode())
    assert tok.encode_documents([text, ""]).tolist() == tok.encode(text) + [0, 0]
    assert tok.decode(tok.encode(text)) == "ab Ünï 🙂"


def test_tokenizers_pickle_by_name(gpt2_cache):
    # Worker processes receive the tokenizer; it must rebuild from its name, not carry BPE tables.
    for name in ("bytes", "gpt2"):
        tok = get_tokenizer(name)
        blob = pickle.dumps(tok)
        assert len(blob) < 200, (name, len(blob))
        again = pickle.loads(blob)
        assert type(again) is type(tok) and again.encode("Hello world") == tok.encode("Hello world")


def test_gpt2_tokenizer_without_cached_files_fails_fast(tmp_path, monkeypatch):
    requests = pytest.importorskip("requests")

    def hang(*args, **kwargs):
        time.sleep(60)

    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", str(tmp_path))  # empty
    monkeypatch.setattr(socket, "create_connection", no_network)
    monkeypatch.setattr(requests, "get", hang)  # what tiktoken would download with, without a timeout
    t0 = time.perf_counter()
    with pytest.raises(TokenizerError, match=r"TIKTOKEN_CACHE_DIR.*get_tokenizer\('bytes'\).*tokenizer='bytes'") as err:
        get_tokenizer("gpt2")
    assert time.perf_counter() - t0 < 5
    assert not re.search(r"(?<![\w-])--\w", str(err.value)), "a library message names functions, not flags"

    # A resolver that never answers costs the probe timeout, not minutes.
    monkeypatch.setattr(socket, "create_connection", hang)
    monkeypatch.setattr(network, "PROBE_TIMEOUT_S", 0.5)
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


def test_unknown_tokenizer_is_refused_with_the_choices():
    with pytest.raises(ValueError, match=r"unknown tokenizer 'bpe'; expected 'gpt2' or 'bytes'"):
        get_tokenizer("bpe")

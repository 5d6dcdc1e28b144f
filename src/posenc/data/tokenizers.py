"""Text tokenizers for pretraining shards: GPT-2 BPE (through tiktoken), UTF-8 bytes, and a
pretrained model's own (a GGUF file or Hugging Face model folder, through transformers).

Every document is encoded without special tokens (text that spells ``<|endoftext|>`` is ordinary
text) and followed by the end-of-text id.

- ``"gpt2"``: GPT-2 BPE, tiktoken's ``r50k_base`` ranks; vocab 50257, EOT 50256.
- ``"bytes"``: UTF-8 bytes; vocab 256, EOT 0. The NUL character is removed from documents because
  it is the separator.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np

from posenc.data import network
from posenc.data.errors import DataError, TokenizerError

TokenizerName = Literal["gpt2", "bytes"]


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


def _gpt2_encoding() -> Any:
    try:
        import tiktoken
    except ImportError as e:
        raise TokenizerError("the gpt2 tokenizer needs tiktoken: pip install tiktoken") from e
    cache_file = _tiktoken_cache_file()
    hint = (
        f"set TIKTOKEN_CACHE_DIR to a folder holding tiktoken's {_TIKTOKEN_ENCODING} ranks "
        f"(file {cache_file.name if cache_file else '<sha1 of the URL>'}, downloaded from {_TIKTOKEN_URL}), "
        "or use the byte-level tokenizer, which needs no files: get_tokenizer('bytes') "
        "(posenc.data.prepare(..., tokenizer='bytes'))"
    )
    if (cache_file is None or not cache_file.is_file()) and not network.reachable(_TIKTOKEN_HOST):
        where = f"not in the cache ({cache_file})" if cache_file else "not cached (TIKTOKEN_CACHE_DIR is empty)"
        raise TokenizerError(f"GPT-2 BPE ranks are {where} and {_TIKTOKEN_HOST} cannot be reached; {hint}") from None
    try:
        return tiktoken.get_encoding(_TIKTOKEN_ENCODING)  # tiktoken keeps it for the next call
    except Exception as e:  # a download or hash failure: report it, not the HTTP stack
        raise TokenizerError(f"could not load the GPT-2 BPE ranks ({type(e).__name__}: {e}); {hint}") from None


class PretrainedTokenizer(Tokenizer):
    """The tokenizer of a pretrained model: a GGUF file's (transformers builds it from the file's
    vocabulary and merges) or a Hugging Face model folder's. ``name`` is the path; ``eot`` the
    model's end-of-sequence id. ``encode`` adds no special tokens."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        try:
            from transformers import AutoTokenizer
        except ImportError as e:
            raise TokenizerError(f"the tokenizer of {path} needs transformers: pip install 'posenc[gguf]' ({e})") from e
        p = Path(path).expanduser()
        if not p.exists():
            raise TokenizerError(f"tokenizer {str(path)!r}: no such GGUF file or model folder")
        is_gguf = p.is_file()
        self.hf = AutoTokenizer.from_pretrained(p.parent if is_gguf else p, gguf_file=p.name if is_gguf else None)
        if self.hf.eos_token_id is None:
            raise TokenizerError(f"the tokenizer of {path} has no end-of-sequence token")
        self.name, self.eot, self.vocab_size = str(p), int(self.hf.eos_token_id), len(self.hf)

    def encode(self, text: str) -> list[int]:
        return self.hf.encode(text, add_special_tokens=False)

    def decode(self, ids: Sequence[int]) -> str:
        return self.hf.decode([int(i) for i in ids])


def get_tokenizer(name: TokenizerName | str) -> Tokenizer:
    """The tokenizer called ``name``: ``"gpt2"`` (GPT-2 BPE), ``"bytes"`` (UTF-8 bytes), or the path
    of a GGUF file or Hugging Face model folder (:class:`PretrainedTokenizer`).

    ``"gpt2"`` reads tiktoken's cached ranks (``TIKTOKEN_CACHE_DIR``) or downloads them; when
    neither works it raises :class:`TokenizerError` within a few seconds.
    """
    if name == "bytes":
        return ByteTokenizer()
    if name == "gpt2":
        return GPT2Tokenizer(_gpt2_encoding())
    if is_model_path(name):
        return PretrainedTokenizer(name)
    raise DataError(f"unknown tokenizer {name!r}; expected 'gpt2' or 'bytes', or a GGUF file or model folder")


def is_model_path(name: Any) -> bool:
    """Whether a tokenizer name is a path (of a GGUF file or model folder) rather than a built-in name."""
    return isinstance(name, str) and bool(name) and ("/" in name or name.endswith(".gguf") or Path(name).exists())

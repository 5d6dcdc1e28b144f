"""Pretraining data: tokenizers, corpora, flat token shards and the batches drawn from them.

Modules, in the order data flows through them:

- :mod:`~posenc.data.tokenizers`: ``get_tokenizer("gpt2" | "bytes")``; every document is followed
  by the end-of-text id.
- :mod:`~posenc.data.corpora`: the corpora (``source="owt" | "files" | "embedded"``) and
  :func:`split_documents`, the seeded document split.
- :mod:`~posenc.data.shards`: :func:`prepare` writes ``train.bin``, ``val.bin`` (flat token arrays,
  nanoGPT's format) and ``meta.json``; :func:`load_split` opens a shard after checking it.
- :mod:`~posenc.data.batches`: :func:`batch_offsets` and :func:`get_batch`, the step-keyed batches.
- :mod:`~posenc.data.errors`: :class:`DataError` and :class:`TokenizerError`.

Every failure is a :class:`DataError` naming the path (where there is one) and the reason.
"""

from posenc.data.batches import batch_offsets, document_ids, get_batch
from posenc.data.corpora import (
    DEFAULT_FRACTIONS,
    EMBEDDED_MIN_BYTES,
    OWT_DATASET,
    Source,
    embedded_documents,
    split_documents,
)
from posenc.data.errors import DataError, TokenizerError
from posenc.data.shards import (
    FORMAT_VERSION,
    META_NAME,
    SPLITS,
    DtypeName,
    Split,
    load_split,
    prepare,
    read_meta,
    refuse_another_corpus,
    shard_dtype,
)
from posenc.data.tokenizers import (
    ByteTokenizer,
    GPT2Tokenizer,
    Tokenizer,
    TokenizerName,
    get_tokenizer,
)

__all__ = [
    "DEFAULT_FRACTIONS",
    "EMBEDDED_MIN_BYTES",
    "FORMAT_VERSION",
    "META_NAME",
    "OWT_DATASET",
    "SPLITS",
    "ByteTokenizer",
    "DataError",
    "DtypeName",
    "GPT2Tokenizer",
    "Source",
    "Split",
    "Tokenizer",
    "TokenizerError",
    "TokenizerName",
    "batch_offsets",
    "embedded_documents",
    "get_batch",
    "document_ids",
    "get_tokenizer",
    "load_split",
    "prepare",
    "refuse_another_corpus",
    "read_meta",
    "shard_dtype",
    "split_documents",
]

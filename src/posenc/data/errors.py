"""The exceptions of :mod:`posenc.data`; both are ``ValueError`` subclasses."""

from __future__ import annotations


class DataError(ValueError):
    """A data problem: a missing, partial or mismatched file, an unusable input, a bad option.

    The message names the path (where there is one) and the reason.
    """


class TokenizerError(DataError):
    """The tokenizer cannot be loaded (its files are not cached and cannot be downloaded)."""

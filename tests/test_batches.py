"""posenc.data.batches: the batch order is a pure function of (seed, step, micro); targets are
the inputs shifted by one token."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from posenc.data import batch_offsets, get_batch


def test_offsets_follow_the_documented_generator_and_keep_every_row_inside_the_split():
    n, T, B = 1_000, 64, 32
    offsets = batch_offsets(n, T, B, seed=7, step=3, micro=1)
    expected = np.random.default_rng([7, 3, 1]).integers(0, n - T, size=B, dtype=np.int64)  # the documented rule
    assert offsets.dtype == np.int64 and np.array_equal(offsets, expected)
    assert offsets.min() >= 0 and offsets.max() + T + 1 <= n
    # The smallest split: only offset 0 leaves room for block_size + 1 tokens.
    assert batch_offsets(T + 1, T, B, seed=0, step=0).tolist() == [0] * B


def test_offsets_depend_on_seed_step_and_micro_only():
    ref = batch_offsets(10_000, 16, 8, seed=1, step=5, micro=0)
    assert np.array_equal(ref, batch_offsets(10_000, 16, 8, seed=1, step=5, micro=0))
    for other in (dict(seed=2, step=5, micro=0), dict(seed=1, step=6, micro=0), dict(seed=1, step=5, micro=1)):
        assert not np.array_equal(ref, batch_offsets(10_000, 16, 8, **other)), other


def test_a_split_shorter_than_block_size_plus_one_is_refused_with_the_sizes():
    with pytest.raises(ValueError, match=r"split of 64 tokens is shorter than block_size \+ 1 = 65"):
        batch_offsets(64, 64, 4, seed=0, step=0)


def test_get_batch_rows_are_shifted_by_one_and_read_uint16_ids_unsigned(tmp_path):
    tokens = np.arange(60_000, 60_000 + 200, dtype=np.uint16)  # ids above 32767: no sign wrap
    path = tmp_path / "train.bin"
    tokens.tofile(path)
    shard = np.memmap(path, dtype=np.uint16, mode="r", shape=(tokens.size,))
    offsets = np.array([0, 17, 200 - 9], dtype=np.int64)
    x, y = get_batch(shard, offsets, block_size=8)
    assert x.shape == y.shape == (3, 8) and x.dtype == y.dtype == torch.int64
    for row, o in enumerate(offsets):
        assert x[row].tolist() == tokens[o : o + 8].astype(np.int64).tolist()
        assert y[row].tolist() == tokens[o + 1 : o + 9].astype(np.int64).tolist()

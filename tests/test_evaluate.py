"""posenc.evaluate on tiny random models: the losses are the model's own cross-entropy, every
context scores the same targets, a learned table is not evaluated past its length, the
fixed-batch validation loss is the trainer's loop, and a checkpoint's evaluation is cached."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from posenc import GPT, GPTConfig
from posenc.checkpoint import save_checkpoint
from posenc.data import DataError, batch_offsets, get_batch, prepare
from posenc.evaluate import (
    evaluate_checkpoint,
    length_extrapolation,
    max_positions,
    per_position_loss,
    token_losses,
    validation_loss,
    validation_windows,
)

T = 32  # the tiny preset's block_size
CPU = torch.device("cpu")


def tiny(pe: str, **overrides) -> GPT:
    torch.manual_seed(0)
    return GPT(GPTConfig.from_preset("tiny", pe=pe, **overrides)).eval()


def random_tokens(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, n).astype(np.uint16)


class Unigram(nn.Module):
    """The same next-token distribution at every position, whatever the input: a token's loss
    depends on its target alone. ``wpe.max_positions`` mimics a learned table of that length."""

    def __init__(self, table: int | None = None) -> None:
        super().__init__()
        self.logits = nn.Parameter(torch.randn(256, generator=torch.Generator().manual_seed(3)))
        self.wpe = nn.Module()
        self.wpe.max_positions = table
        self.calls: list[tuple[int, int]] = []

    def forward(self, idx, targets=None, *, positions=None):
        if self.wpe.max_positions is not None:
            assert positions is not None and int(positions.max()) < self.wpe.max_positions
        self.calls.append(tuple(idx.shape))
        logits = self.logits.expand(*idx.shape, 256)
        loss = None if targets is None else F.cross_entropy(logits.flatten(0, 1), targets.flatten())
        return logits, loss


def test_validation_windows_are_evenly_spaced_slices():
    tokens = np.arange(1000, dtype=np.uint16)
    w = validation_windows(tokens, 99, 4)
    assert w.shape == (4, 100) and w.dtype == torch.int64
    assert w[:, 0].tolist() == [0, 300, 600, 900] and w[-1, -1].item() == 999
    assert torch.equal(w[1], torch.arange(300, 400))
    with pytest.raises(DataError, match="fewer than 1,001"):
        validation_windows(tokens, 1000, 1)


@pytest.mark.parametrize("pe", ["rope", "alibi", "absolute"])
def test_token_losses_are_the_cross_entropy_of_a_direct_forward(pe):
    model = tiny(pe)
    windows = torch.from_numpy(random_tokens(3 * (4 * T + 1)).astype(np.int64)).view(3, 4 * T + 1)
    # 40 tokens per forward: one row at a time, so the batching is exercised
    losses = token_losses(model, windows, T, batch_tokens=40, device=CPU, dtype=torch.float32)
    assert losses.shape == (12, T) and losses.dtype == torch.float32
    x, y = windows[:, :-1].reshape(-1, T), windows[:, 1:].reshape(-1, T)
    with torch.no_grad():
        logits, loss = model(x, y)
    expected = F.cross_entropy(logits.flatten(0, 1), y.flatten(), reduction="none").view(12, T)
    torch.testing.assert_close(losses, expected, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(losses.mean(), loss, rtol=1e-5, atol=1e-6)
    # per_position_loss is the column mean, bucketed on request
    torch.testing.assert_close(torch.tensor(per_position_loss(model, windows, T, device=CPU)), expected.mean(0))
    buckets = per_position_loss(model, windows, T, width=8, device=CPU)
    torch.testing.assert_close(torch.tensor(buckets), expected.mean(0).view(4, 8).mean(1))


def test_every_context_scores_the_same_targets_in_the_same_order():
    model = Unigram()
    windows = torch.from_numpy(random_tokens(2 * (8 * T + 1), seed=4).astype(np.int64)).view(2, 8 * T + 1)
    expected = -torch.log_softmax(model.logits.detach(), -1)[windows[:, 1:]].reshape(-1)  # (2 * 8T,)
    for context in (T, 2 * T, 8 * T):
        losses = token_losses(model, windows, context, device=CPU)
        assert losses.shape == (2 * 8 * T // context, context)
        torch.testing.assert_close(losses.reshape(-1), expected, rtol=0, atol=1e-6)


def test_a_longer_context_only_adds_history():
    """Causality: the first T positions of a 4T row are the T-token row with the same inputs."""
    model = tiny("rope")
    windows = torch.from_numpy(random_tokens(2 * (4 * T + 1), seed=2).astype(np.int64)).view(2, 4 * T + 1)
    short = token_losses(model, windows, T, device=CPU)  # (8, T)
    long = token_losses(model, windows, 4 * T, device=CPU)  # (2, 4T)
    torch.testing.assert_close(long[:, :T], short[::4], rtol=1e-5, atol=1e-5)
    assert not torch.allclose(long[:, T : 2 * T], short[1::4])  # the second T tokens did see the first


def test_token_losses_refuses_a_context_that_does_not_divide_the_window():
    with pytest.raises(ValueError, match="context 24 must divide the 64"):
        token_losses(tiny("nope"), torch.zeros(1, 65, dtype=torch.int64), 24, device=CPU)


def test_length_extrapolation_stops_where_a_learned_table_ends():
    tokens = random_tokens(20_000)
    absolute = length_extrapolation(tiny("absolute"), tokens, block_size=T, windows=2, multipliers=(1, 2, 4))
    assert max_positions(tiny("absolute")) == T
    assert list(absolute["extrapolation"]) == ["1", "2", "4"]
    assert absolute["extrapolation"]["1"] is not None
    assert absolute["extrapolation"]["2"] is absolute["extrapolation"]["4"] is None
    assert len(absolute["per_position"]) == T and absolute["per_position_long"] is None
    sinusoidal = length_extrapolation(tiny("sinusoidal"), tokens, block_size=T, windows=2, multipliers=(1, 2, 4))
    assert all(x is not None and 0 < x < 10 for x in sinusoidal["extrapolation"].values())
    # the limit is the model's, not the block size's
    stub = length_extrapolation(Unigram(table=2 * T), tokens, block_size=T, windows=2, multipliers=(1, 2, 4))
    assert [x is None for x in stub["extrapolation"].values()] == [False, False, True]


def test_length_extrapolation_is_token_losses_on_fixed_windows():
    model, tokens = tiny("alibi"), random_tokens(30_000, seed=5)
    out = length_extrapolation(model, tokens, block_size=T, windows=3, multipliers=(1, 2, 4), buckets=16)
    windows = validation_windows(tokens, 16 * T, 3)  # 16 contexts long, whatever the multipliers
    assert out["block_size"] == T and out["eval_tokens"] == 3 * 16 * T
    for m in (1, 2, 4):
        assert out["extrapolation"][str(m)] == token_losses(model, windows, m * T).mean().item()
    assert out["per_position"] == token_losses(model, windows, T).mean(0).tolist()
    assert out["per_position_long_width"] == 8 and len(out["per_position_long"]) == 16
    long = token_losses(model, windows, 4 * T).mean(0)
    assert out["per_position_long"] == long.view(16, 8).mean(1).tolist()
    default = length_extrapolation(model, tokens, block_size=T, windows=3)
    assert list(default["extrapolation"]) == ["1", "2", "4", "8", "16"]
    assert default["extrapolation"]["1"] == out["extrapolation"]["1"]


def test_the_loss_at_1x_does_not_depend_on_the_other_multipliers():
    model, tokens = Unigram(), random_tokens(30_000, seed=2)
    alone = length_extrapolation(model, tokens, block_size=T, windows=4, multipliers=(1,))["extrapolation"]["1"]
    for mults in [(1, 2), (1, 4, 16), (1, 2, 4, 8, 16)]:
        got = length_extrapolation(model, tokens, block_size=T, windows=4, multipliers=mults)
        assert got["extrapolation"]["1"] == alone, mults
    # a multiplier that does not divide 16 asks for windows of its own length; a span they do not divide is refused
    assert length_extrapolation(model, tokens, block_size=T, windows=4, multipliers=(1, 3))["eval_tokens"] == 4 * 3 * T
    with pytest.raises(ValueError, match="span=8"):
        length_extrapolation(model, tokens, block_size=T, windows=1, multipliers=(1, 16), span=8)


@pytest.mark.parametrize("bad", [(1, 3, 4), (0, 1), (), (1.5,)])
def test_length_extrapolation_refuses_bad_multipliers(bad):
    with pytest.raises(ValueError, match="multiplier"):
        length_extrapolation(Unigram(), random_tokens(5000), block_size=T, windows=1, multipliers=bad)


def test_validation_loss_is_the_trainers_fixed_batch_loop():
    model, tokens = tiny("rope", dropout=0.5), random_tokens(10_000, seed=7)
    model.train()
    got = validation_loss(model, tokens, block_size=T, batch_size=4, iters=3, device=CPU)
    assert model.training and all(m.training for m in model.modules())  # handed back as it came
    model.eval()
    total = torch.zeros((), dtype=torch.float64)
    with torch.no_grad():
        for i in range(3):
            x, y = get_batch(tokens, batch_offsets(len(tokens), T, 4, 0, i), T)
            total += model(x, y)[1].double()
    assert got == (total / 3).item()
    # another seed draws other batches; rows select a slice of each; reduce sees the float64 sum
    assert validation_loss(model, tokens, block_size=T, batch_size=4, iters=3, seed=1) != got
    half = torch.zeros((), dtype=torch.float64)
    with torch.no_grad():
        for i in range(3):
            x, y = get_batch(tokens, batch_offsets(len(tokens), T, 4, 0, i)[2:], T)
            half += model(x, y)[1].double()
    assert validation_loss(model, tokens, block_size=T, batch_size=4, iters=3, rows=slice(2, None)) == (half / 3).item()
    seen = []
    doubled = validation_loss(
        model, tokens, block_size=T, batch_size=4, iters=3, reduce=lambda t: seen.append(t.dtype) or t * 2
    )
    assert seen == [torch.float64] and doubled == pytest.approx(2 * got, rel=1e-12)


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """A run folder holding a trainer-shaped checkpoint of a random tiny RoPE model."""
    root = tmp_path_factory.mktemp("evaluate")
    data = prepare(root / "data", source="embedded", tokenizer="bytes", progress=False)
    model = tiny("rope")
    state = {
        "model": model.state_dict(),
        "optimizer": {},
        "scaler": {},
        "step": 6,
        "rng": {},
        "stats": {},
        "config": model.config.to_dict(),
        "train_config": {"dtype": "float32"},
        "data": {"data_dir": str(data)},
    }
    save_checkpoint(state, root / "run")
    return {"folder": root / "run", "data": data, "model": model}


def test_evaluate_checkpoint_evaluates_the_checkpoint_and_caches_it(run_dir):
    from posenc.data import load_split

    folder, model = run_dir["folder"], run_dir["model"]
    result = evaluate_checkpoint(folder, windows=2)
    assert list(result) == [
        "settings",
        "block_size",
        "eval_tokens",
        "extrapolation",
        "per_position",
        "per_position_long",
        "per_position_long_width",
        "eval_time_s",
    ]
    manifest = json.loads((folder / "checkpoints.json").read_text())
    assert result["settings"] == {
        "eval_windows": 2,
        "multipliers": [1, 2, 4, 8, 16],
        "span": 16,
        "buckets": 64,
        "checkpoint_sha256": manifest["sha256"],
        "data_dir": str(run_dir["data"].resolve()),
        "val_sha256": json.loads((run_dir["data"] / "meta.json").read_text())["splits"]["val"]["sha256"],
        "dtype": "float32",
    }
    val = load_split(run_dir["data"], "val")
    direct = length_extrapolation(model, val, block_size=T, windows=2, multipliers=(1, 2, 4, 8, 16))
    assert {k: result[k] for k in direct} == direct
    assert json.loads((folder / "eval.json").read_text()) == result

    # same settings: the cache is returned as saved, without evaluating
    cached = dict(result, eval_time_s=-1.0)
    (folder / "eval.json").write_text(json.dumps(cached))
    assert evaluate_checkpoint(folder, windows=2) == cached
    # other settings: evaluated again
    shorter = evaluate_checkpoint(folder, windows=2, multipliers=(1, 2, 4))
    assert list(shorter["extrapolation"]) == ["1", "2", "4"] and shorter["eval_time_s"] >= 0
    assert shorter["extrapolation"]["1"] == result["extrapolation"]["1"]  # the same windows: the same 1x
    assert all(math.isfinite(x) for x in shorter["extrapolation"].values())


def test_a_cached_evaluation_serves_only_the_same_checkpoint_and_data(run_dir, tmp_path):
    import shutil

    from posenc.checkpoint import CheckpointError

    folder = tmp_path / "run"
    shutil.copytree(run_dir["folder"], folder)
    first = evaluate_checkpoint(folder, windows=1, multipliers=(1, 2))
    # other validation data (another corpus): evaluated again, not served from the cache
    other = prepare(
        tmp_path / "other",
        source="files",
        data_files=[_docs(tmp_path)],
        tokenizer="bytes",
        val_fraction=0.2,
        progress=False,
    )
    again = evaluate_checkpoint(folder, windows=1, multipliers=(1, 2), data_dir=other)
    assert again["settings"]["data_dir"] == str(other.resolve()) and again["extrapolation"] != first["extrapolation"]
    # a damaged checkpoint is refused as resume and export refuse it, cached numbers or not
    ckpt = folder / json.loads((folder / "checkpoints.json").read_text())["latest"]
    ckpt.write_bytes(ckpt.read_bytes()[:-100])
    with pytest.raises(CheckpointError, match="truncated"):
        evaluate_checkpoint(folder, windows=1, multipliers=(1, 2), data_dir=other)


def _docs(tmp_path) -> str:
    from _data_helpers import write_jsonl

    return str(write_jsonl(tmp_path / "docs.jsonl", [f"another corpus {i}: " + "xyz " * (i % 50) for i in range(4000)]))


def test_evaluate_checkpoint_reads_another_data_dir(run_dir, tmp_path):
    with pytest.raises(DataError, match="meta.json"):
        evaluate_checkpoint(run_dir["folder"], windows=1, multipliers=(1, 2), data_dir=tmp_path)

"""Malformed model inputs raise named errors whose message gives the offending value.

Ids are range-checked on the host, so the same inputs on CUDA give these errors rather than a
device-side assert that kills the process.
"""

from __future__ import annotations

import pytest
import torch

from posenc import GPT, GPTConfig

B, T, V, BLOCK = 2, 6, 256, 32


@pytest.fixture(scope="module")
def models() -> dict[str, GPT]:
    torch.manual_seed(0)
    return {pe: GPT(GPTConfig.from_preset("tiny", pe=pe)).eval() for pe in ("absolute", "rope", "alibi", "sinusoidal")}


def ids(*shape: int) -> torch.Tensor:
    return torch.randint(0, V, shape, generator=torch.Generator().manual_seed(0))


def with_value(t: torch.Tensor, index: tuple, value) -> torch.Tensor:
    t = t.clone()
    t[index] = value
    return t


# id: (model, call kwargs, exception, strings the message must contain)
MALFORMED = {
    "longer-than-block-size": ("absolute", dict(idx=ids(1, BLOCK + 8)), ValueError, ("positions", "39", "32")),
    "float-ids": ("rope", dict(idx=ids(B, T).float()), TypeError, ("idx", "torch.float32")),
    "bool-ids": ("rope", dict(idx=ids(B, T) > 3), TypeError, ("idx", "torch.bool")),
    "ids-not-a-tensor": ("rope", dict(idx=[[1, 2, 3]]), TypeError, ("idx", "list")),
    "id-equal-to-vocab": (
        "rope",
        dict(idx=with_value(ids(B, T), (1, 2), V)),
        ValueError,
        ("vocab_size=256", "max 256"),
    ),
    "id-far-above-vocab": (
        "alibi",
        dict(idx=with_value(ids(B, T), (0, 0), 70000)),
        ValueError,
        ("vocab_size", "70000"),
    ),
    "negative-id": ("rope", dict(idx=with_value(ids(B, T), (0, 3), -1)), ValueError, ("token ids", "min -1")),
    "one-dimensional-ids": ("rope", dict(idx=ids(T)), ValueError, ("(B, T)", "(6,)")),
    "three-dimensional-ids": ("rope", dict(idx=ids(B, T, 1)), ValueError, ("(B, T)", "(2, 6, 1)")),
    "empty-batch": ("rope", dict(idx=ids(0, T)), ValueError, ("B > 0", "(0, 6)")),
    "empty-sequence": ("absolute", dict(idx=ids(B, 0)), ValueError, ("T > 0", "(2, 0)")),
    "targets-wrong-shape": (
        "rope",
        dict(idx=ids(B, T), targets=ids(B, T - 1)),
        ValueError,
        ("targets", "(2, 5)", "(2, 6)"),
    ),
    "targets-flattened": ("rope", dict(idx=ids(B, T), targets=ids(B * T)), ValueError, ("targets", "(12,)")),
    "targets-float": ("rope", dict(idx=ids(B, T), targets=ids(B, T).float()), TypeError, ("targets", "torch.float32")),
    "target-equal-to-vocab": (
        "rope",
        dict(idx=ids(B, T), targets=with_value(ids(B, T), (0, 1), V)),
        ValueError,
        ("targets", "max 256"),
    ),
    "target-below-ignore-index": (
        "rope",
        dict(idx=ids(B, T), targets=with_value(ids(B, T), (0, 1), -2)),
        ValueError,
        ("targets", "min -2"),
    ),
    "positions-beyond-table": (
        "absolute",
        dict(idx=ids(B, T), positions=torch.arange(T) + 30),
        ValueError,
        ("positions", "35", "32"),
    ),
    "negative-positions": ("rope", dict(idx=ids(B, T), positions=torch.arange(T) - 3), ValueError, ("positions", "-3")),
    "negative-positions-alibi": (
        "alibi",
        dict(idx=ids(B, T), positions=torch.arange(T) - 1),
        ValueError,
        ("positions", "-1"),
    ),
    "positions-wrong-length": (
        "rope",
        dict(idx=ids(B, T), positions=torch.arange(T + 1)),
        ValueError,
        ("positions", "(7,)"),
    ),
    "positions-wrong-batch": (
        "rope",
        dict(idx=ids(B, T), positions=torch.arange(T).expand(3, T)),
        ValueError,
        ("positions", "(3, 6)"),
    ),
    "positions-3d": (
        "rope",
        dict(idx=ids(B, T), positions=torch.arange(T).view(1, 1, T)),
        ValueError,
        ("positions", "(1, 1, 6)"),
    ),
    "positions-float": (
        "rope",
        dict(idx=ids(B, T), positions=torch.arange(T).float()),
        TypeError,
        ("positions", "torch.float32"),
    ),
}


@pytest.mark.parametrize("pe, kwargs, error, needles", list(MALFORMED.values()), ids=list(MALFORMED))
def test_malformed_input_raises_a_named_error(
    models, pe: str, kwargs: dict, error: type[Exception], needles: tuple
) -> None:
    with pytest.raises(error) as info:
        models[pe](**kwargs)
    for needle in needles:
        assert needle in str(info.value), (needle, str(info.value))


@pytest.mark.parametrize("pe", ["rope", "alibi", "sinusoidal"])
def test_relative_and_fixed_encodings_accept_sequences_longer_than_block_size(models, pe: str) -> None:
    # the counterpart of "longer-than-block-size": only the learned table has a hard limit
    logits, _ = models[pe](ids(1, BLOCK + 8))
    assert logits.shape == (1, BLOCK + 8, V) and torch.isfinite(logits).all()


def test_valid_inputs_pass(models) -> None:
    idx = ids(B, T)
    targets = with_value(ids(B, T), (0, 0), -1)
    for model in models.values():
        _, loss = model(idx, targets, positions=torch.arange(T).expand(B, T))
        assert torch.isfinite(loss)
    models["absolute"](ids(1, BLOCK))  # exactly block_size is allowed
    models["rope"](idx.int())  # int32 ids are accepted


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(max_new_tokens=-1), "max_new_tokens.*-1"),
        (dict(max_new_tokens=2.5), "max_new_tokens.*2.5"),
        (dict(max_new_tokens=2, temperature=-0.5), "temperature.*-0.5"),
        (dict(max_new_tokens=2, temperature=float("nan")), "temperature.*nan"),
        (dict(max_new_tokens=2, top_k=0), "top_k.*0"),
    ],
    ids=["negative-count", "float-count", "negative-temperature", "nan-temperature", "top-k-zero"],
)
def test_generate_refuses_bad_arguments(models, kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        models["rope"].generate(ids(1, 3), **kwargs)

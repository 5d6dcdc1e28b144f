"""Initialisation: each module draws its own parameters, and the result equals what the GPT-2
initialiser of the whole model gave (tests/fixtures/init/init_states.json, written by
make_init_states.py beside it from the code that initialised by parameter name)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch

FIXTURE = Path(__file__).parent / "fixtures" / "init"
sys.path.insert(0, str(FIXTURE))
from make_init_states import CONFIGS, RNG_AFTER, build, state_digest  # noqa: E402

EXPECTED = json.loads((FIXTURE / "init_states.json").read_text())


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_initial_state_is_unchanged(name):
    got = state_digest(build(name)) | {RNG_AFTER: repr(torch.rand(()).item())}
    want = EXPECTED[name]
    assert sorted(got) == sorted(want)
    changed = [key for key in want if got[key] != want[key]]
    assert not changed, f"{name}: initial values changed for {changed}"


def test_seed_changes_the_state():
    """The digests see the values: another seed gives other matrices."""
    assert (
        state_digest(build("rope", seed=2))["blocks.0.attn.c_attn.weight"]
        != EXPECTED["rope"]["blocks.0.attn.c_attn.weight"]
    )

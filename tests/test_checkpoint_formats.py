"""Checkpoints written by earlier posenc versions still load, build the same model and resume.

The fixtures in tests/fixtures/checkpoints/ were written by those versions' own training code
(``make_fixtures.py`` there regenerates them from the named commits): format 1 (no ``format`` key,
the flat GPTConfig of 0.1) and format 2 (posenc 0.2). Each holds the logits its version gave.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch

from posenc import GPT
from posenc.train import resume_configs
from posenc.train.state import load_run

FIXTURES = Path(__file__).parent / "fixtures" / "checkpoints"


@pytest.mark.parametrize("name", ["format1", "format2"])
def test_an_old_checkpoint_builds_the_model_it_was_trained_as(name: str) -> None:
    folder = FIXTURES / name
    state = load_run(folder)
    assert ("format" in state) == (name == "format2")
    config, train_config = resume_configs(folder)
    model = GPT(config)
    model.load_state_dict(state["model"], strict=True)
    model.eval()
    expected = torch.load(folder / "expected.pt", weights_only=True)
    with torch.no_grad():
        logits, _ = model(expected["idx"])
    torch.testing.assert_close(logits, expected["logits"], rtol=0, atol=1e-6)
    assert train_config.max_iters == 2 and train_config.out_dir == str(folder)


@pytest.mark.parametrize("name", ["format1", "format2"])
def test_an_old_run_folder_resumes(name: str, tmp_path: Path, data_dir: Path) -> None:
    from posenc.train import train

    folder = tmp_path / name
    shutil.copytree(FIXTURES / name, folder)
    config, cfg = resume_configs(folder, device="cpu")
    cfg = cfg.__class__.from_dict(cfg.to_dict() | {"max_iters": 3, "data_dir": str(data_dir)})
    summary = train(config, cfg, resume=True, progress=False, log=lambda *a, **k: None)
    assert summary is not None and summary["steps"] == 3

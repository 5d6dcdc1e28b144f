"""Model presets are sizes and parts; they build the configs the flat presets of posenc 0.3 built."""

import json
from pathlib import Path

import pytest

from posenc import PRESETS, GPTConfig, LayerSpec, Mask, RotaryEmbedding
from posenc.config import NO_BIAS_LAYER

FIXTURE = json.loads((Path(__file__).parent / "fixtures" / "configs" / "presets.json").read_text())


@pytest.mark.parametrize("case", FIXTURE, ids=lambda c: f"{c['preset']}-{'-'.join(map(str, c['overrides'].values()))}")
def test_presets_build_the_configs_of_the_flat_presets(case: dict) -> None:
    config = GPTConfig.from_preset(case["preset"], **case["overrides"])
    assert config.to_dict() == case["config"]
    assert config == GPTConfig.from_dict(case["config"])


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_presets_are_sizes_and_parts(name: str) -> None:
    assert set(PRESETS[name]) <= {
        "block_size",
        "vocab_size",
        "n_layer",
        "n_head",
        "n_embd",
        "dropout",
        "head",
        "layers",
    }


def test_a_preset_takes_layers() -> None:
    local = NO_BIAS_LAYER.replace(pe=RotaryEmbedding.Config(base=1e4), mask=Mask(window=8))
    config = GPTConfig.from_preset("tiny", layers=(NO_BIAS_LAYER.replace(pe="rope"), local))
    assert [layer.window for layer in config.layers] == [None, 8, None, 8]
    assert config.layer_codes == ("R", "r", "R", "r")
    assert config.head == GPTConfig.from_preset("tiny").head  # the preset's head is kept
    assert GPTConfig.from_preset("tiny", layers=(LayerSpec(),), n_layer=2).n_layer == 2


def test_a_preset_refuses_flat_fields_with_layers() -> None:
    with pytest.raises(ValueError, match=r"\['pe'\] and \['layers'\] both describe the layers"):
        GPTConfig.from_preset("tiny", pe="rope", layers=(LayerSpec(),))


def test_flat_fields_keep_the_presets_biases() -> None:
    assert GPTConfig.from_preset("tiny", pe="rope") == GPTConfig(**{**_sizes("tiny"), "pe": "rope", "bias": False})
    assert GPTConfig.from_preset("gpt2", pe="rope") == GPTConfig(**{**_sizes("gpt2"), "pe": "rope"})


def _sizes(name: str) -> dict:
    return {k: v for k, v in PRESETS[name].items() if k not in ("head", "layers")}

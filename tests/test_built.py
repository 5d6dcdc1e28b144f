"""One constructor path (posenc/built.py): every registered attention variant and encoding is built
as ``Module(config, dims)``, and the flat-keyword constructors of the README go through it."""

from __future__ import annotations

import inspect

import pytest
import torch

from posenc.attention import ATTENTIONS, Attention, CausalSelfAttention
from posenc.attention.mask import Mask
from posenc.encodings import ENCODINGS
from posenc.encodings.alibi import ALiBi
from posenc.encodings.base import ModelDims, PositionalEncoding
from posenc.encodings.rope import RotaryEmbedding

#: what an attention layer holds beside its config and sizes: its encoding, mask and dropout
LAYER_PARTS = {"pe", "mask", "dropout"}


def constructor(cls: type) -> tuple[list[str], set[str]]:
    params = list(inspect.signature(cls.__init__).parameters.values())[1:]
    positional = [p.name for p in params if p.kind is p.POSITIONAL_OR_KEYWORD]
    keyword = {p.name for p in params if p.kind is not p.POSITIONAL_OR_KEYWORD}
    return positional, keyword


@pytest.mark.parametrize("name", sorted(ENCODINGS))
def test_an_encoding_takes_its_config_and_the_sizes(name):
    cls = ENCODINGS[name][1]
    assert constructor(cls) == (["config", "dims"], set()), f"{cls.__name__}.__init__{inspect.signature(cls.__init__)}"


@pytest.mark.parametrize("name", sorted(ATTENTIONS))
def test_an_attention_variant_takes_its_config_the_sizes_and_the_layer_parts(name):
    cls = ATTENTIONS[name]
    positional, keyword = constructor(cls)
    assert positional == ["config", "dims"] and keyword <= LAYER_PARTS, (
        f"{cls.__name__}.__init__{inspect.signature(cls.__init__)}"
    )


def test_the_readme_constructors_build_the_config_and_take_the_one_path():
    dims = ModelDims(n_embd=64, n_head=4, block_size=16)
    config = CausalSelfAttention.Config(qk_norm="rms", n_kv_head=2, proj_bias=False)
    torch.manual_seed(0)
    pe = RotaryEmbedding(16)
    flat = CausalSelfAttention(64, 4, pe=pe, qk_norm="rms", n_kv_head=2, proj_bias=False, block_size=16, window=8)
    torch.manual_seed(0)
    built = CausalSelfAttention(config, dims, pe=RotaryEmbedding.Config().build(dims), mask=Mask(window=8))
    assert flat.config == built.config and flat.mask == built.mask
    torch.testing.assert_close(flat.state_dict(), built.state_dict(), rtol=0, atol=0)
    assert torch.equal(ALiBi(8).slopes, ALiBi.Config().build(ModelDims(n_embd=64, n_head=8, block_size=4)).slopes)
    assert RotaryEmbedding(16, cache_len=100).cos_cached.shape[0] == 100


def test_a_module_without_a_factory_says_how_it_is_built():
    class Bare(PositionalEncoding):
        def __init__(self, config, dims) -> None:
            super().__init__()
            self.config = config

    with pytest.raises(TypeError, match=r"Bare takes \(config, dims\)"):
        Bare(4)
    assert Bare().config == Bare.Config()  # no sizes, no options: the config path
    with pytest.raises(TypeError, match=r"Attention takes \(config, dims"):
        Attention(64, 4)

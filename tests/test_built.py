"""One constructor path (posenc/built.py): every module of the library is built as
``Module(config, dims)`` (and the layer's parts), and the flat-keyword constructors of the README go
through it."""

from __future__ import annotations

import importlib
import inspect
import pkgutil
import types

import pytest
import torch
from torch import nn

import posenc
from posenc.attention import ATTENTIONS, Attention, CausalSelfAttention, QKNorm
from posenc.attention.mask import Mask
from posenc.encodings import ENCODINGS
from posenc.encodings.alibi import ALiBi
from posenc.encodings.base import ModelDims, PositionalEncoding
from posenc.encodings.rope import RotaryEmbedding
from posenc.model import MLP, Block, RNoPEBlock
from posenc.vision.axial import AxialRotaryEmbedding
from posenc.vision.vit import ViT

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


# -- every module of the library: its config, its sizes and the layer's parts, nothing else -----------

#: keyword-only parts a module may take beside (config, dims): a layer's encoding, mask, dropout and
#: (for a block) its attention
MODULE_PARTS = LAYER_PARTS | {"attn"}


def library_modules() -> list[types.ModuleType]:
    return [importlib.import_module(m.name) for m in pkgutil.walk_packages(posenc.__path__, "posenc.")]


def module_classes(modules: list[types.ModuleType]) -> list[type]:
    """The nn.Module subclasses defined in ``modules`` with a constructor of their own."""
    found = {
        obj
        for mod in modules
        for obj in vars(mod).values()
        if inspect.isclass(obj) and issubclass(obj, nn.Module) and obj.__module__ == mod.__name__
    }
    return sorted((c for c in found if "__init__" in c.__dict__), key=lambda c: f"{c.__module__}.{c.__qualname__}")


def constructor_violation(cls: type) -> str | None:
    """Why ``cls.__init__`` is not ``(config[, dims], *, <layer parts>)``, or None."""
    params = list(inspect.signature(cls.__dict__["__init__"]).parameters.values())[1:]
    positional = [p.name for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    keyword = {p.name for p in params if p.kind is p.KEYWORD_ONLY}
    varargs = [p.name for p in params if p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]
    if positional in (["config"], ["config", "dims"]) and keyword <= MODULE_PARTS and not varargs:
        return None
    return f"{cls.__module__}.{cls.__qualname__}.__init__{inspect.signature(cls.__dict__['__init__'])}"


def test_every_module_takes_its_config_its_sizes_and_the_layer_parts():
    classes = module_classes(library_modules())
    names = {c.__qualname__ for c in classes}
    assert {"QKNorm", "MLP", "Block", "AxialRotaryEmbedding", "RNoPEBlock", "ViT", "CausalSelfAttention"} <= names
    assert [v for c in classes if (v := constructor_violation(c))] == []


def test_the_scan_finds_a_module_with_a_flat_constructor():
    fake = types.ModuleType("posenc.fake")

    class Flat(nn.Module):
        def __init__(self, n_embd: int, n_head: int, *, bias: bool = True) -> None:
            super().__init__()

    class Sized(nn.Module):
        def __init__(self, config, dims, *, dropout: float = 0.0, **options) -> None:
            super().__init__()

    class Inherits(Flat):  # checked where its constructor is defined
        pass

    for cls in (Flat, Sized, Inherits):
        cls.__module__ = fake.__name__
        setattr(fake, cls.__name__, cls)
    assert [c.__name__ for c in module_classes([fake])] == ["Flat", "Sized"]
    assert [c.__name__ for c in module_classes([fake]) if constructor_violation(c)] == ["Flat", "Sized"]
    assert constructor_violation(Block) is None and constructor_violation(ViT) is None


def test_the_flat_factories_build_the_config_and_take_the_one_path():
    dims = ModelDims(n_embd=32, n_head=4, block_size=16)
    norm = QKNorm(8, 4, "l2", block_size=16)
    assert norm.config == QKNorm.Config(kind="l2") and torch.equal(
        norm.temperature, QKNorm.Config(kind="l2").build(dims).temperature
    )
    assert QKNorm(8, 4, "rms_full", n_kv_head=2).k_norm.weight.shape == (16,)
    torch.manual_seed(0)
    flat = MLP(32, MLP.Config(kind="swiglu"), 0.1)
    torch.manual_seed(0)
    built = MLP(MLP.Config(kind="swiglu"), dims, dropout=0.1)
    torch.testing.assert_close(flat.state_dict(), built.state_dict(), rtol=0, atol=0)
    attn = CausalSelfAttention(32, 4)
    assert (
        Block(32, Block.Config(), attn).attn is attn
        and Block(Block.Config(), dims, attn=attn).mlp.c_fc.out_features == 128
    )
    rope = AxialRotaryEmbedding(8, 2, base=100.0, n_heads=4, mixed=True, seed=3, n_prefix=1)
    config = AxialRotaryEmbedding.Config(base=100.0, mixed=True, seed=3, n_prefix=1)
    assert rope.config == config and torch.equal(rope.freqs, config.build(dims).freqs)
    torch.manual_seed(0)
    flat = RNoPEBlock(32, 4, "rrrN", sliding_window=4, block_size=16)
    torch.manual_seed(0)
    built = RNoPEBlock(RNoPEBlock.Config("rrrN", sliding_window=4), dims)
    torch.testing.assert_close(flat.state_dict(), built.state_dict(), rtol=0, atol=0)

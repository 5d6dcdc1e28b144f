"""GPTConfig: every invalid configuration is refused at construction with a named error.

Each row of INVALID gives the overrides (on top of a valid tiny base), the exception type, and
the strings its message must contain: the field name and the bad value. The same table runs
again in a fresh interpreter under ``python -O``, which strips ``assert`` statements, to show that
none of the checks is an assert.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from posenc import GPT, PRESETS, GPTConfig, LayerSpec, Mask, MultiHeadLatentAttention, NoPE, RotaryEmbedding
from posenc.variants import variant_names

BASE = dict(n_layer=4, n_head=2, n_embd=32, block_size=32, vocab_size=256, bias=False)

# id: (overrides, exception, strings the message must contain)
INVALID: dict[str, tuple[dict, type[Exception], tuple[str, ...]]] = {
    "n_embd-not-divisible": (dict(n_embd=30, n_head=4), ValueError, ("n_embd", "30", "n_head=4")),
    "odd-head-dim-with-rope": (dict(n_embd=6, n_head=2, pe="rope"), ValueError, ("head_dim", "=3")),
    "odd-head-dim-with-qknorm": (dict(n_embd=10, n_head=2, pe="qknorm"), ValueError, ("head_dim", "=5")),
    "odd-rotary-dim": (dict(pe="rope", rotary_dim=7), ValueError, ("rotary_dim", "7")),
    "rotary-dim-zero": (dict(pe="rope", rotary_dim=0), ValueError, ("rotary_dim", "=0")),
    "rotary-dim-above-head-dim": (dict(pe="rope", rotary_dim=18), ValueError, ("rotary_dim", "18", "head_dim=16")),
    "rotary-dim-without-rope": (dict(pe="alibi", rotary_dim=8), ValueError, ("rotary_dim", "8")),
    "unknown-pe": (dict(pe="xpos"), ValueError, ("pe", "'xpos'")),
    "unknown-pattern-char": (dict(layer_pattern="RRXN"), ValueError, ("layer_pattern", "'RRXN'", "'X'", "index 2")),
    "pattern-digit": (dict(layer_pattern="R1"), ValueError, ("layer_pattern", "'1'")),
    "empty-pattern": (dict(layer_pattern=""), ValueError, ("layer_pattern", "''")),
    "block-size-zero": (dict(block_size=0), ValueError, ("block_size", "0")),
    "block-size-negative": (dict(block_size=-8), ValueError, ("block_size", "-8")),
    "block-size-float": (dict(block_size=32.0), TypeError, ("block_size", "32.0")),
    "vocab-size-zero": (dict(vocab_size=0), ValueError, ("vocab_size", "0")),
    "n-layer-zero": (dict(n_layer=0), ValueError, ("n_layer", "0")),
    "n-layer-bool": (dict(n_layer=True), TypeError, ("n_layer", "True")),
    "n-head-negative": (dict(n_head=-2), ValueError, ("n_head", "-2")),
    "dropout-one": (dict(dropout=1.0), ValueError, ("dropout", "1.0")),
    "dropout-negative": (dict(dropout=-0.1), ValueError, ("dropout", "-0.1")),
    "dropout-string": (dict(dropout="0.1"), ValueError, ("dropout", "'0.1'")),
    "rope-base-zero": (dict(pe="rope", rope_base=0.0), ValueError, ("rope_base", "0.0")),
    "rope-base-negative": (dict(pe="rope", rope_base=-10000.0), ValueError, ("rope_base", "-10000.0")),
    "rope-base-nan": (dict(pe="rope", rope_base=float("nan")), ValueError, ("rope_base", "nan")),
    "unknown-rope-layout": (dict(pe="rope", rope_layout="neox"), ValueError, ("rope_layout", "'neox'")),
    "unknown-qk-norm-type": (dict(pe="qknorm", qk_norm_type="layernorm"), ValueError, ("qk_norm_type", "'layernorm'")),
    "qk-norm-not-bool": (dict(qk_norm="yes"), TypeError, ("qk_norm", "'yes'")),
    "bias-not-bool": (dict(bias=1), TypeError, ("bias", "1")),
    "sliding-window-zero": (dict(layer_pattern="rN", sliding_window=0), ValueError, ("sliding_window", "0")),
    "sliding-window-negative": (dict(layer_pattern="rN", sliding_window=-4), ValueError, ("sliding_window", "-4")),
    "lower-case-without-window": (
        dict(layer_pattern="rrrN"),
        ValueError,
        ("layer_pattern", "'rrrN'", "sliding_window"),
    ),
    "window-on-no-layer-pattern": (
        dict(layer_pattern="RRRN", sliding_window=8),
        ValueError,
        ("sliding_window", "8", "'RRRN'"),
    ),
    "window-on-no-layer-nope": (dict(pe="nope", sliding_window=8), ValueError, ("sliding_window", "8", "['nope']")),
    "window-on-no-layer-absolute": (
        dict(pe="absolute", sliding_window=8),
        ValueError,
        ("sliding_window", "8", "['nope']"),
    ),
    "two-input-encodings": (
        dict(layer_pattern="PS"),
        ValueError,
        ("layer_pattern", "'PS'", "['absolute', 'sinusoidal']"),
    ),
}


def check_row(overrides: dict, error: type[Exception], needles: tuple[str, ...]) -> str | None:
    """None when GPTConfig refuses the overrides as expected, else a description of what happened."""
    try:
        GPTConfig(**(BASE | overrides))
    except error as e:
        missing = [n for n in needles if n not in str(e)]
        return f"message {str(e)!r} lacks {missing}" if missing else None
    except Exception as e:  # noqa: BLE001 - reported as a failure below
        return f"raised {type(e).__name__}: {e}"
    return "accepted"


def test_base_is_valid() -> None:
    GPTConfig(**BASE)  # every row's error comes from its overrides, not from the base


@pytest.mark.parametrize("overrides, error, needles", list(INVALID.values()), ids=list(INVALID))
def test_invalid_config_is_refused_with_a_named_error(overrides: dict, error: type[Exception], needles: tuple) -> None:
    with pytest.raises(error) as info:
        GPTConfig(**(BASE | overrides))
    for needle in needles:
        assert needle in str(info.value), (needle, str(info.value))


_OPTIMIZED_SCRIPT = 'assert False, "asserts are live: not running under -O"'

_TABLE_SCRIPT = """
import json, sys
sys.path.insert(0, sys.argv[1])
import test_config
print(json.dumps({"optimize": sys.flags.optimize,
                  "results": {k: test_config.check_row(*row) for k, row in test_config.INVALID.items()}}))
"""


def test_invalid_configs_are_refused_under_python_dash_o() -> None:
    here = str(Path(__file__).parent)
    env = os.environ | {"PYTHONDONTWRITEBYTECODE": "1"}
    # the control: under -O an assert really is gone, so a check written as one would pass silently
    control = subprocess.run([sys.executable, "-O", "-c", _OPTIMIZED_SCRIPT], capture_output=True, text=True, env=env)
    assert control.returncode == 0, control.stderr
    run = subprocess.run([sys.executable, "-O", "-c", _TABLE_SCRIPT, here], capture_output=True, text=True, env=env)
    assert run.returncode == 0, run.stderr
    report = json.loads(run.stdout.strip().splitlines()[-1])
    assert report["optimize"] == 1
    assert set(report["results"]) == set(INVALID)
    failures = {k: v for k, v in report["results"].items() if v is not None}
    assert not failures, failures


# -- valid configurations -----------------------------------------------------------------------


@pytest.mark.parametrize("pe", variant_names())
def test_every_variant_is_a_valid_config(pe: str) -> None:
    config = GPTConfig(**BASE, pe=pe)
    assert len(config.layer_codes) == config.n_layer


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_presets_build_and_round_trip_through_dicts(name: str) -> None:
    config = GPTConfig.from_preset(name)
    for field, value in PRESETS[name].items():
        if field != "layers":  # tiled over depth below
            assert getattr(config, field) == value
    assert set(config.layers) == set(PRESETS[name].get("layers", (LayerSpec(),)))
    d = config.to_dict()
    assert json.loads(json.dumps(d)) == d  # plain data, storable in a checkpoint
    assert GPTConfig.from_dict(d) == config


def test_owt_16m_preset_is_the_reference_study_model() -> None:
    c = GPTConfig.from_preset("owt-16m")
    assert (c.n_layer, c.n_head, c.n_embd, c.block_size, c.vocab_size) == (4, 4, 256, 1024, 50304)
    assert not any(p.attention.qkv_bias or p.attention.proj_bias or p.block.mlp.bias for p in c.layers)


def test_preset_overrides_are_validated() -> None:
    config = GPTConfig.from_preset("tiny", pe="rnope", sliding_window=8)
    assert config.layer_codes == ("r", "r", "r", "N")
    with pytest.raises(ValueError, match="n_head=5"):
        GPTConfig.from_preset("tiny", n_head=5)


def test_unknown_preset_names_the_preset_and_the_known_ones() -> None:
    with pytest.raises(ValueError) as info:
        GPTConfig.from_preset("gpt5")
    assert "'gpt5'" in str(info.value) and "owt-16m" in str(info.value) and "tiny" in str(info.value)


def test_from_dict_refuses_unknown_fields() -> None:
    d = GPTConfig.from_preset("tiny").to_dict() | {"n_heads": 4}
    with pytest.raises(ValueError, match="n_heads"):
        GPTConfig.from_dict(d)


def test_config_is_frozen_and_replace_revalidates() -> None:
    config = GPTConfig.from_preset("tiny")
    with pytest.raises(AttributeError):
        config.n_layer = 8  # type: ignore[misc]
    assert config.replace(n_layer=8).n_layer == 8
    with pytest.raises(ValueError, match="dropout"):
        config.replace(dropout=2.0)


# -- one source of truth: sugar and explicit fields resolve to the same architecture -------------


@pytest.mark.parametrize(
    "a, b",
    [
        (dict(layer_pattern="PN"), dict(layer_pattern="PPPP")),
        (dict(layer_pattern="PN"), dict(pe="absolute")),
        (dict(pe="rnope"), dict(layer_pattern="RRRN")),
        (dict(pe="rnope"), dict(layer_pe=("rope", "rope", "rope", "nope"))),
        (dict(pe="sinusoidal"), dict(input_pe="sinusoidal")),
        (
            dict(layer_pattern="rrrN", sliding_window=8),
            dict(layer_pe=("rope", "rope", "rope", "nope"), layer_window=(8, 8, 8, None)),
        ),
        (dict(pe="qknorm"), dict(pe="rope", qk_norm=True)),
    ],
)
def test_equivalent_configs_record_the_same_architecture(a: dict, b: dict) -> None:
    ca, cb = GPTConfig(**(BASE | a)), GPTConfig(**(BASE | b))
    assert ca.architecture() == cb.architecture()
    assert ca.layers == cb.layers and ca.input_encoding == cb.input_encoding
    torch.manual_seed(0)
    sa = GPT(ca).state_dict()
    torch.manual_seed(0)
    sb = GPT(cb).state_dict()
    assert sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_different_architectures_record_differently() -> None:
    # the negative control of the test above: the record does tell architectures apart
    records = {
        str(GPTConfig(**(BASE | kw)).architecture())
        for kw in (dict(pe="rope"), dict(pe="rnope"), dict(pe="qknorm"), dict(pe="absolute"), dict(pe="sinusoidal"))
    }
    assert len(records) == 5


@pytest.mark.parametrize(
    "overrides, needles",
    [
        (dict(pe="rope", layer_pattern="RRRN"), ("pe='rope'", "layer_pattern='RRRN'")),
        (dict(pe="rope", layer_pe=("nope",)), ("pe='rope'", "layer_pe")),
        (dict(layer_pattern="RN", input_pe="absolute"), ("layer_pattern", "input_pe")),
        (dict(layer_pe=("absolute",)), ("layer_pe[0]='absolute'",)),
        (dict(input_pe="rope"), ("input_pe", "'rope'")),
        (dict(layer_pe="rope"), ("layer_pe", "tuple")),
        (dict(layer_pe=("rope",), layer_window=(0,)), ("layer_window[0]", "0")),
        (dict(layer_pe=("rope",), layer_window=(4,), sliding_window=4), ("sliding_window", "layer_window")),
        (dict(attention="nonesuch"), ("attention", "'nonesuch'")),
        (dict(pe_options={"nonesuch": {}}), ("pe_options", "'nonesuch'")),
        (dict(pe_options={"rope": {"base": 2.0}}), ("pe_options['rope']", "rope_")),
        (dict(pe="alibi", pe_options={"alibi": {"foo": 1}}), ("pe_options['alibi']", "'foo'")),
        (dict(attention="mla", n_kv_head=1), ("n_kv_head=1", "attention='mha'", "attention='mla'")),
        (dict(pe="rope", kv_lora_rank=8), ("kv_lora_rank=8", "attention='mla'")),
        (dict(pe="alibi", rope_scaling={"rope_type": "linear", "factor": 2.0}), ("rope_scaling", "no layer uses RoPE")),
        (
            dict(pe="rope", rope_scaling={"rope_type": "linear", "factor": 2.0, "rope_theta": 5e5}),
            ("rope_theta=500000.0", "rope_base"),
        ),
        (
            dict(pe="rope", rope_scaling={"rope_type": "yarn", "factor": 4.0}),
            ("original_max_position_embeddings", "block_size=32"),
        ),
    ],
)
def test_conflicting_or_bad_architecture_fields_are_refused(overrides: dict, needles: tuple[str, ...]) -> None:
    with pytest.raises((ValueError, TypeError)) as info:
        GPTConfig(**(BASE | overrides))
    for needle in needles:
        assert needle in str(info.value), (needle, str(info.value))


def test_explicit_fields_round_trip_through_dicts() -> None:
    config = GPTConfig(**(BASE | dict(input_pe="sinusoidal", layer_pe=("rope", "nope"), layer_window=(4, None))))
    again = GPTConfig.from_dict(json.loads(json.dumps(config.to_dict())))
    assert again == config and again.architecture() == config.architecture()


def test_configs_hash_by_value_including_their_dict_fields() -> None:
    a = GPTConfig(**(BASE | dict(pe="rope", rope_scaling={"rope_type": "linear", "factor": 2.0})))
    b = GPTConfig(**(BASE | dict(pe="rope", rope_scaling={"factor": 2.0, "rope_type": "linear"})))
    c = GPTConfig(**(BASE | dict(pe="rope", rope_scaling={"rope_type": "linear", "factor": 3.0})))
    assert a == b and hash(a) == hash(b) and len({a, b, c}) == 2


# -- the structure: component configs, one layer spec per layer --------------------------------


def gemma3_like() -> GPTConfig:
    """Five local layers (RoPE base 1e4, a 4-token window) per global one (base 1e6 with linear
    scaling): Hugging Face's layer_types with per-layer-type rope_parameters, as data."""
    local = LayerSpec(pe=RotaryEmbedding.Config(base=1e4), mask=Mask(window=4))
    scaling = {"rope_type": "linear", "factor": 8.0}
    global_ = LayerSpec(pe=RotaryEmbedding.Config(base=1e6, scaling=scaling))
    return GPTConfig(n_layer=12, n_head=2, n_embd=32, block_size=32, vocab_size=256, layers=(local,) * 5 + (global_,))


def test_layers_say_per_layer_what_hugging_face_layer_types_say():
    config = gemma3_like()
    assert config.layer_codes == ("r",) * 5 + ("R",) + ("r",) * 5 + ("R",)
    model = GPT(config)
    bases = [b.attn.pe.base for b in model.blocks]
    assert bases == [1e4] * 5 + [1e6] + [1e4] * 5 + [1e6]
    assert [b.attn.window for b in model.blocks] == [4] * 5 + [None] + [4] * 5 + [None]
    assert model.blocks[5].attn.pe.rope_type == "linear" and model.blocks[0].attn.pe.rope_type == "default"
    again = GPTConfig.from_dict(json.loads(json.dumps(config.to_dict())))
    assert again == config and hash(again) == hash(config)


def test_a_layer_spec_takes_names_and_dicts_and_checks_itself():
    spec = LayerSpec(attention="mha", pe="alibi", mask={"window": 8})
    assert spec == LayerSpec.from_dict(json.loads(json.dumps(spec.to_dict())))
    assert spec.to_dict()["pe"] == {"name": "alibi", "bias_max": 8.0} and spec.window == 8
    with pytest.raises(ValueError, match="acts at the model input"):
        LayerSpec(pe="absolute")
    with pytest.raises(ValueError, match="unknown positional encoding 'xpos'"):
        LayerSpec(pe="xpos")
    with pytest.raises(TypeError, match="Mask.window must be an int"):
        LayerSpec(mask={"window": 2.5})
    with pytest.raises(ValueError, match="layer 0: rotary_dim"):  # checked against the model's sizes
        GPTConfig(n_layer=1, n_head=2, n_embd=32, layers=(LayerSpec(pe=RotaryEmbedding.Config(rotary_dim=64)),))


def test_flat_fields_and_the_structure_are_not_mixed():
    with pytest.raises(ValueError, match=r"flat fields \['pe'\] and \['layers'\]"):
        GPTConfig(n_layer=2, layers=(LayerSpec(),), pe="rope")
    config = GPTConfig.from_preset("tiny", pe="rope")
    with pytest.raises(ValueError, match="flat fields"):
        config.replace(pe="alibi")  # a built config changes through its structure
    assert config.replace(n_layer=8).layer_codes == ("R",) * 8  # the layers tile over the new depth


def test_changing_a_built_model_swaps_its_rope_or_turns_a_layer_to_nope():
    config = GPTConfig.from_preset("tiny", pe="rnope")
    yarn = {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 32}
    scaled = config.with_encoding("rope", scaling=yarn)
    assert [layer.pe.scaling["rope_type"] for layer in scaled.layers[:3]] == ["yarn"] * 3
    assert scaled.layers[3] == config.layers[3]
    nope = config.map_layers(lambda i, layer: layer.replace(pe=NoPE.Config()) if i == 0 else layer)
    assert nope.layer_codes == ("N", "R", "R", "N")
    with pytest.raises(ValueError, match="no layer of this model uses 'alibi'"):
        config.with_encoding("alibi")


def test_kv_cache_bytes_are_asked_of_each_layers_attention():
    base = dict(n_layer=4, n_head=4, n_embd=64, block_size=32, vocab_size=256, pe="rope")
    assert GPTConfig(**base).kv_cache_bytes_per_token() == 4 * 2 * 64 * 2
    assert GPTConfig(**base, n_kv_head=1).kv_cache_bytes_per_token() == 4 * 2 * 16 * 2
    assert GPTConfig(**base, attention="mla", kv_lora_rank=32).kv_cache_bytes_per_token() == 4 * (32 + 8) * 2
    mixed = GPTConfig(**base).map_layers(
        lambda i, layer: layer.replace(attention=MultiHeadLatentAttention.Config(kv_lora_rank=32)) if i else layer
    )
    assert mixed.kv_cache_bytes_per_token() == 2 * 64 * 2 + 3 * (32 + 8) * 2


def test_pe_options_must_name_an_encoding_of_the_model_and_its_options():
    sizes = dict(n_layer=2, n_head=2, n_embd=32, block_size=64, vocab_size=50)
    with pytest.raises(ValueError, match=r"options for \['cope'\], which no layer uses; the layers use \['rope'\]"):
        GPTConfig(**sizes, pe="rope", pe_options={"cope": {"npos": 4}})
    with pytest.raises(ValueError, match=r"unknown option\(s\) \['bias_init'\]; fox takes no options"):
        GPTConfig(**sizes, pe="fox", pe_options={"fox": {"bias_init": 1.0}})
    with pytest.raises(ValueError, match=r"unknown option\(s\) \['encoding'\]"):  # a class variable is no option
        GPTConfig(**sizes, pe="fox", pe_options={"fox": {"encoding": 1}})


def test_attention_options_join_a_variants_own_unless_they_contradict_them():
    sizes = dict(n_layer=2, n_head=2, n_embd=32, block_size=64, vocab_size=50)
    attention = GPTConfig(**sizes, pe="rope_sinks", attention_options={"softcap": 30.0}).layers[0].attention
    assert attention.sinks is True and attention.softcap == 30.0
    with pytest.raises(ValueError, match=r"pe='rope_sinks' sets attention_options=\{'sinks': True\}"):
        GPTConfig(**sizes, pe="rope_sinks", attention_options={"sinks": False})


def test_attention_biases_turned_off_under_a_biased_model_stay_off() -> None:
    # GPT-NeoX with attention_bias=False: LayerNorm and MLP biases on, q/k/v and output biases off
    config = GPTConfig(n_embd=32, n_head=4, bias=True, qkv_bias=False, proj_bias=False, pe="rope")
    attention, block = config.layers[0].attention, config.layers[0].block
    assert (attention.qkv_bias, attention.proj_bias) == (False, False)
    assert block.norm.bias and block.mlp.bias
    model = GPT(config)
    assert model.blocks[0].attn.c_attn.bias is None and model.blocks[0].mlp.c_fc.bias is not None


def test_a_model_with_a_rope_scaling_deep_copies_and_pickles():
    """Gemma 3's imported RoPE carries a scaling mapping; copying the model (a study's variants, an
    EMA copy) and pickling it must work, and the mapping stays read-only."""
    import copy
    import pickle

    scaling = {"rope_type": "yarn", "factor": 2.0, "original_max_position_embeddings": 32}
    config = GPTConfig.from_preset("tiny", pe="rope").with_encoding("rope", scaling=scaling)
    model = GPT(config)
    twin = copy.deepcopy(model)
    assert twin.config == config and twin.config.layers[0].pe.scaling["factor"] == 2.0
    assert pickle.loads(pickle.dumps(config)) == config
    with pytest.raises(TypeError):
        config.layers[0].pe.scaling["factor"] = 4.0

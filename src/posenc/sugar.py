"""The flat fields of posenc 0.1-0.2 as sugar over the component configs.

``GPTConfig(pe="rnope", sliding_window=8, rope_base=5e5, bias=False)`` resolves here into an
:class:`~posenc.config.EmbeddingConfig`, a :class:`~posenc.config.HeadConfig` and one
:class:`~posenc.config.LayerSpec` per layer; nothing flat is stored. The fields and their meaning:

- which encodings (give at most one of the three): ``pe`` (a variant, :mod:`posenc.variants`),
  ``layer_pattern`` (one code per layer, tiled over depth, lower case = a window of
  ``sliding_window`` tokens), or the explicit ``input_pe`` / ``layer_pe`` / ``layer_window``;
  ``sliding_window`` with ``pe`` windows every layer whose encoding sees positions;
- RoPE: ``rope_base``, ``rope_layout``, ``rotary_dim``, ``rope_scaling`` (a Hugging Face dict; its
  ``max_position_embeddings`` defaults to ``block_size``) -> the RoPE config of every RoPE layer;
  ``pe_options={name: {...}}`` -> the options of the encoding ``name`` (RoPE's others: ``p_rope``, ``xpos``);
- attention: ``attention`` (a name of ``ATTENTIONS``), ``qk_norm`` / ``qk_norm_type``, ``n_kv_head``,
  the MLA sizes and ``rope_interleave``, ``qkv_bias`` / ``proj_bias``, and ``attention_options``
  (any field of the chosen variant's config); a field of another variant is refused by name;
- block and head: ``norm``, ``norm_eps``, ``mlp``, ``intermediate_size``, ``mlp_bias``, ``bias``
  (the default of every bias, LayerNorm's included), ``tie_embeddings``.

Checks stay in the components: a bad value is refused by the config that owns it, and the error
names the flat field it came from. Only the sugar's own fields and rules are checked here.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

from posenc.attention import attention_class
from posenc.attention.core import QK_NORM_TYPES
from posenc.attention.mask import Mask
from posenc.block import MLP, Block, NormConfig
from posenc.encodings import ENCODINGS, codes, encoding_class
from posenc.encodings.base import EncodingConfig, ModelDims
from posenc.encodings.rope import RotaryEmbedding
from posenc.layer import EmbeddingConfig, HeadConfig, LayerSpec
from posenc.spec import check_bool, check_choice, check_int
from posenc.variants import variant, variant_names

#: The flat fields and their defaults (the GPTConfig fields of posenc 0.2, plus ``attention_options``).
DEFAULTS: dict[str, Any] = dict(
    bias=True,
    pe=None,
    layer_pattern=None,
    sliding_window=None,
    input_pe=None,
    layer_pe=None,
    layer_window=None,
    qk_norm=False,
    qk_norm_type="rms",
    rope_base=10000.0,
    rope_layout="half",
    rotary_dim=None,
    rope_scaling=None,
    pe_options=None,
    attention="mha",
    attention_options=None,
    n_kv_head=None,
    kv_lora_rank=None,
    q_lora_rank=None,
    qk_rope_head_dim=None,
    qk_nope_head_dim=None,
    v_head_dim=None,
    rope_interleave=False,
    norm="layernorm",
    norm_eps=1e-5,
    mlp="gelu",
    intermediate_size=None,
    qkv_bias=None,
    proj_bias=None,
    mlp_bias=None,
    tie_embeddings=True,
)
#: flat field -> RoPE config field
ROPE_FIELDS: dict[str, str] = {
    "rope_base": "base",
    "rope_layout": "layout",
    "rotary_dim": "rotary_dim",
    "rope_scaling": "scaling",
}
#: flat fields that are options of some attention variant (routed to the chosen one's config)
ATTENTION_FIELDS: tuple[str, ...] = (
    "n_kv_head",
    "kv_lora_rank",
    "q_lora_rank",
    "qk_rope_head_dim",
    "qk_nope_head_dim",
    "v_head_dim",
    "rope_interleave",
    "qkv_bias",
    "proj_bias",
)
CHOOSERS: tuple[str, ...] = ("input_pe", "layer_pe", "layer_window")


def _tile(values: tuple, n: int) -> tuple:
    return tuple(values[i % len(values)] for i in range(n))


def _blame(field: str, value: Any, make: Any) -> Any:
    """``make()``, with an error re-raised naming the flat field it came from."""
    try:
        return make()
    except (ValueError, TypeError) as e:
        raise type(e)(f"GPTConfig.{field}={value!r}: {e}") from None


def resolve(dims: ModelDims, sugar: Mapping[str, Any]) -> dict[str, Any]:
    """``{"embedding", "head", "layers"}`` from the flat fields (module docstring)."""
    unknown = sorted(set(sugar) - set(DEFAULTS))
    if unknown:
        raise TypeError(f"GPTConfig got unknown field(s) {unknown}; the flat fields are {sorted(DEFAULTS)}")
    f = _with_variant(dict(DEFAULTS) | dict(sugar), sugar)
    for name in ("bias", "qk_norm", "rope_interleave", "tie_embeddings"):
        check_bool("GPTConfig", name, f[name])
    for name in ("qkv_bias", "proj_bias", "mlp_bias"):
        check_bool("GPTConfig", name, f[name], optional=True)
    check_choice("GPTConfig", "qk_norm_type", f["qk_norm_type"], QK_NORM_TYPES)
    _check_pe_options(f["pe_options"])
    input_pe, names, windows = _encodings(f, dims.n_layer)
    attention = _attention(f)
    norm = NormConfig(
        kind=_blame("norm", f["norm"], lambda: NormConfig(kind=f["norm"])).kind,
        eps=_blame("norm_eps", f["norm_eps"], lambda: NormConfig(eps=f["norm_eps"])).eps,
        bias=f["bias"],
    )
    mlp_bias = f["bias"] if f["mlp_bias"] is None else f["mlp_bias"]
    mlp = _blame("mlp", f["mlp"], lambda: MLP.Config(kind=f["mlp"], bias=mlp_bias))
    mlp = _blame("intermediate_size", f["intermediate_size"], lambda: mlp.replace(hidden=f["intermediate_size"]))
    block = Block.Config(norm=norm, mlp=mlp)
    encodings = {name: _encoding(name, f, dims) for name in {*names} | ({input_pe} if input_pe else set())}
    _check_rope_fields(f, encodings)
    layers = tuple(
        LayerSpec(attention=attention, pe=encodings[name], mask=Mask(window=w), block=block)
        for name, w in zip(names, windows)
    )
    embedding = EmbeddingConfig(input_pe=None if input_pe is None else encodings[input_pe])
    return {"embedding": embedding, "head": HeadConfig(norm=norm, tie_embeddings=f["tie_embeddings"]), "layers": layers}


def over(dims: ModelDims, parts: Mapping[str, Any], sugar: Mapping[str, Any]) -> dict[str, Any]:
    """The parts of the flat fields ``sugar`` given over a structured config's ``parts`` (a
    preset's): the flat ``bias`` defaults to the one that gives ``parts`` (nanoGPT's ``bias=False``
    presets stay without biases). Parts that no ``bias`` alone gives take no flat fields."""
    for bias in (False, True):
        if resolve(dims, {"bias": bias}) == dict(parts):
            return resolve(dims, {"bias": bias} | dict(sugar))
    raise ValueError(
        f"GPTConfig: the flat fields {sorted(sugar)} cannot be given over these layers/embedding/head, "
        "which flat fields do not describe; change the parts instead (GPTConfig.map_layers, replace)"
    )


def from_flat_dict(d: Mapping[str, Any]) -> dict[str, Any]:
    """GPTConfig keyword arguments from the flat dict of a format 1 or 2 checkpoint (every 0.1-0.2
    field, lists for tuples); unknown keys are refused by name."""
    sizes = {"block_size", "vocab_size", "n_layer", "n_head", "n_embd", "dropout"}
    unknown = sorted(set(d) - set(DEFAULTS) - sizes)
    if unknown:
        raise ValueError(f"unknown GPTConfig fields {unknown} in a flat (format 1-2) config dict")
    return {k: tuple(v) if k in ("layer_pe", "layer_window") and isinstance(v, list) else v for k, v in d.items()}


# -- which encoding on which layer ---------------------------------------------------------------


def _with_variant(f: dict[str, Any], given: Mapping[str, Any]) -> dict[str, Any]:
    """The fields with the variant ``pe`` applied; a field the variant sets that was given otherwise is refused."""
    sources = [name for name in ("pe", "layer_pattern") if f[name] is not None]
    explicit = [name for name in CHOOSERS if f[name] is not None]
    if len(sources + explicit[:1]) > 1:
        chosen = ", ".join(f"{name}={f[name]!r}" for name in sources + explicit)
        raise ValueError(
            f"GPTConfig: {chosen} each choose the encodings; give only one of pe, layer_pattern or the explicit fields"
        )
    if f["pe"] is None:
        return f
    if not isinstance(f["pe"], str) or f["pe"] not in variant_names():
        raise ValueError(f"GPTConfig.pe must be one of {variant_names()}, got {f['pe']!r}")
    for name, value in variant(f["pe"]).model.items():
        mine = given.get(name, DEFAULTS[name])
        if (
            isinstance(value, Mapping)
            and isinstance(mine, Mapping)
            and all(mine.get(k, v) == v for k, v in value.items())
        ):
            f[name] = dict(mine) | dict(value)  # options added to the variant's, none contradicting them
            continue
        if mine != DEFAULTS[name] and mine != value:
            raise ValueError(f"GPTConfig: pe={f['pe']!r} sets {name}={value!r}, but {name}={mine!r} was given")
        f[name] = value
    return f


def _encodings(f: dict[str, Any], n_layer: int) -> tuple[str | None, tuple[str, ...], tuple[int | None, ...]]:
    """(input table, encoding per layer, window per layer)."""
    if f["sliding_window"] is not None:
        check_int("GPTConfig", "sliding_window", f["sliding_window"])
    if f["layer_pattern"] is not None:
        return _from_pattern(f["layer_pattern"], f["sliding_window"], n_layer)
    if f["input_pe"] is not None and (f["input_pe"] not in ENCODINGS or ENCODINGS[f["input_pe"]][1].where != "input"):
        tables = sorted(n for n, (_, cls) in ENCODINGS.items() if cls.where == "input")
        raise ValueError(f"GPTConfig.input_pe must be None or one of {tables}, got {f['input_pe']!r}")
    names = _tile(_tuple(f, "layer_pe", str) if f["layer_pe"] is not None else ("nope",), n_layer)
    for i, name in enumerate(names):
        if name not in ENCODINGS or ENCODINGS[name][1].where == "input":
            acting = sorted(n for n, (_, cls) in ENCODINGS.items() if cls.where != "input")
            raise ValueError(f"GPTConfig.layer_pe[{i}]={name!r} is not an attention encoding; known: {acting}")
    if f["layer_window"] is not None:
        if f["sliding_window"] is not None:
            raise ValueError("GPTConfig: give sliding_window or layer_window, not both")
        windows = _tile(_tuple(f, "layer_window", (int, type(None))), n_layer)
        for i, w in enumerate(windows):
            if w is not None and w <= 0:
                raise ValueError(f"GPTConfig.layer_window[{i}] must be a positive int or None, got {w!r}")
        return f["input_pe"], names, windows
    sees = [ENCODINGS[name][1].where in ("qk", "scores") for name in names]
    if f["sliding_window"] is not None and not any(sees):
        raise ValueError(
            f"GPTConfig.sliding_window={f['sliding_window']} applies to no layer: none of {sorted(set(names))} "
            "sees positions (use layer_window to window them anyway)"
        )
    return f["input_pe"], names, tuple(f["sliding_window"] if s else None for s in sees)


def _tuple(f: dict[str, Any], name: str, kind: type | tuple[type, ...]) -> tuple:
    value = f[name]
    if isinstance(value, (str, int)) or not isinstance(value, (tuple, list)) or not value:
        raise TypeError(f"GPTConfig.{name} must be a non-empty tuple, got {value!r}")
    bad = [v for v in value if isinstance(v, bool) or not isinstance(v, kind)]
    if bad:
        raise TypeError(f"GPTConfig.{name}={value!r} holds {bad[0]!r} of type {type(bad[0]).__name__}")
    return tuple(value)


def _from_pattern(pattern: Any, window: int | None, n_layer: int) -> tuple[str | None, tuple[str, ...], tuple]:
    if not isinstance(pattern, str) or not pattern:
        raise ValueError(f"GPTConfig.layer_pattern must be a non-empty string, got {pattern!r}")
    table = codes()
    for i, char in enumerate(pattern):
        if char.upper() not in table:
            known = ", ".join(f"{c}={n}" for c, n in table.items())
            raise ValueError(
                f"GPTConfig.layer_pattern={pattern!r} has unknown character {char!r} at index {i}; "
                f"known codes: {known} (lower case = sliding window)"
            )
    chars = _tile(tuple(pattern), n_layer)
    windowed = any(c.islower() for c in chars)
    if windowed and window is None:
        raise ValueError(
            f"GPTConfig.layer_pattern={pattern!r} has windowed (lower-case) layers but sliding_window is None"
        )
    if window is not None and not windowed:
        raise ValueError(
            f"GPTConfig.sliding_window={window} applies to no layer: layer_pattern={pattern!r} has no lower-case (windowed) code"
        )
    names = [table[c.upper()] for c in chars]
    inputs = sorted({n for n in names if ENCODINGS[n][1].where == "input"})
    if len(inputs) > 1:
        raise ValueError(
            f"GPTConfig.layer_pattern={pattern!r} mixes input encodings {inputs}; a model has one input table"
        )
    layer_names = tuple("nope" if ENCODINGS[n][1].where == "input" else n for n in names)
    windows = tuple(window if c.islower() else None for c in chars)
    return (inputs[0] if inputs else None), layer_names, windows


# -- the components ------------------------------------------------------------------------------


def _check_pe_options(options: Any) -> None:
    if options is None:
        return
    if not isinstance(options, Mapping):
        raise TypeError(f"GPTConfig.pe_options must be a mapping of encoding name -> options, got {options!r}")
    for name, opts in options.items():
        if name not in ENCODINGS:
            raise ValueError(f"GPTConfig.pe_options has unknown encoding {name!r}; known: {sorted(ENCODINGS)}")
        if not isinstance(opts, Mapping):
            raise TypeError(f"GPTConfig.pe_options[{name!r}] must be a mapping, got {opts!r}")
        if _is_rope(encoding_class(name).Config) and (taken := sorted(set(opts) & set(ROPE_FIELDS.values()))):
            flat = [k for k, v in ROPE_FIELDS.items() if v in taken]
            raise ValueError(
                f"GPTConfig.pe_options[{name!r}] sets {taken}: use the fields {', '.join(flat)} "
                f"(pe_options[{name!r}] is for RoPE's other options, e.g. p_rope, xpos)"
            )


def _encoding(name: str, f: dict[str, Any], dims: ModelDims) -> EncodingConfig:
    options = dict((f["pe_options"] or {}).get(name, {}))
    config_cls = encoding_class(name).Config
    fields = _fields(config_cls)
    if unknown := sorted(set(options) - fields):
        raise ValueError(
            f"GPTConfig.pe_options[{name!r}] has unknown option(s) {unknown}; {name} takes {sorted(fields) or 'no options'}"
        )
    if not _is_rope(config_cls):
        return config_cls(**options)
    rope = {field: f[flat] for flat, field in ROPE_FIELDS.items()}
    if rope["scaling"] is not None:
        if not isinstance(rope["scaling"], Mapping):
            raise TypeError(
                f"GPTConfig.rope_scaling must be a dict like Hugging Face's rope_scaling, got {rope['scaling']!r}"
            )
        rope["scaling"] = {"max_position_embeddings": dims.block_size} | dict(rope["scaling"])
    try:
        return config_cls(**(rope | options))
    except (ValueError, TypeError) as e:
        given = [flat for flat in ROPE_FIELDS if f[flat] != DEFAULTS[flat]]
        alone = [
            flat
            for flat in given
            if _fails(lambda flat=flat: config_cls(**{ROPE_FIELDS[flat]: rope[ROPE_FIELDS[flat]]}))
        ]
        culprit = ", ".join(f"{flat}={f[flat]!r}" for flat in (alone or given)) or "pe_options['rope']"
        raise type(e)(
            f"GPTConfig.{culprit}: {e} (rope_base, rope_layout, rotary_dim and rope_scaling set RoPE's base, layout, "
            f"rotary_dim and scaling; max_position_embeddings is block_size={dims.block_size} unless given)"
        ) from None


def _fails(make: Any) -> bool:
    try:
        make()
    except (ValueError, TypeError):
        return True
    return False


def _is_rope(config_cls: type) -> bool:
    """RoPE's config or one that extends it (FoX with RoPE): the rope_* fields set it."""
    return issubclass(config_cls, RotaryEmbedding.Config)


def _fields(config_cls: type) -> set[str]:
    """The options a config takes (its dataclass fields, not its class variables)."""
    return {f.name for f in dataclasses.fields(config_cls)}


def _check_rope_fields(f: dict[str, Any], encodings: dict[str, EncodingConfig]) -> None:
    if not any(_is_rope(type(c)) for c in encodings.values()):
        for name in ("rotary_dim", "rope_scaling"):
            if f[name] is not None:
                raise ValueError(f"GPTConfig.{name}={f[name]!r} is set but no layer uses RoPE")
    if unused := sorted(set(f["pe_options"] or {}) - set(encodings)):
        raise ValueError(
            f"GPTConfig.pe_options has options for {unused}, which no layer uses; the layers use {sorted(encodings)}"
        )


def _attention(f: dict[str, Any]) -> Any:
    name = f["attention"]
    cls = _blame("attention", name, lambda: attention_class(name))
    fields = _fields(cls.Config)
    options: dict[str, Any] = {k: f["bias"] for k in ("bias", "qkv_bias", "proj_bias") if k in fields}
    for field in ATTENTION_FIELDS:
        value = f[field]
        if value is None or (value is False and field not in fields):  # off, for an attention without it
            continue
        if field not in fields:
            owners = [n for n in _attention_names() if field in _fields(attention_class(n).Config)]
            raise ValueError(
                f"GPTConfig.{field}={value!r} is an option of attention={owners[0]!r}, not of attention={name!r}"
            )
        options[field] = value
    if f["qk_norm"]:
        if "qk_norm" not in fields:
            raise ValueError(f"GPTConfig.qk_norm=True: attention={name!r} takes no QK-norm")
        options["qk_norm"] = f["qk_norm_type"]
    extra = f["attention_options"] or {}
    if not isinstance(extra, Mapping):
        raise TypeError(f"GPTConfig.attention_options must be a mapping, got {extra!r}")
    if unknown := sorted(set(extra) - fields):
        raise ValueError(
            f"GPTConfig.attention_options has unknown option(s) {unknown}; {name} takes {sorted(fields) or 'no options'}"
        )
    return cls.Config(**(options | dict(extra)))


def _attention_names() -> list[str]:
    from posenc.attention import ATTENTIONS

    return list(ATTENTIONS)

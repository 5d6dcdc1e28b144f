"""GPTConfig: one validated dataclass describing a GPT, and the resolved per-layer architecture.

What is built is said by three separate facts, each its own field:

- ``input_pe``: the one table added to the token embeddings (``"absolute"``, ``"sinusoidal"``) or None;
- ``layer_pe``: the encoding inside each layer's attention (``"rope"``, ``"nope"``, ``"alibi"``, ...),
  tiled over depth;
- ``layer_window``: each layer's sliding-window size in tokens, or None for full causal attention.

``pe`` (a variant name, see :data:`VARIANTS`) and ``layer_pattern`` (one letter per layer, lower case
= windowed) are sugar over them; give at most one of ``pe``, ``layer_pattern`` or the explicit
fields. :attr:`GPTConfig.layers` is the resolved architecture and :meth:`GPTConfig.architecture`
its record, which run summaries store, so two configs that build the same model record the same.

Everything is validated at construction; a bad value raises ``ValueError`` (``TypeError`` for a
wrong type) naming the field and the value -- never an ``assert``, which ``python -O`` strips.
"""

from __future__ import annotations

import dataclasses
import inspect
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal, NamedTuple

from posenc.attention import ATTENTIONS
from posenc.encodings import CODES, ENCODINGS
from posenc.encodings.base import ModelDims
from posenc.encodings.rope import LAYOUTS
from posenc.encodings.rope_scaling import validate_scaling


class Variant(NamedTuple):
    """A named architecture: the input table, the per-layer attention encodings (tiled), QK-norm."""

    input_pe: str | None
    layer_pe: tuple[str, ...]
    qk_norm: bool = False


def _single(name: str) -> Variant:
    if ENCODINGS[name][1].where == "input":
        return Variant(name, ("nope",))
    return Variant(None, (name,))


#: Names accepted by ``GPTConfig.pe``: every registered encoding on every layer, plus composites.
VARIANTS: dict[str, Variant] = {name: _single(name) for name in ENCODINGS} | {
    "qknorm": Variant(None, ("rope",), True),  # RoPE + QK-norm: the QK-Norm baseline of the RNoPE paper
    "rnope": Variant(None, ("rope", "rope", "rope", "nope")),  # Command R7B/A, Llama 4 iRoPE
    "absolute_qknorm": Variant("absolute", ("nope",), True),  # a GPT with QK-norm
    "nope_qknorm": Variant(None, ("nope",), True),
}

QK_NORM_TYPES: tuple[str, ...] = ("rms", "l2")
NORMS: tuple[str, ...] = ("layernorm", "rmsnorm")
MLPS: tuple[str, ...] = ("gelu", "swiglu")

#: Model presets; ``GPTConfig.from_preset(name, **overrides)``.
PRESETS: dict[str, dict[str, Any]] = {
    # The reference study: nanoGPT with 4 layers, 4 heads, 256 channels, GPT-2 vocab padded to 50304.
    "owt-16m": dict(n_layer=4, n_head=4, n_embd=256, block_size=1024, vocab_size=50304, bias=False, dropout=0.0),
    # GPT-2 small (124M), nanoGPT's default.
    "gpt2": dict(n_layer=12, n_head=12, n_embd=768, block_size=1024, vocab_size=50304, bias=True, dropout=0.0),
    # CPU training on bytes (vocab 256) in minutes.
    "cpu-small": dict(n_layer=4, n_head=4, n_embd=128, block_size=128, vocab_size=256, bias=False, dropout=0.0),
    # Unit tests and smoke runs: 4 layers so that "RRRN" shows its NoPE layer.
    "tiny": dict(n_layer=4, n_head=2, n_embd=32, block_size=32, vocab_size=256, bias=False, dropout=0.0),
}


#: RoPE options that GPTConfig fields set (option -> field); pe_options["rope"] takes the others.
_ROPE_FIELDS: dict[str, str] = {
    "base": "rope_base",
    "layout": "rope_layout",
    "rotary_dim": "rotary_dim",
    "scaling": "rope_scaling",
}


class LayerSpec(NamedTuple):
    """What one layer is built with: its attention encoding and its window."""

    pe: str
    window: int | None


def _positive_int(name: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"GPTConfig.{name} must be an int, got {value!r} ({type(value).__name__})")
    if value <= 0:
        raise ValueError(f"GPTConfig.{name} must be > 0, got {value!r}")


def dataclass_from_dict(cls: type, d: Mapping[str, Any], tuples: tuple[str, ...] = ()) -> Any:
    """``cls(**d)`` for a config dataclass read back from JSON: unknown keys are refused by name, and
    the fields in ``tuples`` (lists in JSON) become tuples again."""
    unknown = sorted(set(d) - {f.name for f in dataclasses.fields(cls)})
    if unknown:
        raise ValueError(f"unknown {cls.__name__} fields {unknown}")
    return cls(**{k: tuple(v) if k in tuples and isinstance(v, list) else v for k, v in d.items()})


def _tile(values: tuple, n: int) -> tuple:
    return tuple(values[i % len(values)] for i in range(n))


@dataclass(frozen=True)
class GPTConfig:
    """A GPT: nanoGPT's fields, the positional encoding per layer and its options.

    ``pe`` picks a variant (:data:`VARIANTS`; default ``"absolute"`` when nothing else chooses);
    ``layer_pattern`` gives one code per layer, tiled over depth: ``P`` learned absolute, ``S``
    sinusoidal, ``N`` NoPE, ``R`` RoPE, ``B`` ALiBi (every code in ``posenc.encodings.CODES``); a
    lower-case code puts a window of ``sliding_window`` tokens on that layer. With ``pe``,
    ``sliding_window`` windows every layer whose attention sees positions. ``qk_norm`` adds QK-norm
    to every layer with any encoding. ``pe_options`` passes keyword arguments to an encoding by name
    (``{"alibi": {...}}``); RoPE's own options are the ``rope_*`` fields. ``attention`` names the
    attention variant (``posenc.attention.ATTENTIONS``).
    """

    block_size: int = 1024
    vocab_size: int = 50304
    n_layer: int = 12
    n_head: int = 12
    n_embd: int = 768
    dropout: float = 0.0
    bias: bool = True
    pe: str | None = None
    layer_pattern: str | None = None
    sliding_window: int | None = None
    input_pe: str | None = None
    layer_pe: tuple[str, ...] | None = None
    layer_window: tuple[int | None, ...] | None = None
    qk_norm: bool = False
    qk_norm_type: Literal["rms", "l2"] = "rms"
    rope_base: float = 10000.0
    rope_layout: Literal["half", "interleaved"] = "half"
    rotary_dim: int | None = None
    rope_scaling: Mapping[str, Any] | None = None
    pe_options: Mapping[str, Mapping[str, Any]] | None = None
    attention: str = "mha"
    n_kv_head: int | None = None
    kv_lora_rank: int | None = None
    q_lora_rank: int | None = None
    qk_rope_head_dim: int | None = None
    qk_nope_head_dim: int | None = None
    v_head_dim: int | None = None
    rope_interleave: bool = False
    norm: Literal["layernorm", "rmsnorm"] = "layernorm"
    norm_eps: float = 1e-5
    mlp: Literal["gelu", "swiglu"] = "gelu"
    intermediate_size: int | None = None
    qkv_bias: bool | None = None
    proj_bias: bool | None = None
    mlp_bias: bool | None = None
    tie_embeddings: bool = True

    def __post_init__(self) -> None:
        for name in ("block_size", "vocab_size", "n_layer", "n_head", "n_embd"):
            _positive_int(name, getattr(self, name))
        if self.n_embd % self.n_head:
            raise ValueError(f"GPTConfig.n_embd={self.n_embd} must be divisible by n_head={self.n_head}")
        if (
            isinstance(self.dropout, bool)
            or not isinstance(self.dropout, (int, float))
            or not 0.0 <= self.dropout < 1.0
        ):
            raise ValueError(f"GPTConfig.dropout must be a float in [0, 1), got {self.dropout!r}")
        for name in ("bias", "qk_norm"):
            if not isinstance(getattr(self, name), bool):
                raise TypeError(f"GPTConfig.{name} must be a bool, got {getattr(self, name)!r}")
        if self.pe is not None and self.pe not in VARIANTS:
            raise ValueError(f"GPTConfig.pe must be one of {sorted(VARIANTS)}, got {self.pe!r}")
        if isinstance(self.rope_base, bool) or not isinstance(self.rope_base, (int, float)) or not self.rope_base > 0:
            raise ValueError(f"GPTConfig.rope_base must be a number > 0, got {self.rope_base!r}")
        if self.rope_layout not in LAYOUTS:
            raise ValueError(f"GPTConfig.rope_layout must be one of {LAYOUTS}, got {self.rope_layout!r}")
        if self.qk_norm_type not in QK_NORM_TYPES:
            raise ValueError(f"GPTConfig.qk_norm_type must be one of {QK_NORM_TYPES}, got {self.qk_norm_type!r}")
        if self.sliding_window is not None:
            _positive_int("sliding_window", self.sliding_window)
        if self.attention not in ATTENTIONS:
            raise ValueError(f"GPTConfig.attention must be one of {sorted(ATTENTIONS)}, got {self.attention!r}")
        self._check_blocks()
        self._check_pe_options()
        input_pe, layers = self._resolve()
        self._check_layers(input_pe, layers)
        object.__setattr__(self, "_resolved", (input_pe, layers))

    # -- resolution: sugar -> (input table, per-layer specs) ---------------------------------------

    def _resolve(self) -> tuple[str | None, tuple[LayerSpec, ...]]:
        explicit = [f for f in ("input_pe", "layer_pe", "layer_window") if getattr(self, f) is not None]
        sources = [
            name
            for name, given in (("pe", self.pe is not None), ("layer_pattern", self.layer_pattern is not None))
            if given
        ]
        if len(sources + explicit[:1]) > 1:
            chosen = ", ".join(f"{f}={getattr(self, f)!r}" for f in sources + explicit)
            raise ValueError(
                f"GPTConfig: {chosen} each choose the encodings; give only one of pe, layer_pattern or the explicit fields"
            )
        if self.layer_pattern is not None:
            return self._from_pattern(self.layer_pattern)
        if explicit:
            variant = Variant(self.input_pe, self._tuple("layer_pe", str) if self.layer_pe is not None else ("nope",))
            windows = self._tuple("layer_window", (int, type(None))) if self.layer_window is not None else None
        else:
            variant, windows = VARIANTS[self.pe or "absolute"], None
        layer_pe = _tile(variant.layer_pe, self.n_layer)
        for i, name in enumerate(layer_pe):
            if name not in ENCODINGS or ENCODINGS[name][1].where == "input":
                acting = sorted(n for n, (_, cls) in ENCODINGS.items() if cls.where != "input")
                raise ValueError(f"GPTConfig.layer_pe[{i}]={name!r} is not an attention encoding; known: {acting}")
        if windows is None:
            sees = [ENCODINGS[name][1].where in ("qk", "scores") for name in layer_pe]
            if self.sliding_window is not None and not any(sees):
                raise ValueError(
                    f"GPTConfig.sliding_window={self.sliding_window} applies to no layer: none of {sorted(set(layer_pe))} "
                    "sees positions (use layer_window to window them anyway)"
                )
            windows = tuple(self.sliding_window if s else None for s in sees)
        elif self.sliding_window is not None:
            raise ValueError("GPTConfig: give sliding_window or layer_window, not both")
        return variant.input_pe, tuple(LayerSpec(pe, w) for pe, w in zip(layer_pe, _tile(windows, self.n_layer)))

    def _tuple(self, name: str, kind: type | tuple[type, ...]) -> tuple:
        value = getattr(self, name)
        if isinstance(value, (str, int)) or not isinstance(value, (tuple, list)) or not value:
            raise TypeError(f"GPTConfig.{name} must be a non-empty tuple, got {value!r}")
        bad = [v for v in value if isinstance(v, bool) or not isinstance(v, kind)]
        if bad:
            raise TypeError(f"GPTConfig.{name}={value!r} holds {bad[0]!r} of type {type(bad[0]).__name__}")
        return tuple(value)

    def _from_pattern(self, pattern: Any) -> tuple[str | None, tuple[LayerSpec, ...]]:
        if not isinstance(pattern, str) or not pattern:
            raise ValueError(f"GPTConfig.layer_pattern must be a non-empty string, got {pattern!r}")
        for i, char in enumerate(pattern):
            if char.upper() not in CODES:
                known = ", ".join(f"{c}={n}" for c, n in CODES.items())
                raise ValueError(
                    f"GPTConfig.layer_pattern={pattern!r} has unknown character {char!r} at index {i}; "
                    f"known codes: {known} (lower case = sliding window)"
                )
        codes = _tile(tuple(pattern), self.n_layer)
        windowed = any(c.islower() for c in codes)
        if windowed and self.sliding_window is None:
            raise ValueError(
                f"GPTConfig.layer_pattern={pattern!r} has windowed (lower-case) layers but sliding_window is None"
            )
        if self.sliding_window is not None and not windowed:
            raise ValueError(
                f"GPTConfig.sliding_window={self.sliding_window} applies to no layer: "
                f"layer_pattern={pattern!r} has no lower-case (windowed) code"
            )
        names = [CODES[c.upper()] for c in codes]
        inputs = sorted({n for n in names if ENCODINGS[n][1].where == "input"})
        if len(inputs) > 1:
            raise ValueError(
                f"GPTConfig.layer_pattern={pattern!r} mixes input encodings {inputs}; a model has one input table"
            )
        layers = tuple(
            LayerSpec("nope" if ENCODINGS[n][1].where == "input" else n, self.sliding_window if c.islower() else None)
            for n, c in zip(names, codes)
        )
        return (inputs[0] if inputs else None), layers

    def _check_layers(self, input_pe: str | None, layers: tuple[LayerSpec, ...]) -> None:
        if input_pe is not None and (input_pe not in ENCODINGS or ENCODINGS[input_pe][1].where != "input"):
            tables = sorted(n for n, (_, cls) in ENCODINGS.items() if cls.where == "input")
            raise ValueError(f"GPTConfig.input_pe must be None or one of {tables}, got {input_pe!r}")
        for i, spec in enumerate(layers):
            if spec.window is not None and (isinstance(spec.window, bool) or spec.window <= 0):
                raise ValueError(f"GPTConfig.layer_window[{i}] must be a positive int or None, got {spec.window!r}")
        if any(spec.pe == "rope" for spec in layers):
            rd = self.head_dim if self.rotary_dim is None else self.rotary_dim
            if isinstance(rd, bool) or not isinstance(rd, int) or rd <= 0 or rd % 2 or rd > self.head_dim:
                field = "rotary_dim" if self.rotary_dim is not None else "head_dim (n_embd // n_head)"
                raise ValueError(
                    f"GPTConfig.{field}={rd!r} is invalid for RoPE: the rotated channels must be an "
                    f"even number in [2, head_dim={self.head_dim}]"
                )
            theta = (self.rope_scaling or {}).get("rope_theta")
            if theta is not None and float(theta) != float(self.rope_base):
                raise ValueError(
                    f"GPTConfig.rope_scaling rope_theta={theta!r} disagrees with rope_base={self.rope_base!r}; set rope_base"
                )
        else:
            for name in ("rotary_dim", "rope_scaling"):
                if getattr(self, name) is not None:
                    raise ValueError(f"GPTConfig.{name}={getattr(self, name)!r} is set but no layer uses RoPE")

    def _check_blocks(self) -> None:
        if self.n_kv_head is not None:
            _positive_int("n_kv_head", self.n_kv_head)
            if self.n_head % self.n_kv_head:
                raise ValueError(f"GPTConfig.n_kv_head={self.n_kv_head} must divide n_head={self.n_head}")
        for name in (
            "kv_lora_rank",
            "q_lora_rank",
            "qk_rope_head_dim",
            "qk_nope_head_dim",
            "v_head_dim",
            "intermediate_size",
        ):
            if getattr(self, name) is not None:
                _positive_int(name, getattr(self, name))
        for name in ("qkv_bias", "proj_bias", "mlp_bias"):
            if getattr(self, name) is not None and not isinstance(getattr(self, name), bool):
                raise TypeError(f"GPTConfig.{name} must be a bool or None (= bias), got {getattr(self, name)!r}")
        for name in ("rope_interleave", "tie_embeddings"):
            if not isinstance(getattr(self, name), bool):
                raise TypeError(f"GPTConfig.{name} must be a bool, got {getattr(self, name)!r}")
        # a field of another attention variant would be silently ignored: refuse it by name
        taken = set(getattr(ATTENTIONS[self.attention], "config_fields", ()))
        for name, cls in ATTENTIONS.items():
            for field in getattr(cls, "config_fields", ()):
                if field not in taken and getattr(self, field) not in (None, False):
                    raise ValueError(
                        f"GPTConfig.{field}={getattr(self, field)!r} is an option of attention={name!r}, "
                        f"not of attention={self.attention!r}"
                    )
        if self.norm not in NORMS:
            raise ValueError(f"GPTConfig.norm must be one of {NORMS}, got {self.norm!r}")
        if self.mlp not in MLPS:
            raise ValueError(f"GPTConfig.mlp must be one of {MLPS}, got {self.mlp!r}")
        if isinstance(self.norm_eps, bool) or not isinstance(self.norm_eps, (int, float)) or not 0 < self.norm_eps < 1:
            raise ValueError(f"GPTConfig.norm_eps must be a number in (0, 1), got {self.norm_eps!r}")
        if self.rope_scaling is not None:
            if not isinstance(self.rope_scaling, Mapping):
                raise TypeError(
                    f"GPTConfig.rope_scaling must be a dict like Hugging Face's rope_scaling, got {self.rope_scaling!r}"
                )
            try:
                validate_scaling(self.rope_options()["scaling"])
            except ValueError as e:
                implied = (
                    ""
                    if "max_position_embeddings" in self.rope_scaling
                    else f" (max_position_embeddings is block_size={self.block_size} unless given)"
                )
                raise ValueError(f"GPTConfig.rope_scaling: {e}{implied}") from None

    def _check_pe_options(self) -> None:
        if self.pe_options is None:
            return
        if not isinstance(self.pe_options, Mapping):
            raise TypeError(
                f"GPTConfig.pe_options must be a mapping of encoding name -> options, got {self.pe_options!r}"
            )
        for name, options in self.pe_options.items():
            if name not in ENCODINGS:
                raise ValueError(f"GPTConfig.pe_options has unknown encoding {name!r}; known: {sorted(ENCODINGS)}")
            if not isinstance(options, Mapping):
                raise TypeError(f"GPTConfig.pe_options[{name!r}] must be a mapping, got {options!r}")
            if name == "rope" and (fields := sorted(set(options) & set(_ROPE_FIELDS))):
                raise ValueError(
                    f"GPTConfig.pe_options['rope'] sets {fields}: use the fields "
                    + ", ".join(_ROPE_FIELDS[k] for k in fields)
                    + " (pe_options['rope'] is for RoPE's other options, e.g. p_rope, xpos)"
                )
            accepted = inspect.signature(ENCODINGS[name][1].__init__).parameters
            unknown = sorted(set(options) - set(accepted) - {"self"})
            if unknown and not any(p.kind is p.VAR_KEYWORD for p in accepted.values()):
                known = sorted(k for k, p in accepted.items() if p.kind is p.KEYWORD_ONLY or k != "self")
                raise ValueError(
                    f"GPTConfig.pe_options[{name!r}] has unknown option(s) {unknown}; {name} takes {known}"
                )

    # -- derived -------------------------------------------------------------------------------

    @property
    def head_dim(self) -> int:
        return self.n_embd // self.n_head

    @property
    def dims(self) -> ModelDims:
        return ModelDims(n_embd=self.n_embd, n_head=self.n_head, block_size=self.block_size, n_layer=self.n_layer)

    @property
    def input_encoding(self) -> str | None:
        """The resolved input table (``input_pe`` or what ``pe`` / ``layer_pattern`` imply)."""
        return self._resolved[0]

    @property
    def layers(self) -> tuple[LayerSpec, ...]:
        """The resolved (attention encoding, window) of every layer."""
        return self._resolved[1]

    @property
    def use_qk_norm(self) -> bool:
        return self.qk_norm or (self.pe is not None and VARIANTS[self.pe].qk_norm)

    @property
    def layer_codes(self) -> tuple[str, ...]:
        """One canonical code per layer (the input table's code on layers without an attention encoding)."""
        inp = None if self.input_encoding is None else ENCODINGS[self.input_encoding][0]
        out = []
        for spec in self.layers:
            code = inp if spec.pe == "nope" and inp is not None else ENCODINGS[spec.pe][0]
            out.append(code.lower() if spec.window is not None else code)
        return tuple(out)

    def rope_options(self) -> dict[str, Any]:
        """RoPE's constructor options, grouped: what every RoPE layer of this model is built with."""
        options = {"base": float(self.rope_base), "layout": self.rope_layout, "rotary_dim": self.rotary_dim}
        if self.rope_scaling is not None:  # the model's context stands in for HF's max_position_embeddings
            options["scaling"] = {"max_position_embeddings": self.block_size} | dict(self.rope_scaling)
        return options | dict((self.pe_options or {}).get("rope", {}))  # p_rope, xpos, ...

    @property
    def kv_heads(self) -> int:
        return self.n_head if self.n_kv_head is None else self.n_kv_head

    @property
    def mlp_hidden(self) -> int:
        """The MLP's hidden width: ``intermediate_size``, else 4 C (GELU) or 8 C / 3 rounded up to 64 (SwiGLU)."""
        if self.intermediate_size is not None:
            return self.intermediate_size
        return 4 * self.n_embd if self.mlp == "gelu" else 64 * -(-8 * self.n_embd // (3 * 64))

    def encoding_options(self, name: str) -> dict[str, Any]:
        """Keyword arguments for encoding ``name`` beyond the model's sizes."""
        if name == "rope":
            return self.rope_options()
        return dict((self.pe_options or {}).get(name, {}))

    def architecture(self) -> dict[str, Any]:
        """What is built, independent of how it was asked for (``pe``, ``layer_pattern`` or explicit)."""
        uses_rope = any(s.pe == "rope" for s in self.layers)
        return {
            "input_pe": self.input_encoding,
            "layers": [{"pe": s.pe, "window": s.window} for s in self.layers],
            "layer_codes": "".join(self.layer_codes),
            "qk_norm": self.qk_norm_type if self.use_qk_norm else None,
            "attention": self.attention,
            "attention_options": {
                f: getattr(self, f) for f in getattr(ATTENTIONS[self.attention], "config_fields", ())
            },
            "rope": self.rope_options() if uses_rope else None,
            "block": {
                "norm": self.norm,
                "mlp": self.mlp,
                "mlp_hidden": self.mlp_hidden,
                "tie_embeddings": self.tie_embeddings,
            },
        }

    # -- construction --------------------------------------------------------------------------

    @classmethod
    def from_preset(cls, name: str, **overrides: Any) -> GPTConfig:
        if name not in PRESETS:
            raise ValueError(f"unknown model preset {name!r}; known: {sorted(PRESETS)}")
        return cls(**(PRESETS[name] | overrides))

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        for name in ("layer_pe", "layer_window"):
            if d[name] is not None:
                d[name] = list(d[name])
        if d["pe_options"] is not None:
            d["pe_options"] = {k: dict(v) for k, v in d["pe_options"].items()}
        if d["rope_scaling"] is not None:
            d["rope_scaling"] = dict(d["rope_scaling"])
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> GPTConfig:
        return dataclass_from_dict(cls, d, tuples=("layer_pe", "layer_window"))

    def replace(self, **changes: Any) -> GPTConfig:
        return dataclasses.replace(self, **changes)

    def __hash__(self) -> int:  # the dict fields (rope_scaling, pe_options) hash by their contents
        return hash(json.dumps(self.to_dict(), sort_keys=True))

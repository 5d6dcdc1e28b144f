"""GPTConfig: one flat dataclass describing a GPT and its positional encoding per layer.

Everything is validated at construction; a bad value raises ``ValueError`` (``TypeError`` for a
wrong type) naming the field and the value -- never an ``assert``, which ``python -O`` strips.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Literal

from posenc.encodings import CODES, ENCODINGS
from posenc.encodings.rope import LAYOUTS

#: Names accepted by ``GPTConfig.pe``: every registered encoding (one code on every layer), plus
#: the study's composite variants. Value: (layer pattern, QK-norm on).
VARIANTS: dict[str, tuple[str, bool]] = {name: (code, False) for name, (code, _) in ENCODINGS.items()} | {
    "qknorm": ("R", True),  # RoPE + QK-norm: the QK-Norm baseline of the RNoPE paper
    "rnope": ("RRRN", False),  # RoPE on three layers, NoPE on every fourth (Command R7B/A, Llama 4 iRoPE)
}

QK_NORM_TYPES: tuple[str, ...] = ("rms", "l2")

#: Named configurations; ``GPTConfig.from_preset(name, **overrides)``.
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


def _positive_int(name: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"GPTConfig.{name} must be an int, got {value!r} ({type(value).__name__})")
    if value <= 0:
        raise ValueError(f"GPTConfig.{name} must be > 0, got {value!r}")


@dataclass(frozen=True)
class GPTConfig:
    """A GPT: nanoGPT's fields, the positional encoding and its options.

    ``pe`` picks a variant (see :data:`VARIANTS`); ``layer_pattern`` overrides its per-layer
    encodings with a string of codes tiled over depth: ``P`` learned absolute, ``S`` sinusoidal,
    ``N`` NoPE, ``R`` RoPE, ``B`` ALiBi; a lower-case code puts a sliding window of
    ``sliding_window`` tokens on that layer. ``qk_norm`` adds QK-norm to every layer, with any
    encoding.
    """

    block_size: int = 1024
    vocab_size: int = 50304
    n_layer: int = 12
    n_head: int = 12
    n_embd: int = 768
    dropout: float = 0.0
    bias: bool = True
    pe: str = "absolute"
    rope_base: float = 10000.0
    rope_layout: Literal["half", "interleaved"] = "half"
    rotary_dim: int | None = None
    qk_norm: bool = False
    qk_norm_type: Literal["rms", "l2"] = "rms"
    layer_pattern: str | None = None
    sliding_window: int | None = None

    def __post_init__(self) -> None:
        for name in ("block_size", "vocab_size", "n_layer", "n_head", "n_embd"):
            _positive_int(name, getattr(self, name))
        if self.n_embd % self.n_head:
            raise ValueError(
                f"GPTConfig.n_embd={self.n_embd} must be divisible by n_head={self.n_head}"
            )
        if isinstance(self.dropout, bool) or not isinstance(self.dropout, (int, float)) or not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"GPTConfig.dropout must be a float in [0, 1), got {self.dropout!r}")
        for name in ("bias", "qk_norm"):
            if not isinstance(getattr(self, name), bool):
                raise TypeError(f"GPTConfig.{name} must be a bool, got {getattr(self, name)!r}")
        if self.pe not in VARIANTS:
            raise ValueError(f"GPTConfig.pe must be one of {sorted(VARIANTS)}, got {self.pe!r}")
        if isinstance(self.rope_base, bool) or not isinstance(self.rope_base, (int, float)) or not self.rope_base > 0:
            raise ValueError(f"GPTConfig.rope_base must be a number > 0, got {self.rope_base!r}")
        if self.rope_layout not in LAYOUTS:
            raise ValueError(f"GPTConfig.rope_layout must be one of {LAYOUTS}, got {self.rope_layout!r}")
        if self.qk_norm_type not in QK_NORM_TYPES:
            raise ValueError(f"GPTConfig.qk_norm_type must be one of {QK_NORM_TYPES}, got {self.qk_norm_type!r}")
        if self.sliding_window is not None:
            _positive_int("sliding_window", self.sliding_window)
        self._check_pattern()

    def _check_pattern(self) -> None:
        pattern = self.layer_pattern
        if pattern is not None:
            if not isinstance(pattern, str) or not pattern:
                raise ValueError(f"GPTConfig.layer_pattern must be a non-empty string, got {pattern!r}")
            for i, char in enumerate(pattern):
                if char.upper() not in CODES:
                    known = ", ".join(f"{c}={n}" for c, n in CODES.items())
                    raise ValueError(
                        f"GPTConfig.layer_pattern={pattern!r} has unknown character {char!r} at index {i}; "
                        f"known codes: {known} (lower case = sliding window)"
                    )
        codes = self.layer_codes
        if any(c.islower() for c in codes) and self.sliding_window is None:
            raise ValueError(
                f"GPTConfig.layer_pattern={''.join(codes)!r} has windowed (lower-case) layers "
                f"but sliding_window is None"
            )
        if self.sliding_window is not None and not any(c.islower() for c in codes):
            raise ValueError(
                f"GPTConfig.sliding_window={self.sliding_window} applies to no layer: "
                f"layer_pattern={''.join(codes)!r} has no lower-case (windowed) code"
            )
        inputs = sorted({c.upper() for c in codes if self.encoding_class(c).where == "input"})
        if len(inputs) > 1:
            raise ValueError(
                f"GPTConfig.layer_pattern={''.join(codes)!r} mixes input encodings {inputs}; "
                f"a model has one input embedding table"
            )
        if "R" in {c.upper() for c in codes}:
            rd = self.head_dim if self.rotary_dim is None else self.rotary_dim
            if isinstance(rd, bool) or not isinstance(rd, int) or rd <= 0 or rd % 2 or rd > self.head_dim:
                field = "rotary_dim" if self.rotary_dim is not None else "head_dim (n_embd // n_head)"
                raise ValueError(
                    f"GPTConfig.{field}={rd!r} is invalid for RoPE: the rotated channels must be an "
                    f"even number in [2, head_dim={self.head_dim}]"
                )
        elif self.rotary_dim is not None:
            raise ValueError(f"GPTConfig.rotary_dim={self.rotary_dim} is set but no layer uses RoPE")

    # -- derived -------------------------------------------------------------------------------

    @property
    def head_dim(self) -> int:
        return self.n_embd // self.n_head

    @property
    def layer_codes(self) -> tuple[str, ...]:
        """One encoding code per layer: ``layer_pattern`` (or the variant's) tiled over depth."""
        pattern = self.layer_pattern
        if pattern is None:
            pattern = VARIANTS[self.pe][0]
            if self.sliding_window is not None:  # windows go on the layers whose attention sees positions
                pattern = "".join(c.lower() if self.encoding_class(c).where in ("qk", "scores") else c for c in pattern)
        return tuple(pattern[i % len(pattern)] for i in range(self.n_layer))

    @property
    def use_qk_norm(self) -> bool:
        return self.qk_norm or VARIANTS[self.pe][1]

    @staticmethod
    def encoding_class(code: str):  # -> type[PositionalEncoding]
        return ENCODINGS[CODES[code.upper()]][1]

    # -- construction --------------------------------------------------------------------------

    @classmethod
    def from_preset(cls, name: str, **overrides: Any) -> GPTConfig:
        if name not in PRESETS:
            raise ValueError(f"unknown preset {name!r}; known: {sorted(PRESETS)}")
        return cls(**(PRESETS[name] | overrides))

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> GPTConfig:
        fields = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - fields)
        if unknown:
            raise ValueError(f"unknown GPTConfig fields {unknown}")
        return cls(**d)

    def replace(self, **changes: Any) -> GPTConfig:
        return dataclasses.replace(self, **changes)

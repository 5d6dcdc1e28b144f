"""Named variants: one registry of the architectures the sweep and the studies compare.

A variant is a named override of a run: flat :class:`~posenc.config.GPTConfig` fields (``model``,
see :mod:`posenc.sugar`), and optionally :class:`~posenc.train.config.TrainConfig` fields
(``train``), with the row label and description the report shows. ``GPTConfig(pe=name)`` builds the
variant's model; ``compare --variants name`` trains it.

Every registered encoding is a variant of its own name (on every layer, or as the input table) with
no entry of its own: :data:`VARIANTS` derives it, so an encoding added to ``ENCODINGS`` at run time
is a variant too. :data:`COMPOSITES` are the others.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from posenc.encodings import ENCODINGS


@dataclass(frozen=True)
class Variant:
    """``model``: flat GPTConfig fields; ``train``: TrainConfig fields; ``label``/``description``: the report's."""

    model: Mapping[str, Any]
    label: str | None = None
    description: str | None = None
    train: Mapping[str, Any] = field(default_factory=dict)


ROPE = ("rope",)
RNOPE = ("rope", "rope", "rope", "nope")  # Command R7B/A, Llama 4 iRoPE

#: The composite variants (names of registered encodings are variants too; see :data:`VARIANTS`).
COMPOSITES: dict[str, Variant] = {
    # RoPE + QK-norm: the QK-Norm baseline of the RNoPE paper
    "qknorm": Variant({"layer_pe": ROPE, "qk_norm": True}, "GPT QK Norm", "RoPE + QK-norm (RMS) on every layer"),
    "rnope": Variant({"layer_pe": RNOPE}, "GPT RNoPE", "RoPE on three layers, NoPE on every fourth"),
    "absolute_qknorm": Variant(
        {"input_pe": "absolute", "layer_pe": ("nope",), "qk_norm": True},
        "GPT + QK Norm",
        "learned absolute table + QK-norm (RMS)",
    ),
    "nope_qknorm": Variant({"layer_pe": ("nope",), "qk_norm": True}, "GPT NoPE + QK Norm", "NoPE + QK-norm (RMS)"),
    # 2 KV heads for 4 query heads at the cpu and owt-16m widths
    "gqa": Variant(
        {"layer_pe": ROPE, "n_kv_head": 2}, "GPT GQA", "RoPE with grouped-query attention (half as many KV heads)"
    ),
    "mla": Variant(
        {"layer_pe": ROPE, "attention": "mla"}, "GPT MLA", "multi-head latent attention with decoupled RoPE"
    ),
    # the L2 form of QK-norm (Henry et al. 2020) for both readings of the study's row
    "qknorm_l2": Variant(
        {"layer_pe": ROPE, "qk_norm": True, "qk_norm_type": "l2"},
        "GPT QK Norm (L2)",
        "RoPE + QK-norm (L2 with a learned temperature) on every layer",
    ),
    "absolute_qknorm_l2": Variant(
        {"input_pe": "absolute", "layer_pe": ("nope",), "qk_norm": True, "qk_norm_type": "l2"},
        "GPT + QK Norm (L2)",
        "learned absolute table + QK-norm (L2 with a learned temperature)",
    ),
    # RNoPE whose RoPE layers attend within a window of a quarter of the cpu context (128)
    "rnope_swa": Variant(
        {"layer_pe": RNOPE, "layer_window": (32, 32, 32, None)},
        "GPT RNoPE-SWA",
        "RNoPE whose RoPE layers attend within a 32-token window",
    ),
    # attention sinks (gpt-oss): one learned logit per head in the softmax's denominator
    "rope_sinks": Variant(
        {"layer_pe": ROPE, "attention_options": {"sinks": True}},
        "GPT RoPE + sinks",
        "RoPE on every layer, attention sinks",
    ),
    "rnope_swa_sinks": Variant(
        {"layer_pe": RNOPE, "layer_window": (32, 32, 32, None), "attention_options": {"sinks": True}},
        "GPT RNoPE-SWA + sinks",
        "RNoPE-SWA with attention sinks on every layer",
    ),
}

#: Labels and descriptions of the single-encoding variants, in the study's style.
_SINGLE: dict[str, tuple[str, str]] = {
    "absolute": ("GPT", "learned absolute position table (GPT-2)"),
    "sinusoidal": ("GPT Sinusoidal", "fixed sinusoidal table at the input"),
    "nope": ("GPT NoPE", "no positional encoding"),
    "rope": ("GPT RoPE", "RoPE on every layer"),
    "alibi": ("GPT ALiBi", "ALiBi distance bias on every layer"),
    "t5": ("GPT T5 bias", "T5 bucketed relative bias on every layer"),
    "kerple": ("GPT KERPLE", "KERPLE logarithmic bias on every layer"),
    "fire": ("GPT FIRE", "FIRE learned distance function on every layer"),
    "fox": ("GPT FoX", "forget gates from the content (Forgetting Transformer) on every layer"),
    "fox_rope": ("GPT FoX + RoPE", "forget gates and RoPE on every layer"),
    "stickbreaking": ("GPT stick-breaking", "stick-breaking attention weights, no positional encoding"),
    "cope": ("GPT CoPE", "contextual positions: gated counts of the keys (CoPE) on every layer"),
}


def variant(name: str) -> Variant:
    """The variant called ``name``: a composite, or a registered encoding alone."""
    if name in COMPOSITES:
        return COMPOSITES[name]
    if name in ENCODINGS:
        label, description = _SINGLE.get(name, (None, None))
        where = ENCODINGS[name][1].where
        model = {"input_pe": name, "layer_pe": ("nope",)} if where == "input" else {"layer_pe": (name,)}
        return Variant(model, label, description)
    raise ValueError(f"unknown variant {name!r}; known: {variant_names()}")


def variant_names() -> list[str]:
    """Every variant name: the registered encodings and the composites."""
    return sorted(set(ENCODINGS) | set(COMPOSITES))


class _Variants(Mapping):
    """Every variant by name, read from ``ENCODINGS`` and ``COMPOSITES`` at each access."""

    def __getitem__(self, name: str) -> Variant:
        if name not in COMPOSITES and name not in ENCODINGS:
            raise KeyError(name)
        return variant(name)

    def __iter__(self) -> Iterator[str]:
        return iter(variant_names())

    def __len__(self) -> int:
        return len(variant_names())


#: The one registry of named variants: name -> :class:`Variant`.
VARIANTS: Mapping[str, Variant] = _Variants()

#: The variants whose positions depend on the content (forget gates, counted gates, stick-breaking,
#: sinks), and the windowed hybrid the sinks are compared with: rows every study runs.
CONTENT_DEPENDENT: tuple[str, ...] = (
    "fox",
    "fox_rope",
    "cope",
    "stickbreaking",
    "rope_sinks",
    "rnope_swa",
    "rnope_swa_sinks",
)


def label(name: str, default: str | None = None) -> str:
    """The report's row name of a variant: its own, else ``default``, else ``"GPT <name>"``."""
    v = VARIANTS.get(name)
    return (v.label if v is not None and v.label else None) or default or f"GPT {name}"


def description(name: str) -> str:
    v = VARIANTS.get(name)
    return (v.description if v is not None and v.description else None) or f"the {name} variant"

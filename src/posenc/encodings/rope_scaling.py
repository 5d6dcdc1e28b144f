"""RoPE frequency schedules for long contexts: one pure function per ``rope_type``.

What it is: the inverse frequencies ``inv_freq`` (rotary_dim/2,) of RoPE and the attention factor
that multiplies cos and sin, for each schedule Hugging Face transformers names in
``rope_parameters["rope_type"]`` (``rope_scaling`` in v4 configs). Where it acts: nowhere by itself;
:class:`posenc.encodings.rope.RotaryEmbedding` turns the frequencies into its rotation tables.

Every schedule has the signature ``fn(rotary_dim, rope_base, params, seq_len=None, *, device=None)
-> (inv_freq, attention_factor)``: ``params`` is what :func:`validate_scaling` returns, ``inv_freq`` is
float64, and ``seq_len`` (the total sequence length, past + current tokens; an int or a 0-dim
tensor) matters only for the length-dependent schedules in ``ROPE_SCALINGS`` with a ``length_key``. A new schedule is
one function (here or in its own file) plus one :class:`Schedule` line in ``ROPE_SCALINGS``.

Conventions
- The formulas, names and defaults are those of ``transformers.modeling_rope_utils`` (v5); where
  they differ from the paper the function's docstring says so. Hugging Face computes in float32;
  here everything is float64, so the two agree to float32 rounding (~1e-7 relative).
- Validation is strict where Hugging Face only warns: unknown keys, unknown types, missing keys and
  out-of-range values raise ``ValueError`` naming the key and the value.
- ``rope_theta`` and ``partial_rotary_factor`` (which v5 puts inside ``rope_parameters``) are
  accepted and checked here but consumed by the caller: they fix ``rope_base`` and ``rotary_dim``.
  ``max_position_embeddings`` is a posenc key, not a Hugging Face one: Hugging Face reads it from the
  config, and ``dynamic`` (and ``yarn``/``longrope`` without ``factor``) need it.

Golden tests: tests/test_rope_scaling.py compares every schedule with
``transformers.modeling_rope_utils.ROPE_INIT_FUNCTIONS`` on the configs of released models.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any, Literal, NamedTuple

import torch
from torch import Tensor

RopeType = Literal["default", "linear", "dynamic", "yarn", "longrope", "llama3", "proportional"]
ScalingFn = Callable[..., tuple[Tensor, float]]
F64 = torch.float64


def default_inv_freq(rotary_dim: int, rope_base: float, device: torch.device | None = None) -> Tensor:
    """``rope_base ** (-2i / rotary_dim)`` for i < rotary_dim/2, float64 (RoFormer)."""
    return rope_base ** -(torch.arange(0, rotary_dim, 2, dtype=F64, device=device) / rotary_dim)


def _check_dim(rotary_dim: int, rope_type: str) -> None:
    if not isinstance(rotary_dim, int) or rotary_dim < 2 or rotary_dim % 2:
        raise ValueError(f"rope_type {rope_type!r}: rotary_dim must be an even int >= 2, got {rotary_dim!r}")


# ---------------------------------------------------------------------------------------------
# the schedules


def default_schedule(
    rotary_dim: int,
    rope_base: float,
    params: Mapping[str, Any],
    seq_len: int | Tensor | None = None,
    *,
    device: torch.device | None = None,
) -> tuple[Tensor, float]:
    """RoFormer: ``w_i = b^(-2i/d)``, attention factor 1."""
    _check_dim(rotary_dim, "default")
    return default_inv_freq(rotary_dim, rope_base, device), 1.0


def linear_schedule(
    rotary_dim: int,
    rope_base: float,
    params: Mapping[str, Any],
    seq_len: int | Tensor | None = None,
    *,
    device: torch.device | None = None,
) -> tuple[Tensor, float]:
    """Position interpolation (Chen et al. 2023; kaiokendev): ``w_i = b^(-2i/d) / factor``, i.e. the
    positions divided by ``factor``."""
    _check_dim(rotary_dim, "linear")
    return default_inv_freq(rotary_dim, rope_base, device) / params["factor"], 1.0


def dynamic_schedule(
    rotary_dim: int,
    rope_base: float,
    params: Mapping[str, Any],
    seq_len: int | Tensor | None = None,
    *,
    device: torch.device | None = None,
) -> tuple[Tensor, float]:
    """Dynamic NTK (bloc97, emozilla): the base grows with the sequence length L past the trained
    length L0 = ``max_position_embeddings``:
    ``b' = b * (factor * max(L, L0) / L0 - (factor - 1)) ** (d / (d - 2))``, ``w_i = b'^(-2i/d)``.

    As Hugging Face: L0 is ``max_position_embeddings`` (not ``original_max_position_embeddings``)
    and ``seq_len=None`` means L = L0, the unscaled frequencies. Hugging Face's module also keeps the
    largest L seen so far and only shrinks back below L0; this function is pure in L, which is the
    same for every monotonically growing generation.
    """
    _check_dim(rotary_dim, "dynamic")
    if rotary_dim == 2:
        raise ValueError("rope_type 'dynamic': rotary_dim must be > 2 (the exponent is d / (d - 2)), got 2")
    factor, L0 = float(params["factor"]), params["max_position_embeddings"]
    exponent = torch.arange(0, rotary_dim, 2, dtype=F64, device=device) / rotary_dim
    if seq_len is None:
        seq_len = L0
    if isinstance(seq_len, Tensor):  # traceable: no host sync, no branch on the value
        L = torch.clamp(seq_len.to(device=exponent.device, dtype=F64), min=L0)
        log_base = math.log(rope_base) + rotary_dim / (rotary_dim - 2) * torch.log(factor * L / L0 - (factor - 1))
        return torch.exp(-exponent * log_base), 1.0
    L = max(int(seq_len), L0)
    base = rope_base * (factor * L / L0 - (factor - 1)) ** (rotary_dim / (rotary_dim - 2))
    return base**-exponent, 1.0


def _yarn_mscale(scale: float, mscale: float = 1.0) -> float:
    return 1.0 if scale <= 1 else 0.1 * mscale * math.log(scale) + 1.0


def yarn_schedule(
    rotary_dim: int,
    rope_base: float,
    params: Mapping[str, Any],
    seq_len: int | Tensor | None = None,
    *,
    device: torch.device | None = None,
) -> tuple[Tensor, float]:
    """YaRN (Peng et al. 2023, arXiv:2309.00071): NTK-by-parts interpolation. With r_i = L0 / wavelength_i
    the number of turns of pair i over the trained length L0, pairs with r_i > beta_fast keep ``w_i``,
    those with r_i < beta_slow get ``w_i / factor``, and a linear ramp in i blends between;
    attention factor ``0.1 ln(factor) + 1`` on cos and sin.

    As Hugging Face rather than the paper: the ramp runs over the pair index i between the
    correction dims ``d ln(L0 / (2 pi beta)) / (2 ln b)``, floored/ceiled when ``truncate`` (the
    reference implementation; the paper has no rounding; gpt-oss sets ``truncate=False``) and
    clamped to [0, d - 1]; with ``mscale`` and ``mscale_all_dim`` both set (DeepSeek-V2/V3) the factor is
    ``mscale(factor, mscale) / mscale(factor, mscale_all_dim)``; ``attention_factor`` overrides it;
    ``factor=None`` means ``max_position_embeddings / original_max_position_embeddings``.
    """
    _check_dim(rotary_dim, "yarn")
    L0 = params["original_max_position_embeddings"]
    factor = params["factor"]
    if factor is None:
        factor = params["max_position_embeddings"] / L0
    attention_factor = params.get("attention_factor")
    if attention_factor is None:
        mscale, mscale_all_dim = params.get("mscale"), params.get("mscale_all_dim")
        if mscale and mscale_all_dim:
            attention_factor = _yarn_mscale(factor, mscale) / _yarn_mscale(factor, mscale_all_dim)
        else:
            attention_factor = _yarn_mscale(factor)

    def correction_dim(turns: float) -> float:
        return rotary_dim * math.log(L0 / (turns * 2 * math.pi)) / (2 * math.log(rope_base))

    low, high = correction_dim(params["beta_fast"]), correction_dim(params["beta_slow"])
    if params["truncate"]:
        low, high = math.floor(low), math.ceil(high)
    low, high = max(low, 0), min(high, rotary_dim - 1)
    if low == high:
        high += 0.001  # Hugging Face's guard against a zero-width ramp
    ramp = ((torch.arange(rotary_dim // 2, dtype=F64, device=device) - low) / (high - low)).clamp(0, 1)
    extrapolation = default_inv_freq(rotary_dim, rope_base, device)  # (d/2,): the trained frequencies
    interpolation = extrapolation / factor
    inv_freq = interpolation * ramp + extrapolation * (1 - ramp)
    return inv_freq, float(attention_factor)


def longrope_schedule(
    rotary_dim: int,
    rope_base: float,
    params: Mapping[str, Any],
    seq_len: int | Tensor | None = None,
    *,
    device: torch.device | None = None,
) -> tuple[Tensor, float]:
    """LongRoPE (Ding et al. 2024, arXiv:2402.13753; Phi-3): per-pair rescale factors searched offline,
    ``w_i = b^(-2i/d) / lambda_i`` with lambda = ``long_factor`` when L > L0 =
    ``original_max_position_embeddings`` and ``short_factor`` otherwise (``seq_len=None``: short);
    attention factor ``sqrt(1 + ln(factor) / ln(L0))``.

    As Hugging Face: one factor set for the whole sequence, switched on L = max position + 1 (the
    paper switches per request too); ``factor=None`` means ``max_position_embeddings / L0``, and
    ``attention_factor`` overrides the formula.
    """
    _check_dim(rotary_dim, "longrope")
    L0 = params["original_max_position_embeddings"]
    for key in ("short_factor", "long_factor"):
        if len(params[key]) != rotary_dim // 2:
            raise ValueError(
                f"rope_type 'longrope': {key} must have rotary_dim/2 = {rotary_dim // 2} entries, "
                f"got {len(params[key])}: {key}={list(params[key])!r}"
            )
    factor = params.get("factor")
    if factor is None:
        factor = params["max_position_embeddings"] / L0
    attention_factor = params.get("attention_factor")
    if attention_factor is None:
        attention_factor = 1.0 if factor <= 1.0 else math.sqrt(1 + math.log(factor) / math.log(L0))
    base = default_inv_freq(rotary_dim, rope_base, device)
    short = base / torch.tensor(params["short_factor"], dtype=F64, device=device)
    long = base / torch.tensor(params["long_factor"], dtype=F64, device=device)
    if isinstance(seq_len, Tensor):  # traceable: Hugging Face's torch.where on a 0-dim length
        return torch.where(seq_len.to(short.device) > L0, long, short), float(attention_factor)
    return (long if seq_len is not None and seq_len > L0 else short), float(attention_factor)


def llama3_schedule(
    rotary_dim: int,
    rope_base: float,
    params: Mapping[str, Any],
    seq_len: int | Tensor | None = None,
    *,
    device: torch.device | None = None,
) -> tuple[Tensor, float]:
    """Llama 3.1 (Meta, 2024): with wavelength lambda_i = 2 pi / w_i and L0 =
    ``original_max_position_embeddings``, keep w_i where lambda_i < L0 / high_freq_factor, divide by
    ``factor`` where lambda_i > L0 / low_freq_factor, and in between blend with
    ``s = (L0 / lambda_i - low) / (high - low)``: ``(1 - s) w_i / factor + s w_i``. Attention factor 1.

    ``high_freq_factor == low_freq_factor`` (Llama 4 Scout: both 1) is a step at lambda = L0 / low: the
    band in between is that one wavelength. Hugging Face accepts it and computes ``s`` with the same
    division by ``high - low = 0`` on tensors (inf or nan), which ``torch.where`` then leaves unused
    everywhere but at a wavelength exactly equal to L0 / low; so does this function.
    """
    _check_dim(rotary_dim, "llama3")
    factor, low, high = (
        params["factor"],
        params["low_freq_factor"],
        params["high_freq_factor"],
    )
    L0 = params["original_max_position_embeddings"]
    inv_freq = default_inv_freq(rotary_dim, rope_base, device)
    wavelen = 2 * math.pi / inv_freq
    smooth = (L0 / wavelen - low) / (high - low)
    blended = (1 - smooth) * inv_freq / factor + smooth * inv_freq
    out = torch.where(wavelen > L0 / low, inv_freq / factor, inv_freq)
    medium = (wavelen >= L0 / high) & (wavelen <= L0 / low)
    return torch.where(medium, blended, out), 1.0


def proportional_schedule(
    rotary_dim: int,
    rope_base: float,
    params: Mapping[str, Any],
    seq_len: int | Tensor | None = None,
    *,
    device: torch.device | None = None,
) -> tuple[Tensor, float]:
    """Proportional RoPE (Gemma 4's global layers) = p-RoPE (Barbero et al. 2024, "Round and Round We
    Go", arXiv:2410.06205) with p = ``partial_rotary_factor``: the first ``int(p * d // 2)`` pairs keep
    ``b^(-2i/d)`` (exponent over the full d, unlike partial rotary), the remaining lowest frequencies
    are 0 (those pairs carry no position), all divided by ``factor`` (default 1). Attention factor 1.

    Unlike every other schedule, ``rotary_dim`` here is the whole head: ``partial_rotary_factor``
    picks frequencies, not channels.
    """
    _check_dim(rotary_dim, "proportional")
    kept = int(params["partial_rotary_factor"] * rotary_dim // 2)
    inv_freq = default_inv_freq(rotary_dim, rope_base, device)
    inv_freq[kept:] = 0.0
    return inv_freq / params["factor"], 1.0


class Schedule(NamedTuple):
    """One frequency schedule: its function (module docstring), Hugging Face's keys for it, and, for a
    schedule whose frequencies depend on the total length L, the params key of the length up to which
    (L <= params[key]) it equals its ``seq_len=None`` frequencies."""

    fn: ScalingFn
    required: frozenset[str] = frozenset()
    optional: Mapping[str, Any] = {}  # key -> Hugging Face's default
    length_key: str | None = None


#: rope_type -> schedule. A new schedule: its function (here or in its own file) and one line.
ROPE_SCALINGS: dict[str, Schedule] = {
    "default": Schedule(default_schedule),
    "linear": Schedule(linear_schedule, frozenset({"factor"})),
    "dynamic": Schedule(
        dynamic_schedule, frozenset({"factor", "max_position_embeddings"}), length_key="max_position_embeddings"
    ),
    "yarn": Schedule(
        yarn_schedule,
        frozenset({"factor", "original_max_position_embeddings"}),
        {
            "attention_factor": None,
            "beta_fast": 32.0,
            "beta_slow": 1.0,
            "mscale": None,
            "mscale_all_dim": None,
            "truncate": True,
        },
    ),
    "longrope": Schedule(
        longrope_schedule,
        frozenset({"short_factor", "long_factor", "original_max_position_embeddings"}),
        {"factor": None, "attention_factor": None},
        length_key="original_max_position_embeddings",
    ),
    "llama3": Schedule(
        llama3_schedule,
        frozenset({"factor", "original_max_position_embeddings", "low_freq_factor", "high_freq_factor"}),
    ),
    "proportional": Schedule(proportional_schedule, optional={"factor": 1.0, "partial_rotary_factor": 1.0}),
}


def length_key(rope_type: str) -> str | None:
    """The params key bounding the lengths at which a length-dependent schedule is static; None for static ones."""
    return ROPE_SCALINGS[rope_type].length_key


# ---------------------------------------------------------------------------------------------
# validation

_COMMON = {
    "rope_type",
    "rope_theta",
    "partial_rotary_factor",
    "max_position_embeddings",
}


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _bad(rope_type: str, key: str, value: Any, must: str) -> ValueError:
    return ValueError(f"rope scaling {rope_type!r}: {key} must be {must}, got {key}={value!r}")


def validate_scaling(params: Mapping[str, Any] | None) -> dict[str, Any]:
    """Check a Hugging Face RoPE dict and return it normalised for the schedules.

    Accepts ``rope_parameters`` (v5) or ``rope_scaling`` (v4): the type under ``rope_type`` or the
    legacy ``type`` (both only if equal), each type's own keys, plus ``rope_theta``,
    ``partial_rotary_factor`` and posenc's ``max_position_embeddings``. ``None`` means ``default``.
    Returns a new dict with ``rope_type`` set, ``type`` dropped and the optional keys' Hugging Face
    defaults filled in. Raises ``ValueError`` naming the key and the value otherwise.
    """
    if params is None:
        params = {}
    if not isinstance(params, Mapping):
        raise TypeError(f"rope scaling must be a dict or None, got {params!r}")
    params = dict(params)
    legacy = params.pop("type", None)
    rope_type = params.get("rope_type", legacy if legacy is not None else "default")
    if legacy is not None and legacy != rope_type:
        raise ValueError(f"rope scaling: rope_type={rope_type!r} and type={legacy!r} disagree")
    if rope_type not in ROPE_SCALINGS:
        raise ValueError(f"rope scaling: unknown rope_type={rope_type!r}; known: {sorted(ROPE_SCALINGS)}")
    params["rope_type"] = rope_type
    required, optional = ROPE_SCALINGS[rope_type].required, ROPE_SCALINGS[rope_type].optional
    for key in params:
        if key not in required and key not in optional and key not in _COMMON:
            raise ValueError(
                f"rope scaling {rope_type!r}: unknown key {key}={params[key]!r}; "
                f"allowed: {sorted(required | set(optional) | _COMMON)}"
            )
    for key in sorted(required):
        if key not in params:
            raise ValueError(f"rope scaling {rope_type!r}: missing required key {key!r} in {params!r}")
    out = {**optional, **params}
    _check_values(rope_type, out)
    return out


def _check_values(rope_type: str, p: dict[str, Any]) -> None:
    def number(key: str, must: str, ok: Callable[[float], bool], allow_none: bool = False) -> None:
        if key not in p or (allow_none and p[key] is None):
            return
        if not _is_number(p[key]) or not ok(p[key]):
            raise _bad(rope_type, key, p[key], must)

    def positive_int(key: str) -> None:
        v = p.get(key)
        if key in p and not (isinstance(v, int) and not isinstance(v, bool) and v > 0):
            raise _bad(rope_type, key, v, "an int > 0")

    number("rope_theta", "a number > 0", lambda v: v > 0)
    number("partial_rotary_factor", "a number in (0, 1]", lambda v: 0 < v <= 1)
    positive_int("max_position_embeddings")
    positive_int("original_max_position_embeddings")
    # yarn and longrope derive a missing factor from the two lengths, as Hugging Face does
    derivable = rope_type in ("yarn", "longrope")
    number("factor", "a number >= 1", lambda v: v >= 1, allow_none=derivable)
    if derivable and p.get("factor") is None and "max_position_embeddings" not in p:
        raise ValueError(
            f"rope scaling {rope_type!r}: factor=None needs max_position_embeddings to derive it, got {p!r}"
        )
    number("attention_factor", "a number > 0", lambda v: v > 0, allow_none=True)
    number("beta_fast", "a number > 0", lambda v: v > 0)
    number("beta_slow", "a number > 0", lambda v: v > 0)
    if rope_type == "yarn" and p["beta_fast"] < p["beta_slow"]:
        raise _bad(rope_type, "beta_fast", p["beta_fast"], f">= beta_slow={p['beta_slow']!r}")
    number("mscale", "a number >= 0", lambda v: v >= 0, allow_none=True)
    number("mscale_all_dim", "a number >= 0", lambda v: v >= 0, allow_none=True)
    if "truncate" in p and not isinstance(p["truncate"], bool):
        raise _bad(rope_type, "truncate", p["truncate"], "a bool")
    number("low_freq_factor", "a number > 0", lambda v: v > 0)
    number("high_freq_factor", "a number > 0", lambda v: v > 0)
    if rope_type == "llama3":
        if p["high_freq_factor"] < p["low_freq_factor"]:  # equal: a step (Llama 4 Scout)
            raise _bad(
                rope_type,
                "high_freq_factor",
                p["high_freq_factor"],
                f">= low_freq_factor={p['low_freq_factor']!r}",
            )
        mpe = p.get("max_position_embeddings")
        if mpe is not None and p["original_max_position_embeddings"] > mpe:
            raise _bad(
                rope_type,
                "original_max_position_embeddings",
                p["original_max_position_embeddings"],
                f"<= max_position_embeddings={mpe!r}",
            )
    for key in ("short_factor", "long_factor"):
        v = p.get(key)
        if key in p and not (isinstance(v, (list, tuple)) and len(v) > 0 and all(_is_number(x) and x > 0 for x in v)):
            raise _bad(rope_type, key, v, "a non-empty list of numbers > 0")
    if rope_type == "longrope" and len(p["short_factor"]) != len(p["long_factor"]):
        raise _bad(
            rope_type,
            "long_factor",
            p["long_factor"],
            f"as long as short_factor ({len(p['short_factor'])})",
        )


def scaling_rotary_dim(head_dim: int, params: Mapping[str, Any]) -> int:
    """The channels a schedule rotates: ``int(head_dim * partial_rotary_factor)`` as Hugging Face,
    except ``proportional``, whose ``partial_rotary_factor`` zeroes frequencies and rotates the head."""
    if params["rope_type"] == "proportional":
        return head_dim
    return int(head_dim * params.get("partial_rotary_factor", 1.0))


def hf_rope_arguments(config: Any, layer_type: str | None = None) -> tuple[int, float, dict[str, Any], dict[str, Any]]:
    """(head_dim, base, scaling dict, options) of the RoPE of a transformers config (object or
    ``config.json`` dict), resolved as Hugging Face does (see ``RotaryEmbedding.from_hf_config``);
    options: M-RoPE's ``mrope_section`` / ``mrope_interleaved`` where the parameters have them."""
    get = config.get if isinstance(config, Mapping) else (lambda key, default=None: getattr(config, key, default))
    sizes = get  # per-layer sizes: Gemma 4's global layers have their own head_dim
    if layer_type is not None and not isinstance(config, Mapping) and hasattr(config, "per_layer_config"):
        view = config.per_layer_config[layer_type]
        sizes = lambda key, default=None: getattr(view, key, default)  # noqa: E731
    params = get("rope_parameters") or get("rope_scaling") or {}
    layer_types = set(get("layer_types") or ()) | {k for k, v in params.items() if isinstance(v, Mapping)}
    if params and all(k in layer_types for k in params):  # per layer type
        if layer_type is None:
            raise ValueError(f"this config has per-layer RoPE parameters; pass layer_type, one of {sorted(params)}")
        if layer_type not in params:
            raise ValueError(f"layer_type={layer_type!r} is not in the config's RoPE parameters {sorted(params)}")
        params = params[layer_type]
        if params is None:
            raise ValueError(f"layer_type={layer_type!r} has no RoPE (its parameters are None)")
    params, options = dict(params), {}
    # "mrope": Qwen2-VL's legacy type, M-RoPE over the default schedule (as Hugging Face reads it)
    if params.get("type") == "mrope":
        del params["type"]
        params.setdefault("rope_type", "default")
    if params.get("rope_type") == "mrope":
        params["rope_type"] = "default"
    if "mrope_section" in params:  # M-RoPE (Qwen2-VL, Qwen3-VL): options, not a schedule
        options["mrope_section"] = tuple(params.pop("mrope_section"))
    if "mrope_interleaved" in params:
        options["mrope_interleaved"] = bool(params.pop("mrope_interleaved"))
    rope_type = params.get("rope_type", params.get("type", "default"))
    theta = params.pop("rope_theta", None) or get("rope_theta") or 10000.0
    if "partial_rotary_factor" not in params and get("partial_rotary_factor") is not None:
        params["partial_rotary_factor"] = get("partial_rotary_factor")
    mpe = get("max_position_embeddings")
    if rope_type in ("llama3", "yarn", "longrope"):
        if get("original_max_position_embeddings") is not None:  # Hugging Face gives it priority
            params["original_max_position_embeddings"] = get("original_max_position_embeddings")
        elif mpe is not None:
            params.setdefault("original_max_position_embeddings", mpe)
    if mpe is not None:
        params["max_position_embeddings"] = mpe
    head_dim = sizes("head_dim") or sizes("hidden_size") // sizes("num_attention_heads")
    return head_dim, float(theta), params, options

"""The one attention kernel's entry point: :func:`attend` picks a path for every attention variant.

- ``"sdpa"``: ``scaled_dot_product_attention`` -- a softmax of q.k shaped by nothing but causality:
  ``is_causal=True`` (the flash kernel where one exists), or a boolean (Tq, Tk) mask in a KV-cache
  step (over the keys from ``Mask.first_key`` on); also a one-query decoding step of a window or
  chunk and nothing else, which sees every one of those keys (no mask);
- ``"dense"``: :func:`posenc.attention.dense.dense_attention`, one SDPA call with the bias and the
  visibility as an additive mask, for score biases, windows, chunks, documents, padding and sinks
  while that mask fits :data:`~posenc.attention.dense.DENSE_BUDGET` (float32/64 inputs), but for
  training on CPU where the blockwise path's fused tiles are faster;
- ``"blockwise"``: :func:`posenc.attention.blockwise.blockwise_attention`, exact at linear memory for
  everything else (training on CPU, past the budget, softcap, content biases, stick-breaking weights);
- ``"flex"``: :func:`posenc.attention.flex.flex_attention_path`, compiled FlexAttention with block
  masks. ``auto`` takes it on CUDA (with Triton) only for the cases a committed GPU check passed
  (:mod:`posenc.gpu_checks`; none until ``benchmarks/check_flex.py`` has run on a GPU):
  whole-sequence paths but plain causality, biases in an encoding's elementwise form
  (``elementwise_score_bias``), heads 16 to 256 wide, no attention dropout (:func:`choose_backend`).
  ``backend="flex"`` takes it anywhere.

Rules and costs: docs/attention.md.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from posenc.attention.blockwise import blockwise_attention
from posenc.attention.dense import dense_attention, dense_fits
from posenc.attention.flash_tiles import flash_tiles_take
from posenc.attention.flex import flex_attention_path
from posenc.attention.mask import visible
from posenc.attention.scores import ContentBias, ElementwiseBias, ScoreBias, ScoreInputs, check_shapes, score_inputs
from posenc.encodings.base import PositionalEncoding
from posenc.gpu_checks import checked

__all__ = [
    "BACKENDS",
    "FLEX_MAX_HEAD_DIM",
    "FLEX_MIN_HEAD_DIM",
    "Backend",
    "ContentBias",
    "ElementwiseBias",
    "ScoreBias",
    "ScoreInputs",
    "attend",
    "choose_backend",
    "flex_case",
    "flex_compiles",
]

Backend = Literal["auto", "sdpa", "dense", "blockwise", "flex"]
BACKENDS: tuple[str, ...] = ("auto", "sdpa", "dense", "blockwise", "flex")


#: the narrowest q/k and v heads FlexAttention's CUDA kernel takes, and the widest sent to it (wider
#: heads, like MLA's absorbed 288-576, keep the other paths: not checked on a GPU here)
FLEX_MIN_HEAD_DIM, FLEX_MAX_HEAD_DIM = 16, 256


def flex_compiles(q: Tensor) -> bool:
    """Whether compiled FlexAttention serves ``q``'s device: CUDA, with Triton installed."""
    if q.device.type != "cuda":
        return False
    from torch.utils._triton import has_triton

    return has_triton()


def flex_case(
    q: Tensor, k: Tensor, inputs: ScoreInputs | None = None, *, value_dim: int | None = None, **fields
) -> str | None:
    """The key under which a GPU check records this FlexAttention call (:mod:`posenc.gpu_checks`):
    the encoding whose bias it compiles (``inputs.elementwise_score_bias``), what shapes the mask,
    grouped heads, a KV-cache step, the head widths and q's dtype, e.g. ``"ALiBi window sinks hs64
    float32"``. None for a bias that is no encoding's method (a caller's own function: no check can
    vouch for it). ``inputs``: a :class:`ScoreInputs`, or its fields as keywords."""
    inputs = score_inputs(inputs, fields)
    bias = "no bias"
    if inputs.elementwise_score_bias is not None:
        owner = getattr(inputs.elementwise_score_bias, "__self__", None)
        if not isinstance(owner, PositionalEncoding):
            return None
        bias = type(owner).__name__
    shaping = dict(window=inputs.mask.window, chunk=inputs.mask.chunk, documents=inputs.q_segments)
    shaping |= dict(padding=inputs.key_padding_mask, softcap=inputs.softcap, sinks=inputs.sinks)
    flags = [name for name, x in shaping.items() if x is not None]
    flags += ["gqa"] * (q.shape[1] != k.shape[1]) + ["cache"] * (q.shape[2] != k.shape[2])
    width = f"hs{q.shape[-1]}" + ("" if value_dim in (None, q.shape[-1]) else f"/{value_dim}")
    return " ".join([bias, *flags, width, str(q.dtype).removeprefix("torch.")])


def choose_backend(
    q: Tensor,
    k: Tensor,
    inputs: ScoreInputs | None = None,
    *,
    dropout_p: float = 0.0,
    value_dim: int | None = None,
    **fields,
) -> Literal["sdpa", "dense", "blockwise", "flex"]:
    """The path :func:`attend` takes with ``backend="auto"`` (rules in docs/attention.md): SDPA when
    nothing but causality shapes a softmax of the scores, or a window or chunk shapes one query's
    (a decoding step); else, on CUDA with Triton, compiled FlexAttention for more than one query
    when the bias (if any) is elementwise (``elementwise_score_bias``), the q/k and v heads
    (``value_dim``, default q's) are ``FLEX_MIN_HEAD_DIM`` to ``FLEX_MAX_HEAD_DIM`` wide, there is no
    attention dropout, and a committed GPU check passed this case (:func:`flex_case`), with its
    gradients when the bias takes one (``learned_bias``; None: it does whenever gradients are on);
    else, when a backward will run on CPU (q or k requires grad, or ``learned_bias``) and the
    fused tiles compute the call (:func:`~posenc.attention.flash_tiles.flash_tiles_take`), blockwise;
    else one SDPA call with a dense mask while the mask fits
    :data:`~posenc.attention.dense.DENSE_BUDGET` (softmax, no softcap); else blockwise (every
    device; FlexAttention has no CPU backward). ``inputs``: a :class:`ScoreInputs`, or its fields
    as keywords."""
    inputs = score_inputs(inputs, fields)
    if inputs.content_bias is not None or inputs.weighting.kind != "softmax":
        return "blockwise"
    local = inputs.mask.local
    if not [x for x in inputs.beyond_causality() if x not in ("window", "chunk")] and (q.shape[2] == 1 or not local):
        return "sdpa"  # causality alone, or one query of a window or chunk: SDPA over the keys it sees
    score_bias, learned_bias = inputs.score_bias, inputs.learned_bias
    learned = score_bias is not None and (torch.is_grad_enabled() if learned_bias is None else learned_bias)
    elementwise = score_bias is None or inputs.elementwise_score_bias is not None
    widths = (q.shape[-1], q.shape[-1] if value_dim is None else value_dim)
    fits = min(widths) >= FLEX_MIN_HEAD_DIM and max(widths) <= FLEX_MAX_HEAD_DIM
    if q.shape[2] > 1 and elementwise and fits and dropout_p == 0.0 and flex_compiles(q):
        case = inputs if score_bias is not None else inputs.replace(elementwise_score_bias=None)
        if checked(flex_case(q, k, case, value_dim=value_dim), backward=learned):
            return "flex"
    # training on CPU: a float mask that takes a gradient sends SDPA to its unfused math kernel,
    # where the blockwise path's fused tiles skip the blocks past the causal bound and save no scores
    backward = torch.is_grad_enabled() and (q.requires_grad or k.requires_grad or bool(learned_bias))
    if backward and flash_tiles_take(q, inputs, dropout_p, value_dim=value_dim):
        return "blockwise"
    return "dense" if inputs.softcap is None and dense_fits(q, k) else "blockwise"


def _sdpa(q: Tensor, k: Tensor, v: Tensor, inputs: ScoreInputs, scale: float | None, dropout_p: float) -> Tensor:
    """SDPA over the keys the queries (the last Tq of Tk) can see, for inputs with nothing beyond
    causality but a window or chunk: ``is_causal`` for a whole sequence; in a KV-cache step the keys
    from ``mask.first_key`` on, with a boolean (Tq, Tk') mask unless one query sees them all."""
    check_shapes(q, k, v, dropout_p)
    Tq, Tk, mask = q.shape[2], k.shape[2], inputs.mask
    gqa = q.shape[1] != k.shape[1]
    if Tq == Tk and not mask.local:
        return F.scaled_dot_product_attention(q, k, v, dropout_p=dropout_p, is_causal=True, scale=scale, enable_gqa=gqa)
    lo = mask.first_key(Tk - Tq)
    allowed = None if Tq == 1 else visible(Tk - Tq, Tk, lo, Tk, mask, device=q.device)
    k, v = k[:, :, lo:], v[:, :, lo:]
    return F.scaled_dot_product_attention(q, k, v, attn_mask=allowed, dropout_p=dropout_p, scale=scale, enable_gqa=gqa)


def attend(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    inputs: ScoreInputs | None = None,
    *,
    scale: float | None = None,
    dropout_p: float = 0.0,
    backend: Backend = "auto",
    **fields,
) -> Tensor:
    """Causal attention q (B, nh, Tq, hs), k (B, n_kv, Tk, hs), v (B, n_kv, Tk, dv) -> (B, nh, Tq, dv)
    by the best path, the scores shaped by ``inputs``: a :class:`ScoreInputs`, or its fields as
    keywords (``attend(q, k, v, window=4, softcap=30.0)``; ``window``/``chunk`` make its mask).

    ``scale`` defaults to 1/sqrt(hs); ``dropout_p``: attention-probability dropout. ``backend``:
    ``"auto"`` (see :func:`choose_backend`) or a path to force; a forced path refuses what it
    cannot compute. ``inputs.learned_bias`` tells ``auto`` whether the bias will take a gradient,
    ``inputs.block_mask`` hands the flex path a prebuilt mask (see :func:`flex_block_mask`).
    """
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    inputs = score_inputs(inputs, fields)
    if backend == "auto":
        backend = choose_backend(q, k, inputs, dropout_p=dropout_p, value_dim=v.shape[-1])
    else:  # asked for by name
        inputs.check_path(backend)
    if backend == "sdpa":
        return _sdpa(q, k, v, inputs, scale, dropout_p)
    if backend == "flex":
        _check_flex(inputs, dropout_p)
        bias = None if inputs.score_bias is None else inputs.elementwise_score_bias()
        return flex_attention_path(q, k, v, inputs.replace(score_bias=bias), scale=scale)
    if backend == "dense":
        return dense_attention(q, k, v, inputs, scale=scale, dropout_p=dropout_p)
    return blockwise_attention(q, k, v, inputs, scale=scale, dropout_p=dropout_p)


def _check_flex(inputs: ScoreInputs, dropout_p: float) -> None:
    if dropout_p > 0.0:
        raise ValueError(f"FlexAttention has no attention dropout; got dropout_p={dropout_p}, use 'blockwise'")
    if inputs.score_bias is not None and inputs.elementwise_score_bias is None:
        raise ValueError(
            "FlexAttention compiles an elementwise score bias (the encoding's elementwise_score_bias); this one "
            "has none (elementwise_bias=False): use 'blockwise' or 'dense'"
        )

"""FlexAttention: the same attention as :func:`~posenc.attention.blockwise.blockwise_attention` through
``torch.nn.attention.flex_attention`` -- the score bias and the softcap as a ``score_mod``, the
visibility rule (:mod:`posenc.attention.mask`) as a ``BlockMask`` -- compiled on CUDA, the unfused
reference implementation on CPU (forward only there: this torch has no CPU backward). The bias is
the encoding's ``elementwise_score_bias()``, computed per score inside the kernel; on CUDA
:func:`~posenc.attention.kernel.choose_backend` sends here the cases a GPU check passed
(docs/attention.md).
"""

from __future__ import annotations

import functools

import torch
from torch import Tensor

from posenc.attention.mask import Mask, as_mask, chunk_starts, sees
from posenc.attention.scores import ElementwiseBias, ScoreInputs, score_inputs


def flex_block_mask(
    Tq: int,
    Tk: int,
    *,
    device: torch.device | str,
    window: int | None = None,
    chunk: int | None = None,
    q_segments: Tensor | None = None,
    k_segments: Tensor | None = None,
    key_padding_mask: Tensor | None = None,
):
    """The FlexAttention ``BlockMask`` of the visibility rule (:mod:`posenc.attention.mask`).

    Masks that depend only on the shape are cached (built once per (Tq, Tk, mask, device), apart
    under inference mode, whose tensors cannot serve training). Masks that depend on segment ids or
    padding depend on data and are built per call: to build one once per forward, build it with
    this function and pass it to every layer's :func:`attend` as ``block_mask``. On CUDA the mask
    is built by a compiled function, at the memory of its blocks rather than of the (Tq, Tk) scores.
    """
    mask = as_mask(window, chunk)
    if q_segments is None and key_padding_mask is None:
        device = str(torch.device(device))
        return _structural_block_mask(Tq, Tk, mask, device, torch.is_inference_mode_enabled())
    k_segments = q_segments if k_segments is None else k_segments
    return _build_block_mask(Tq, Tk, mask, q_segments, k_segments, key_padding_mask, device)


def _build_block_mask(Tq, Tk, mask, q_segments, k_segments, key_padding_mask, device):
    from torch.nn.attention.flex_attention import create_block_mask

    offset = Tk - Tq
    q_starts, k_starts = chunk_starts(mask, k_segments, Tq)

    def mask_mod(b, h, q_idx, kv_idx):  # the rule of posenc.attention.mask at one score
        return sees(
            q_idx + offset,
            kv_idx,
            mask,
            q_start=0 if q_starts is None else q_starts[b, q_idx],
            k_start=0 if k_starts is None else k_starts[b, kv_idx],
            q_doc=None if q_segments is None else q_segments[b, q_idx],
            k_doc=None if k_segments is None else k_segments[b, kv_idx],
            k_real=None if key_padding_mask is None else key_padding_mask[b, kv_idx],
        )

    per_row = q_segments is not None or key_padding_mask is not None
    B = (q_segments if q_segments is not None else key_padding_mask).shape[0] if per_row else None
    # compiled on CUDA: the eager build materialises the whole (B, Tq, Tk) mask to find its blocks
    compile_build = torch.device(device).type == "cuda" and not torch.compiler.is_compiling()
    return create_block_mask(mask_mod, B, None, Tq, Tk, device=device, _compile=compile_build)


@functools.lru_cache(maxsize=64)
def _structural_block_mask(Tq: int, Tk: int, mask: Mask, device: str, inference: bool):
    return _build_block_mask(Tq, Tk, mask, None, None, None, device)


@functools.cache
def _compiled_flex_attention():
    from torch.nn.attention.flex_attention import flex_attention

    # static shapes: one kernel per length and kind of bias; past torch's recompile_limit (8) torch
    # warns and runs FlexAttention unfused (dynamic=None failed to lower once the captured tensors'
    # shapes varied between calls, torch 2.13 CPU)
    return torch.compile(flex_attention, dynamic=False)


def _score_mod(
    score_bias: ElementwiseBias | None,
    q_positions: Tensor | None,
    k_positions: Tensor | None,
    q_features: Tensor | None,
    k_features: Tensor | None,
    softcap: float | None,
):
    """The scores' softcap and an encoding's elementwise bias (``elementwise_score_bias()``) as a
    FlexAttention ``score_mod`` of one (b, h, q, k) score: positions and features are read at the
    score's indices, and the bias is computed for head ``h`` alone (docs/attention.md says why)."""
    q_rows = q_positions is not None and q_positions.dim() == 2
    k_rows = k_positions is not None and k_positions.dim() == 2

    def score_mod(score, b, h, q_idx, kv_idx):
        if softcap is not None:
            score = softcap * torch.tanh(score / softcap)
        if score_bias is None:
            return score
        qp = q_positions[b, q_idx] if q_rows else q_positions[q_idx]
        kp = k_positions[b, kv_idx] if k_rows else k_positions[kv_idx]
        qf = None if q_features is None else q_features[b, h, q_idx, 0]
        kf = None if k_features is None else k_features[b, h, kv_idx, 0]
        return score + score_bias(h, qp, kp, qf, kf)  # float32: a half-precision score is not rounded

    return score_mod


def _captured(features: Tensor | None) -> Tensor | None:
    """Features as the kernel may capture them: a tensor of its own. FlexAttention's backward
    indexes each captured tensor once (queries' and keys' features are one tensor without a
    cache), and a captured view that needs a gradient loses it (torch 2.13; tests/test_flex.py)."""
    if features is None or not features.requires_grad:
        return features
    return features.clone()


def _rows(positions: Tensor, B: int) -> Tensor:
    return positions.expand(B, -1) if positions.dim() == 2 and positions.shape[0] != B else positions


def flex_attention_path(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    inputs: ScoreInputs | None = None,
    *,
    scale: float | None = None,
    compiled: bool | None = None,
    **fields,
) -> Tensor:
    """The same attention as :func:`blockwise_attention` through FlexAttention (fused on CUDA).

    ``inputs`` (:class:`~posenc.attention.scores.ScoreInputs`, or its fields as keywords): its
    ``score_bias`` here is an encoding's ``elementwise_score_bias()`` (head, q position, k position,
    q feature, k feature) -> bias, not its tile-wise ``score_bias``. Features (B, nh, T, 1): one per
    token and head (FoX's F_t). ``sinks`` (nh,): a logit per head in the softmax's denominator,
    applied to the output with the rows' log-sum-exp. ``block_mask`` from :func:`flex_block_mask`,
    or None to take the cached structural one (or to build one from segments/padding).
    ``compiled``: None compiles on CUDA only; ``False`` runs FlexAttention's unfused reference
    implementation (it materialises the scores).
    """
    from torch.nn.attention.flex_attention import AuxRequest, flex_attention

    inputs = score_inputs(inputs, fields).checked(q, k, v, 0.0)
    inputs.check_path("flex")
    for name, features in (("q_features", inputs.q_features), ("k_features", inputs.k_features)):
        if features is not None and (features.dim() != 4 or features.shape[-1] != 1):
            raise ValueError(
                f"FlexAttention takes one feature per token and head, (B, nh, T, 1); got {name} "
                f"of shape {tuple(features.shape)}"
            )
    Tq, Tk = q.shape[2], k.shape[2]
    block_mask = inputs.block_mask
    if block_mask is None:
        block_mask = flex_block_mask(
            Tq,
            Tk,
            device=q.device,
            window=inputs.mask.window,
            chunk=inputs.mask.chunk,
            q_segments=inputs.q_segments,
            k_segments=inputs.k_segments,
            key_padding_mask=inputs.key_padding_mask,
        )
    score_mod, score_bias, softcap = None, inputs.score_bias, inputs.softcap
    if score_bias is not None or softcap is not None:
        q_positions, k_positions = inputs.q_positions, inputs.k_positions
        if score_bias is not None:  # per-row positions of one row serve every row
            q_positions, k_positions = (_rows(p, q.shape[0]) for p in inputs.positions(Tq, Tk, q.device))
        q_features, k_features = _captured(inputs.q_features), _captured(inputs.k_features)
        score_mod = _score_mod(score_bias, q_positions, k_positions, q_features, k_features, softcap)
    compiled = q.device.type == "cuda" if compiled is None else compiled
    # inside a compiled model the outer compile lowers FlexAttention itself
    fn = _compiled_flex_attention() if compiled and not torch.compiler.is_compiling() else flex_attention
    gqa, sinks = q.shape[1] != k.shape[1], inputs.sinks
    aux = None if sinks is None else AuxRequest(lse=True)
    y = fn(q, k, v, score_mod=score_mod, block_mask=block_mask, scale=scale, enable_gqa=gqa, return_aux=aux)
    if sinks is None:
        return y  # (B, nh, Tq, dv)
    y, aux = y
    # softmax over the keys and one sink logit s: the keys' weights scaled by e^lse / (e^lse + e^s)
    keep = torch.sigmoid(aux.lse - sinks.float().view(1, -1, 1))  # (B, nh, Tq)
    return (y * keep[..., None].to(y.dtype)).to(q.dtype)

"""FlexAttention: the same attention as :func:`~posenc.attention.blockwise.blockwise_attention` through
``torch.nn.attention.flex_attention`` -- the score bias and the softcap as a ``score_mod``, the
visibility rule (:mod:`posenc.attention.mask`) as a ``BlockMask`` -- compiled on CUDA, the unfused
reference implementation on CPU (forward only there: this torch has no CPU backward). The bias is
the encoding's ``elementwise_score_bias()``, computed per score inside the kernel; on CUDA
:func:`~posenc.attention.kernel.choose_backend` sends every path it serves here (docs/attention.md).
"""

from __future__ import annotations

import functools

import torch
from torch import Tensor

from posenc.attention.blockwise import ElementwiseBias, _check_extras, _check_inputs, _default_positions
from posenc.attention.mask import Mask, as_mask, document_starts, index_rule


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
    starts = None if mask.chunk is None or k_segments is None else document_starts(k_segments)

    def mask_mod(b, h, q_idx, kv_idx):
        if starts is None:
            keep = index_rule(q_idx + offset, kv_idx, mask)
        else:  # chunks counted from each document's start
            keep = index_rule(
                q_idx + offset, kv_idx, mask, q_start=starts[b, q_idx + offset], k_start=starts[b, kv_idx]
            )
        if q_segments is not None:
            keep = keep & (q_segments[b, q_idx] == k_segments[b, kv_idx])
        if key_padding_mask is not None:
            keep = keep & key_padding_mask[b, kv_idx]
        return keep

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
    *,
    score_bias: ElementwiseBias | None = None,
    q_positions: Tensor | None = None,
    k_positions: Tensor | None = None,
    q_features: Tensor | None = None,
    k_features: Tensor | None = None,
    window: int | None = None,
    chunk: int | None = None,
    q_segments: Tensor | None = None,
    k_segments: Tensor | None = None,
    key_padding_mask: Tensor | None = None,
    scale: float | None = None,
    softcap: float | None = None,
    sinks: Tensor | None = None,
    block_mask=None,
    compiled: bool | None = None,
) -> Tensor:
    """The same attention as :func:`blockwise_attention` through FlexAttention (fused on CUDA).

    ``score_bias``: an encoding's ``elementwise_score_bias()`` (head, q position, k position,
    q feature, k feature) -> bias, not its tile-wise ``score_bias``. Features (B, nh, T, 1): one per
    token and head (FoX's F_t). ``sinks`` (nh,): a logit per head in the softmax's denominator,
    applied to the output with the rows' log-sum-exp. ``block_mask`` from :func:`flex_block_mask`,
    or None to take the cached structural one (or to build one from segments/padding).
    ``compiled``: None compiles on CUDA only; ``False`` runs FlexAttention's unfused reference
    implementation (it materialises the scores).
    """
    from torch.nn.attention.flex_attention import AuxRequest, flex_attention

    q_segments, k_segments = _check_inputs(q, k, v, q_segments, k_segments, key_padding_mask, 0.0)
    _check_extras(q, softcap, sinks)
    for name, features in (("q_features", q_features), ("k_features", k_features)):
        if features is not None and (features.dim() != 4 or features.shape[-1] != 1):
            raise ValueError(
                f"FlexAttention takes one feature per token and head, (B, nh, T, 1); got {name} "
                f"of shape {tuple(features.shape)}"
            )
    Tq, Tk = q.shape[2], k.shape[2]
    if block_mask is None:
        block_mask = flex_block_mask(
            Tq,
            Tk,
            device=q.device,
            window=window,
            chunk=chunk,
            q_segments=q_segments,
            k_segments=k_segments,
            key_padding_mask=key_padding_mask,
        )
    score_mod = None
    if score_bias is not None or softcap is not None:
        if score_bias is not None:  # per-row positions of one row serve every row
            q_positions = _rows(_default_positions(q_positions, Tk - Tq, Tk, q.device), q.shape[0])
            k_positions = _rows(_default_positions(k_positions, 0, Tk, q.device), q.shape[0])
        q_features, k_features = _captured(q_features), _captured(k_features)
        score_mod = _score_mod(score_bias, q_positions, k_positions, q_features, k_features, softcap)
    compiled = q.device.type == "cuda" if compiled is None else compiled
    # inside a compiled model the outer compile lowers FlexAttention itself
    fn = _compiled_flex_attention() if compiled and not torch.compiler.is_compiling() else flex_attention
    gqa = q.shape[1] != k.shape[1]
    aux = None if sinks is None else AuxRequest(lse=True)
    y = fn(q, k, v, score_mod=score_mod, block_mask=block_mask, scale=scale, enable_gqa=gqa, return_aux=aux)
    if sinks is None:
        return y  # (B, nh, Tq, dv)
    y, aux = y
    # softmax over the keys and one sink logit s: the keys' weights scaled by e^lse / (e^lse + e^s)
    keep = torch.sigmoid(aux.lse - sinks.float().view(1, -1, 1))  # (B, nh, Tq)
    return (y * keep[..., None].to(y.dtype)).to(q.dtype)

"""M-RoPE position ids: the (3, B, T) time / height / width ids of a sequence of text, image and
video tokens, as Hugging Face's ``get_rope_index`` builds them for Qwen2-VL, Qwen2.5-VL and Qwen3-VL
(transformers 5), with packed documents restarting them.

A row's tokens fall into runs of one type (``token_types``: 0 text, 1 image, 2 video). A text run
of n tokens takes ids ``p, ..., p + n - 1`` on every axis and moves p by n. A vision run takes the
next grid (t, h, w) of its type (counted before ``spatial_merge_size``, which divides h and w): its
tokens in (t, h, w) order get time ``p + floor(i_t * interval)``, height ``p + i_h``, width ``p +
i_w``, and p moves by ``max(h, w)`` (after the merge), not by the number of frames -- Hugging Face's
rule. ``interval`` is 1, or for videos in Qwen2.5-VL ``tokens_per_second * second_per_grid_t``
(``video_intervals``, one per video). Qwen3-VL separates frames by timestamp text, so each video
grid of t frames becomes t one-frame grids (``split_video_frames=True``). Grids are consumed in
order across the whole batch. Padding (``attention_mask`` 0) is skipped and gets id 0; with
``document_ids`` the ids restart at 0 where each document starts (packed rows).

Returns the ids and each row's ``delta`` = max id + 1 - tokens, which generation adds to the next
text positions (Hugging Face's ``rope_deltas``).

Golden test: Hugging Face's own ``get_rope_index`` of each of the three models on synthetic
text + image + video rows, padded and not (tests/test_multiaxis.py).
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator, Sequence

import torch
from torch import Tensor

TEXT, IMAGE, VIDEO = 0, 1, 2


def mrope_positions(
    token_types: Tensor,
    image_grids: Tensor | None = None,
    video_grids: Tensor | None = None,
    *,
    spatial_merge_size: int = 1,
    video_intervals: Sequence[float] | None = None,
    split_video_frames: bool = False,
    attention_mask: Tensor | None = None,
    document_ids: Tensor | None = None,
) -> tuple[Tensor, Tensor]:
    """(positions (3, B, T), deltas (B, 1)) for ``token_types`` (B, T) (module docstring)."""
    if token_types.dim() != 2:
        raise ValueError(f"token_types must have shape (B, T), got {tuple(token_types.shape)}")
    if bad := sorted(set(token_types.unique().tolist()) - {TEXT, IMAGE, VIDEO}):
        raise ValueError(f"token_types must be 0 (text), 1 (image) or 2 (video), got {bad}")
    if split_video_frames and video_grids is not None:
        video_grids = torch.repeat_interleave(video_grids, video_grids[:, 0], dim=0)
        video_grids[:, 0] = 1
    grids: dict[int, Iterator[Tensor]] = {
        IMAGE: iter(() if image_grids is None else image_grids),
        VIDEO: iter(() if video_grids is None else video_grids),
    }
    intervals = iter(video_intervals) if video_intervals is not None else itertools.repeat(1.0)
    B, T = token_types.shape
    positions = torch.zeros(3, B, T, dtype=torch.long, device=token_types.device)
    deltas = []
    for b in range(B):
        keep = torch.ones(T, dtype=torch.bool) if attention_mask is None else attention_mask[b].bool().cpu()
        types = token_types[b].cpu()[keep].tolist()
        docs = None if document_ids is None else document_ids[b].cpu()[keep].tolist()
        runs, start = [], 0
        for (doc, kind), group in itertools.groupby(zip(docs or [0] * len(types), types)):
            n = len(list(group))
            runs.append((doc, kind, start, n))
            start += n
        ids, pos, current_doc = [], 0, None
        for doc, kind, begin, n in runs:
            if doc != current_doc:  # a new packed document starts its ids again
                pos, current_doc = 0, doc
            if kind == TEXT:
                ids.append(torch.arange(pos, pos + n).expand(3, -1))
                pos += n
                continue
            grid = next(grids[kind], None)
            what = "image" if kind == IMAGE else "video"
            if grid is None:
                raise ValueError(f"row {b}: an {what} run of {n} tokens at token {begin} has no {what} grid left")
            t, h, w = int(grid[0]), int(grid[1]) // spatial_merge_size, int(grid[2]) // spatial_merge_size
            if t * h * w != n:
                raise ValueError(
                    f"row {b}: the {what} run at token {begin} has {n} tokens, but its grid {tuple(grid.tolist())} "
                    f"with spatial_merge_size={spatial_merge_size} gives {t} x {h} x {w} = {t * h * w}"
                )
            interval = next(intervals) if kind == VIDEO else 1.0
            tt, hh, ww = torch.meshgrid(
                (torch.arange(t) * interval).long(), torch.arange(h), torch.arange(w), indexing="ij"
            )
            ids.append(torch.stack((tt, hh, ww)).reshape(3, -1) + pos)
            pos += max(h, w)
        row = torch.cat(ids, dim=1) if ids else torch.zeros(3, 0, dtype=torch.long)
        positions[:, b, keep.to(positions.device)] = row.to(positions.device)
        deltas.append((row.max() + 1 - row.shape[1]) if row.numel() else torch.tensor(0))
    return positions, torch.stack(deltas).reshape(B, 1).to(token_types.device)

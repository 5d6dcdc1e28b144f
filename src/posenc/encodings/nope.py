"""NoPE: no positional encoding (Kazemnejad et al. 2023, "The Impact of Positional Encoding on
Length Generalization in Transformers", arXiv:2305.19466; Haviv et al. 2022).

Where it acts: nowhere (``where = "none"``). A causal decoder still infers positions from the
causal mask alone, which is the point of the experiment. This class exists so that "no positional
signal" is an explicit, named choice in a layer pattern (``"N"``) rather than a missing argument.

Option: query temperature by position (``temperature_floor``; Llama 4's ``attn_temperature_tuning``
on its NoPE layers, after Nakanishi 2025, "Scalable-Softmax Is Superior for Attention",
arXiv:2501.19399): the query at position p is multiplied by
``log1p(floor((p + 1) / temperature_floor)) * temperature_scale + 1``, so attention over a long
context stays sharp. The keys are untouched; with it NoPE reads positions (one axis).

Golden tests: the attention output equals plain causal attention on the same q, k, v
(tests/test_nope.py); the temperature inside Llama 4's text model (tests/test_hf_llama4.py).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from posenc.encodings.base import EncodingConfig, ModelDims, PositionalEncoding
from posenc.spec import check_int, check_number, spec


class NoPE(PositionalEncoding):
    """No positional signal (every hook the identity), or only a query temperature by position."""

    where = "none"
    position_axes = None

    @spec
    class Config(EncodingConfig):
        """``temperature_floor`` (None: off) and ``temperature_scale``: the query temperature
        ``log1p(floor((p + 1) / temperature_floor)) * temperature_scale + 1`` (module docstring)."""

        temperature_floor: int | None = None
        temperature_scale: float = 0.1

        def __post_init__(self) -> None:
            check_int("NoPE", "temperature_floor", self.temperature_floor, optional=True)
            check_number("NoPE", "temperature_scale", self.temperature_scale, low=0, low_open=False)

    def __init__(self, config: Config, dims: ModelDims | None = None) -> None:
        super().__init__()
        self.config = config
        if config.temperature_floor is not None:
            self.position_axes = 1  # the temperature reads positions

    def temperature(self, positions: Tensor) -> Tensor:
        """float32 query factors for positions (T,) or (B, T)."""
        p = positions.to(torch.float32)
        return torch.log1p(torch.floor((p + 1.0) / self.config.temperature_floor)) * self.config.temperature_scale + 1.0

    def _scaled(self, q: Tensor, positions: Tensor | None) -> Tensor:
        if self.config.temperature_floor is None:
            return q
        if positions is None:
            positions = torch.arange(q.shape[-2], device=q.device)
        factor = self.temperature(positions)  # (T,) or (B, T)
        factor = factor[None, None, :, None] if factor.dim() == 1 else factor[:, None, :, None]
        return (q * factor).to(q.dtype)

    def rotate(self, q: Tensor, k: Tensor, positions: Tensor | None = None) -> tuple[Tensor, Tensor]:
        return self._scaled(q, positions), k

    def rotate_queries(self, q: Tensor, positions: Tensor | None = None, *, seq_len: Any = None) -> Tensor:
        return self._scaled(q, positions)

"""What every Hugging Face importer shares: the result type and the refusal of what posenc cannot
reproduce."""

from __future__ import annotations

from typing import Any

from torch import Tensor

from posenc.config import GPTConfig

#: (the GPTConfig that reproduces the model, its weights under posenc's parameter names)
Converted = tuple[GPTConfig, dict[str, Tensor]]


def refuse(model_type: str, differ: dict[str, Any]) -> None:
    """Refuse config fields that change the logits and that posenc does not reproduce, by name."""
    if differ:
        raise ValueError(f"from_hf: this {model_type} config has fields posenc cannot reproduce: {differ}")


def per_head_qkv(w: Tensor, n_head: int) -> Tensor:
    """A fused qkv weight or bias whose rows are grouped by head (``[q_h, k_h, v_h]`` for each head h:
    GPT-NeoX, BLOOM) regrouped into posenc's ``[q, k, v]``."""
    rows = w.reshape(n_head, 3, -1, *w.shape[1:]).transpose(0, 1)  # (q/k/v, head, head_dim, ...)
    return rows.reshape(w.shape)

"""DeepSeek-V3 with dense layers (``deepseek_v3``): multi-head latent attention with its decoupled
RoPE key; mixture-of-experts layers are refused."""

from __future__ import annotations

from torch import Tensor, nn

from posenc.config import GPTConfig
from posenc.hf.common import Converted, refuse
from posenc.hf.llama import common_llama_fields, llama_weights

MLA_FIELDS = ("kv_lora_rank", "q_lora_rank", "qk_rope_head_dim", "qk_nope_head_dim", "v_head_dim")


def import_deepseek_v3(model: nn.Module) -> Converted:
    c = model.config
    dense = getattr(c, "first_k_dense_replace", 0)
    if (getattr(c, "n_routed_experts", None) or 0) > 0 and dense < c.num_hidden_layers:
        refuse(
            "deepseek_v3",
            {
                "first_k_dense_replace": dense,
                "num_hidden_layers": c.num_hidden_layers,
                "n_routed_experts": c.n_routed_experts,
                "why": "layers past first_k_dense_replace are mixture-of-experts, which posenc does not build",
            },
        )
    fields = common_llama_fields(c, "deepseek_v3") | {name: getattr(c, name) for name in MLA_FIELDS}
    attention_bias = bool(getattr(c, "attention_bias", False))
    fields |= dict(
        attention="mla",
        rope_interleave=bool(getattr(c, "rope_interleave", False)),
        bias=attention_bias,
        mlp_bias=False,
        pe="rope",
    )
    fields.pop("n_kv_head")  # MLA has one latent, not key/value heads
    return GPTConfig(**fields), llama_weights(model.state_dict(), c.num_hidden_layers, attention=_mla_weights)


def _mla_weights(sd: dict[str, Tensor], src: str, dst: str) -> dict[str, Tensor]:
    """MLA keeps Hugging Face's submodule names, except the output projection (c_proj)."""
    out = {}
    for key, value in sd.items():
        if key.startswith(src + "."):
            name = key[len(src) + 1 :]
            out[f"{dst}.{'c_proj' + name[len('o_proj') :] if name.startswith('o_proj') else name}"] = value
    return out

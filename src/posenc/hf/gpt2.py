"""GPT-2 (``model_type="gpt2"``): learned absolute positions, LayerNorm, tanh GELU, the head tied to
the embedding unless ``tie_word_embeddings`` is off; HF's Conv1D matrices are stored (in, out) and
are transposed here. A bare state dict loads too, given ``n_head``."""

from __future__ import annotations

import math
from typing import Any

from torch import Tensor, nn

from posenc.block import MLP, NormConfig
from posenc.config import GPTConfig
from posenc.encodings.absolute import AbsolutePE
from posenc.hf.common import Converted, layer_spec
from posenc.hf.writers import no_token_ids, transformers_module, uniform_layer
from posenc.layer import EmbeddingConfig, HeadConfig


def import_gpt2(model: nn.Module) -> Converted:
    c = model.config
    act = getattr(c, "activation_function", "gelu_new")
    if act not in ("gelu_new", "gelu_pytorch_tanh"):
        raise ValueError(f"from_hf supports GPT-2's tanh GELU, got activation_function={act!r}")
    # options that change the logits but that this architecture does not implement
    defaults = {"scale_attn_weights": True, "scale_attn_by_inverse_layer_idx": False, "layer_norm_epsilon": 1e-5}
    # isclose: a GGUF file stores the epsilon as float32 (9.9999997e-06)
    differ = {k: getattr(c, k) for k, v in defaults.items() if not math.isclose(getattr(c, k, v), v, rel_tol=1e-6)}
    if getattr(c, "n_inner", None) not in (None, 4 * c.n_embd):
        differ["n_inner"] = c.n_inner
    if differ:
        raise ValueError(f"from_hf supports GPT-2's default architecture; this config differs: {differ}")
    return gpt2_from_state_dict(model.state_dict(), c.n_head, tie=bool(getattr(c, "tie_word_embeddings", True)))


def gpt2_from_state_dict(sd: dict[str, Tensor], n_head: int, tie: bool = True) -> Converted:
    """A GPT-2 state dict; ``tie=False``: the head is its own ``lm_head.weight``, not the embedding."""
    head = None if tie else sd["lm_head.weight"]
    sd = {k.removeprefix("transformer."): v for k, v in sd.items()}
    missing = [k for k in ("wte.weight", "wpe.weight", "ln_f.weight") if k not in sd]
    if missing:
        raise ValueError(f"not a GPT-2 state dict: missing {missing}")
    vocab_size, n_embd = sd["wte.weight"].shape
    n_layer = 1 + max(int(k.split(".")[1]) for k in sd if k.startswith("h."))
    norm = NormConfig(kind="layernorm")
    config = GPTConfig(
        block_size=sd["wpe.weight"].shape[0],
        vocab_size=vocab_size,
        n_layer=n_layer,
        n_head=n_head,
        n_embd=n_embd,
        embedding=EmbeddingConfig(input_pe=AbsolutePE.Config()),
        head=HeadConfig(norm=norm, tie_embeddings=tie),
        layers=(layer_spec(norm, MLP.Config(kind="gelu")),),
    )
    conv1d = ("attn.c_attn.weight", "attn.c_proj.weight", "mlp.c_fc.weight", "mlp.c_proj.weight")
    per_layer = (
        "ln_1.weight",
        "ln_1.bias",
        "ln_2.weight",
        "ln_2.bias",
        "attn.c_attn.bias",
        "attn.c_proj.bias",
        "mlp.c_fc.bias",
        "mlp.c_proj.bias",
        *conv1d,
    )
    ours = {k: sd[k] for k in ("wte.weight", "wpe.weight", "ln_f.weight", "ln_f.bias")}
    for i in range(n_layer):
        for name in per_layer:
            w = sd[f"h.{i}.{name}"]
            ours[f"blocks.{i}.{name}"] = w.t() if name in conv1d else w  # HF Conv1D stores (in, out)
    ours["lm_head.weight"] = ours["wte.weight"] if head is None else head
    return config, ours


def gpt2_config(config: GPTConfig) -> Any:
    """The GPT2Config that expresses ``config`` (learned absolute positions, the GPT-2 block)."""
    layer = uniform_layer(config, "gpt2")
    return transformers_module().GPT2Config(
        vocab_size=config.vocab_size,
        n_positions=config.block_size,
        n_embd=config.n_embd,
        n_layer=config.n_layer,
        n_head=config.n_head,
        n_inner=layer.block.mlp.width(config.n_embd),
        layer_norm_epsilon=layer.block.norm.eps,
        activation_function="gelu_new",
        tie_word_embeddings=config.head.tie_embeddings,
        **no_token_ids(),
    )

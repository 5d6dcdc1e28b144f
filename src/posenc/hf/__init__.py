"""Hugging Face causal LMs as posenc GPTs: :func:`convert` reads a model's config, builds the matching
``GPTConfig`` and renames its weights; ``GPT.from_hf(model)`` builds and loads that, reproducing
the logits.

Importers are keyed by the config's own ``model_type`` (data, not class names), one file per
family: ``gpt2``; ``llama``, ``qwen2``, ``mistral`` (:mod:`posenc.hf.llama`); ``deepseek_v3``
(dense layers with multi-head latent attention); ``smollm3`` (NoPE layers among RoPE ones);
``qwen3`` (per-head QK-norm, its own head size); ``gpt_neox`` (partial rotary, parallel residual,
fused per-head qkv); ``gptj``, ``phi`` (parallel blocks with one norm, partial rotary, a head bias); ``bloom``, ``mpt``
(ALiBi; BLOOM's embedding LayerNorm, MPT's bias-free blocks); ``phi3`` (LongRoPE, fused projections); ``cohere2`` (sliding RoPE layers, global NoPE
layers, parallel blocks, a logit scale); ``olmo2``, ``olmo3`` (norms after each sublayer, QK-norm
over the whole projection); ``exaone4`` (sliding RoPE / global NoPE layers, per-head QK-norm,
post-sublayer norms); ``gemma2``, ``gemma3_text`` ((1 + w) norms, scaled embeddings, sandwich norms,
softcapping, RoPE per layer type; ``gemma3``: the text model of Gemma 3 with vision); ``llama4_text`` (dense: iRoPE, chunked attention, QK-norm after
RoPE, NoPE query temperature); ``qwen2_vl``, ``qwen2_5_vl``, ``qwen3_vl`` (their text models, with M-RoPE). A config field this architecture cannot reproduce
is refused with a ``ValueError`` naming it -- never approximated.

Each family is one adapter in :data:`FAMILIES` (:class:`~posenc.hf.family.Family`): its importer
and, where posenc exports to it, the config writer beside it in the family's file; config and
weights' names go both ways through it (``GPT.to_hf``: :mod:`posenc.hf.export`). :data:`IMPORTERS`
and :data:`EXPORTERS` are read-only views of it. Adding a family: one file here with a function
``model -> (GPTConfig, weights)`` (and, to export to it, ``GPTConfig -> transformers config``), one
``Family(...)`` line in ``FAMILIES``, one test file.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from typing import Any

from torch import Tensor, nn

from posenc.config import GPTConfig
from posenc.hf.bloom import bloom_config, import_bloom
from posenc.hf.cohere2 import cohere2_config, import_cohere2
from posenc.hf.common import Converted, refuse
from posenc.hf.deepseek import import_deepseek_v3
from posenc.hf.exaone4 import import_exaone4
from posenc.hf.family import Family, Roles
from posenc.hf.gemma import import_gemma, import_gemma3
from posenc.hf.gpt2 import gpt2_config, gpt2_from_state_dict, import_gpt2
from posenc.hf.gpt_neox import gpt_neox_config, import_gpt_neox
from posenc.hf.llama import import_llama, llama_config
from posenc.hf.llama4 import import_llama4_text
from posenc.hf.mpt import import_mpt, mpt_config
from posenc.hf.olmo import import_olmo
from posenc.hf.parallel import import_gptj, import_phi
from posenc.hf.phi3 import import_phi3
from posenc.hf.qwen3 import import_qwen3, qwen3_config
from posenc.hf.qwen_vl import import_qwen_vl
from posenc.hf.smollm3 import import_smollm3, smollm3_config
from posenc.hf.source import check_causal_lm, load_folder

#: Every family by its config's ``model_type``: its importer and, where posenc exports to it, its
#: config writer. ``to_hf`` tries the exporting families in this order and takes the first that fits.
FAMILIES: dict[str, Family] = {
    "gpt2": Family(import_gpt2, gpt2_config),
    "gpt_neox": Family(import_gpt_neox, gpt_neox_config),
    "llama": Family(import_llama, llama_config),
    "qwen2": Family(import_llama),
    "mistral": Family(import_llama),
    "deepseek_v3": Family(import_deepseek_v3),
    "qwen3": Family(import_qwen3, qwen3_config),
    "smollm3": Family(import_smollm3, smollm3_config),
    "gptj": Family(import_gptj),
    "phi": Family(import_phi),
    "phi3": Family(import_phi3),
    "cohere2": Family(import_cohere2, cohere2_config),
    "olmo2": Family(import_olmo),
    "olmo3": Family(import_olmo),
    "exaone4": Family(import_exaone4),
    "gemma2": Family(import_gemma),
    "gemma3_text": Family(import_gemma),
    "gemma3": Family(import_gemma3),
    "llama4_text": Family(import_llama4_text),
    "bloom": Family(import_bloom, bloom_config),
    "mpt": Family(import_mpt, mpt_config),
    "qwen2_vl": Family(import_qwen_vl),
    "qwen2_5_vl": Family(import_qwen_vl),
    "qwen3_vl": Family(import_qwen_vl),
}
#: Each family's importer (``model -> (GPTConfig, weights)``), read-only: register in FAMILIES
IMPORTERS: Mapping[str, Callable[[nn.Module], Converted]] = Roles(FAMILIES, "importer")
#: Each exporting family's config writer (``GPTConfig -> transformers config``), read-only, in the order tried
EXPORTERS: Mapping[str, Callable[[GPTConfig], Any]] = Roles(FAMILIES, "config_writer")

#: Families whose MLPs are mixtures of experts, which posenc does not build
MIXTURE_OF_EXPERTS: frozenset[str] = frozenset(
    {"mixtral", "qwen2_moe", "qwen3_moe", "gpt_oss", "olmoe", "granitemoe", "deepseek_v2", "jamba", "dbrx"}
)


def convert(
    model_or_state_dict: nn.Module | Mapping[str, Tensor] | str | os.PathLike, *, n_head: int | None = None
) -> Converted:
    """(GPTConfig, posenc state dict) of a Hugging Face causal LM, of the local folder that holds one
    (:mod:`posenc.hf.source`), or of a bare GPT-2 state dict with ``n_head``; ``GPT.from_hf`` loads it
    into a model."""
    if isinstance(model_or_state_dict, (str, os.PathLike)):
        model_or_state_dict = load_folder(model_or_state_dict)
    if isinstance(model_or_state_dict, nn.Module):
        check_causal_lm(model_or_state_dict)
    elif not isinstance(model_or_state_dict, Mapping):
        raise TypeError(
            "from_hf takes a Hugging Face model, the path of a local folder that holds one, or a GPT-2 state "
            f"dict; got a {type(model_or_state_dict).__name__}"
        )
    if not isinstance(model_or_state_dict, nn.Module):
        if n_head is None:
            raise ValueError("from_hf(state_dict) needs n_head=..., which weights alone do not determine")
        return gpt2_from_state_dict(dict(model_or_state_dict), n_head)
    model_type = getattr(model_or_state_dict.config, "model_type", None)
    if model_type in MIXTURE_OF_EXPERTS:
        raise ValueError(
            f"from_hf: config.model_type={model_type!r} is a mixture-of-experts model; posenc builds dense MLPs only"
        )
    if model_type not in FAMILIES:
        raise ValueError(f"from_hf: config.model_type={model_type!r} is not supported; supported: {sorted(FAMILIES)}")
    return FAMILIES[model_type].from_hf(model_or_state_dict)


__all__ = ["EXPORTERS", "FAMILIES", "IMPORTERS", "Converted", "Family", "convert", "refuse"]

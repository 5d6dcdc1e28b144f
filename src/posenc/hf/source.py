"""What ``GPT.from_hf`` accepts besides a bare GPT-2 state dict: a Hugging Face model that carries its
language-model head (a ``...ForCausalLM``, or a vision-language ``...ForConditionalGeneration``), or
the path of a local folder that holds one (``config.json`` and the weights, as ``save_pretrained``
and ``posenc export`` write them), which transformers loads without the network. A hub name is not
fetched: posenc never downloads. A base model without its head (``LlamaModel``) and a model whose
head serves another task (``GPT2ForSequenceClassification``) are refused, never imported with a head
that is not theirs."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from torch import nn


def load_folder(path: str | os.PathLike) -> nn.Module:
    """The model saved in the local folder ``path``, loaded by transformers (``local_files_only``):
    with ``AutoModelForCausalLM`` where its ``model_type`` has a causal LM class, else with
    ``AutoModelForImageTextToText`` (Qwen2-VL, Qwen2.5-VL, Qwen3-VL)."""
    folder = Path(path)
    if not folder.exists():
        raise ValueError(
            f"from_hf: {str(path)!r} is not a local folder, and posenc does not download models; load it "
            f"with transformers and pass the model, GPT.from_hf(AutoModelForCausalLM.from_pretrained({str(path)!r})), "
            "or pass the path of a folder that holds its config.json and weights"
        )
    if not folder.is_dir() or not (folder / "config.json").is_file():
        raise ValueError(
            f"from_hf: {folder} is not a folder with a config.json; pass the folder that holds a model's "
            "config.json and weights (as save_pretrained writes them)"
        )
    transformers = _transformers()
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    config = transformers.AutoConfig.from_pretrained(folder, local_files_only=True)
    causal = config.model_type in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES
    auto = transformers.AutoModelForCausalLM if causal else transformers.AutoModelForImageTextToText
    return auto.from_pretrained(folder, local_files_only=True).eval()


def check_causal_lm(model: nn.Module) -> None:
    """Refuse a transformers model that cannot generate text: a base model without its language-model
    head, or a model with the head of another task."""
    can_generate = getattr(model, "can_generate", None)
    if not callable(can_generate) or can_generate():
        return
    name, base = type(model).__name__, getattr(model, "base_model", None)
    if base is model:  # transformers' base_model is the model itself when no head wraps it
        raise ValueError(
            f"from_hf: {name} is a base model without a language-model head; pass the model with its "
            "head (AutoModelForCausalLM.from_pretrained, or the family's ...ForCausalLM class)"
        )
    heads = [child for child, module in model.named_children() if module is not base]
    raise ValueError(
        f"from_hf: {name} is not a causal language model: its head {heads} serves another task, and "
        "importing it would drop that head; pass the family's ...ForCausalLM"
    )


def _transformers() -> Any:
    try:
        import transformers
    except ImportError as e:
        raise ImportError("from_hf(path) needs transformers: pip install 'posenc[hf]'") from e
    return transformers


__all__ = ["check_causal_lm", "load_folder"]

"""Starting a run from a pretrained model: ``--init-from`` a GGUF file or a Hugging Face model folder.

The run's architecture is the source's (its config, as :meth:`posenc.GPT.from_gguf` /
:meth:`posenc.GPT.from_hf` import it) with two changes a fine-tune asks for: ``block_size`` (a longer
context) and ``rope_scaling`` (a RoPE frequency schedule on every RoPE layer); its tokenizer is the
source's own unless one is given (:class:`posenc.data.tokenizers.PretrainedTokenizer`).
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from pathlib import Path
from typing import Any

#: Model fields a run from a pretrained source may change; "pe": "rope" is the command line's default.
CHANGEABLE = ("block_size", "rope_scaling")


def is_pretrained(path: str | None) -> bool:
    """Whether ``path`` is a pretrained model rather than a run folder: a ``.gguf`` file, or a folder
    with a ``config.json`` and no ``run.json``."""
    if path is None:
        return False
    p = Path(path)
    return (p.is_file() and p.suffix == ".gguf") or ((p / "config.json").is_file() and not (p / "run.json").exists())


@functools.lru_cache(maxsize=1)
def load_source(path: str) -> Any:
    """The GPT of a GGUF file or Hugging Face model folder, float32, eval mode (kept for the next call)."""
    from posenc.model import GPT

    # a folder: GPT.from_hf reads it offline (transformers' own loader), as it reads a model
    return GPT.from_gguf(path) if Path(path).is_file() else GPT.from_hf(path).eval()


def source_config(path: str, model: Mapping[str, Any]) -> Any:
    """The source's GPTConfig with the ``model`` fields of :data:`CHANGEABLE` applied; others refused."""
    other = sorted(k for k, v in model.items() if k not in CHANGEABLE and not (k == "pe" and v == "rope"))
    if other:
        raise ValueError(
            f"--init-from {path}: the architecture is the pretrained model's; of the model flags only "
            f"--block-size and --rope-scaling apply, got {other}"
        )
    config = load_source(str(path)).config
    if "block_size" in model:
        config = config.replace(block_size=model["block_size"])
    if model.get("rope_scaling") is not None:
        scaling = {"max_position_embeddings": config.block_size} | dict(model["rope_scaling"])
        config = config.with_encoding("rope", scaling=scaling)
    return config


def save_tokenizer(tokenizer: str | None, out: str | Path) -> bool:
    """Write a run's tokenizer into the Hugging Face folder ``out`` when it is a pretrained model's
    (``gpt2`` and ``bytes`` have no Hugging Face files); whether it wrote one."""
    if tokenizer in (None, "gpt2", "bytes"):
        return False
    from posenc.data.tokenizers import PretrainedTokenizer

    PretrainedTokenizer(tokenizer).hf.save_pretrained(out)
    return True

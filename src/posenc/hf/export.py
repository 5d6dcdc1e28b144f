"""posenc GPTs as Hugging Face models: ``GPT.to_hf()`` and ``posenc export RUN_DIR --hf OUT_DIR``.

Export runs the importers backwards, so the two directions cannot drift apart. Each exporting family
of :data:`posenc.hf.FAMILIES` (:data:`EXPORTERS`, tried in order) writes the Hugging Face config that
should express a posenc ``GPTConfig``, and its adapter (:class:`posenc.hf.family.Family`) renames the
weights through the family's importer in reverse, after checking that the importer, run on that
config, gives back the same architecture.

A model that no family expresses (FIRE, KERPLE, T5's bias, a layer pattern no family has) is
refused with each family tried and why it does not fit, one per line. Which posenc configuration
goes to which family is listed in docs/models.md.

:func:`hf_tokenizer` is the run's tokenizer as a Hugging Face fast tokenizer, built offline: GPT-2's
byte-level BPE from tiktoken's ``r50k_base`` ranks (the vocabulary, and merges derived from the
ranks as transformers' tiktoken conversion derives them), or a byte-level tokenizer whose ids are
the UTF-8 bytes. :func:`save_hf` writes it beside the model, so ``AutoTokenizer.from_pretrained``
round-trips text.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from posenc.hf import EXPORTERS, FAMILIES
from posenc.hf.writers import Unfit, transformers_module
from posenc.io import replace_durably

__all__ = ["EXPORTERS", "Unfit", "hf_tokenizer", "save_hf", "to_hf"]


def to_hf(model: Any) -> Any:
    """The Hugging Face causal LM (float32, eval mode) whose logits are ``model``'s, in the first
    family of :data:`EXPORTERS` that expresses it exactly; refused by name when none does."""
    why: dict[str, str] = {}
    for name in EXPORTERS:
        family = FAMILIES[name]
        try:
            hf_config = family.config_to_hf(model.config)
            weights = family.state_dict_to_hf(model, hf_config)
        except ValueError as e:  # Unfit, or the importer refusing its own family's config
            why[name] = str(e)
            continue
        hf = transformers_module().AutoModelForCausalLM.from_config(hf_config)
        hf.load_state_dict(weights | {k: v for k, v in hf.state_dict().items() if k not in weights}, strict=True)
        return hf.eval()
    tried = "".join(f"\n  {name}: {reason}" for name, reason in why.items())
    raise ValueError(f"to_hf: no Hugging Face family expresses this model ({model.config.describe()}); tried:{tried}")


def save_hf(hf: Any, out_dir: str | os.PathLike, tokenizer: Any = None) -> None:
    """``hf.save_pretrained`` (and ``tokenizer.save_pretrained``: a tokenizer, or a posenc tokenizer
    name for :func:`hf_tokenizer`) into a new or empty folder that appears whole or not at all, with
    the permissions of the process's umask."""
    out = Path(out_dir)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ValueError(f"export: {out} already exists and is not an empty folder; give a new one")
    if isinstance(tokenizer, str):
        tokenizer = hf_tokenizer(tokenizer)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}-"))  # made 0700: private until renamed
    try:
        hf.save_pretrained(tmp)
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp)
        umask = os.umask(0)
        os.umask(umask)
        tmp.chmod(0o777 & ~umask)
        if out.exists():
            out.rmdir()
        replace_durably(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def hf_tokenizer(name: str) -> Any:
    """posenc's tokenizer ``name`` (``"gpt2"`` or ``"bytes"``) as a Hugging Face fast tokenizer that
    gives the same ids."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers

    from posenc.data import get_tokenizer

    ours = get_tokenizer(name)  # refuses an unknown name
    chars = _bytes_to_unicode()
    spell = lambda token: "".join(chars[b] for b in token)  # noqa: E731
    if name == "bytes":  # ids are bytes; EOT is byte 0, an ordinary character here
        vocab, merges, eos = {chars[b]: b for b in range(256)}, [], {}
    else:
        ranks = {ours._enc.decode_single_token_bytes(i): i for i in range(ours.eot)}
        vocab, merges = {spell(t): r for t, r in ranks.items()}, _merges(ranks)
        merges = [(spell(a), spell(b)) for a, b in merges]
        eos = dict.fromkeys(("bos_token", "eos_token", "unk_token"), "<|endoftext|>")
    tok = Tokenizer(models.BPE(vocab, merges, fuse_unk=False))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=name != "bytes")  # GPT-2's split
    tok.decoder = decoders.ByteLevel()
    if eos:
        tok.add_special_tokens([eos["eos_token"]])  # the id after the ranks: GPT-2's 50256
    return transformers_module().PreTrainedTokenizerFast(
        tokenizer_object=tok, clean_up_tokenization_spaces=False, **eos
    )


def _merges(ranks: dict[bytes, int]) -> list[tuple[bytes, bytes]]:
    """BPE merges from tiktoken ranks: each token of two or more bytes is made of the two pieces (in
    the vocabulary) that split it, ordered by the token's rank, then by the pieces' ranks."""
    merges = []
    for token, rank in ranks.items():
        pieces = [(token[:i], token[i:]) for i in range(1, len(token)) if token[:i] in ranks and token[i:] in ranks]
        merges += [(rank, ranks[a], ranks[b], a, b) for a, b in pieces]
    return [(a, b) for *_, a, b in sorted(merges)]


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2's printable stand-in character for each byte (byte-level BPE's alphabet)."""
    keep = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    extra = iter(range(256, 512))
    return {b: chr(b) if b in keep else chr(next(extra)) for b in range(256)}

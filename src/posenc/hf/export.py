"""posenc GPTs as Hugging Face models: ``GPT.to_hf()`` and ``posenc export RUN_DIR --hf OUT_DIR``.

Export runs the importers backwards, so the two directions cannot drift apart. Each family in
:data:`EXPORTERS` writes the Hugging Face config that should express a posenc ``GPTConfig``; the
family's own importer (:data:`posenc.hf.IMPORTERS`), run on that config, must give back the same
architecture -- the sizes and every layer spec, where a bias posenc lacks may be a zero bias there
(GPT-NeoX always has MLP and LayerNorm biases). The weights then go through the importer's renaming
in reverse: every parameter of the Hugging Face model is filled with its element numbers, imported,
and each posenc tensor says which Hugging Face element each of its elements came from.

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
import re
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import torch
from torch import Tensor

from posenc.attention import CausalSelfAttention
from posenc.config import GPTConfig, LayerSpec
from posenc.io import replace_durably

#: config keys that say whether a projection or norm has a bias: an absent bias is a zero one
BIAS_KEYS = frozenset({"bias", "qkv_bias", "proj_bias"})


class Unfit(ValueError):
    """This family does not express the model; the message says why."""


def _transformers() -> Any:
    try:
        import transformers
    except ImportError as e:
        raise ImportError("to_hf needs transformers: pip install 'posenc[hf]'") from e
    return transformers


def _uniform(config: GPTConfig, family: str) -> LayerSpec:
    """The one layer spec every layer shares (attention and block; encodings are checked by the import)."""
    first = config.layers[0]
    for i, layer in enumerate(config.layers):
        if layer.attention != first.attention or layer.block != first.block:
            raise Unfit(f"layer {i}'s attention or block differs from layer 0's; {family} has one kind of layer")
    return first


def _mha(layer: LayerSpec, family: str) -> CausalSelfAttention.Config:
    """The layer's attention, which must be multi-head (with grouped or single key/value heads): the
    attention of ``family``."""
    if not isinstance(layer.attention, CausalSelfAttention.Config):
        raise Unfit(f"its attention is {type(layer.attention).__qualname__}; {family} has multi-head attention")
    return layer.attention


def _rope_parameters(
    config: GPTConfig, family: str, layer: LayerSpec | None = None, layout: str = "half"
) -> dict[str, Any]:
    """Hugging Face's ``rope_parameters`` for the RoPE of ``layer`` (default: the first RoPE layer),
    in a family that pairs channels in ``layout``."""
    ropes = [spec for spec in config.layers if spec.encoding == "rope"]
    layer = layer or (ropes[0] if ropes else None)
    if layer is None or layer.encoding != "rope":
        raise Unfit(f"no layer uses RoPE, and {family} rotates q and k")
    pe = layer.pe
    if pe.layout != layout:
        raise Unfit(f"RoPE pairs channels in the {pe.layout!r} layout; {family} uses {layout!r}")
    params = {"rope_type": "default"} | {
        k: v for k, v in dict(pe.scaling or {}).items() if k != "max_position_embeddings"
    }
    params["rope_theta"] = pe.base
    if pe.rotary_dim is not None:  # written even when 1: GPT-NeoX's config defaults to Pythia's 0.25
        params["partial_rotary_factor"] = pe.rotary_dim / layer.attention.encoding_dims(config.dims).head_dim
    params.setdefault("partial_rotary_factor", 1.0)
    return params


def _no_token_ids() -> dict[str, Any]:
    return dict(bos_token_id=None, eos_token_id=None, pad_token_id=None)


def gpt2_config(config: GPTConfig) -> Any:
    layer = _uniform(config, "gpt2")
    return _transformers().GPT2Config(
        vocab_size=config.vocab_size,
        n_positions=config.block_size,
        n_embd=config.n_embd,
        n_layer=config.n_layer,
        n_head=config.n_head,
        n_inner=layer.block.mlp.width(config.n_embd),
        layer_norm_epsilon=layer.block.norm.eps,
        activation_function="gelu_new",
        tie_word_embeddings=config.head.tie_embeddings,
        **_no_token_ids(),
    )


def gpt_neox_config(config: GPTConfig) -> Any:
    layer = _uniform(config, "gpt_neox")
    acts = {"gelu": "gelu_pytorch_tanh", "gelu_exact": "gelu"}
    if layer.block.mlp.kind not in acts:
        raise Unfit(f"its MLP is {layer.block.mlp.kind!r}; gpt_neox has a GELU MLP")
    return _transformers().GPTNeoXConfig(
        vocab_size=config.vocab_size,
        hidden_size=config.n_embd,
        num_hidden_layers=config.n_layer,
        num_attention_heads=config.n_head,
        intermediate_size=layer.block.mlp.width(config.n_embd),
        hidden_act=acts[layer.block.mlp.kind],
        max_position_embeddings=config.block_size,
        layer_norm_eps=layer.block.norm.eps,
        use_parallel_residual=layer.block.parallel,
        attention_bias=_mha(layer, "gpt_neox").qkv_bias,
        tie_word_embeddings=config.head.tie_embeddings,
        rope_parameters=_rope_parameters(config, "gpt_neox"),
        **_no_token_ids(),
    )


def _llama_fields(config: GPTConfig, family: str) -> dict[str, Any]:
    layer = _uniform(config, family)
    attention = _mha(layer, family)
    return dict(
        vocab_size=config.vocab_size,
        hidden_size=config.n_embd,
        intermediate_size=layer.block.mlp.width(config.n_embd),
        num_hidden_layers=config.n_layer,
        num_attention_heads=config.n_head,
        num_key_value_heads=attention.n_kv_head or config.n_head,
        head_dim=attention.head_dim or config.head_dim,
        max_position_embeddings=config.block_size,
        rms_norm_eps=layer.block.norm.eps,
        attention_bias=attention.qkv_bias,
        tie_word_embeddings=config.head.tie_embeddings,
        rope_parameters=_rope_parameters(config, family),
        **_no_token_ids(),
    )


def llama_config(config: GPTConfig) -> Any:
    layer = _uniform(config, "llama")
    return _transformers().LlamaConfig(**_llama_fields(config, "llama"), mlp_bias=layer.block.mlp.bias)


def qwen3_config(config: GPTConfig) -> Any:
    return _transformers().Qwen3Config(**_llama_fields(config, "qwen3"), use_sliding_window=False)


def smollm3_config(config: GPTConfig) -> Any:
    layer = _uniform(config, "smollm3")
    rope = [1 if spec.encoding == "rope" else 0 for spec in config.layers]
    return _transformers().SmolLM3Config(
        **_llama_fields(config, "smollm3"),
        mlp_bias=layer.block.mlp.bias,
        no_rope_layers=rope,
        use_sliding_window=False,
    )


def cohere2_config(config: GPTConfig) -> Any:
    layer = _uniform(config, "cohere2")
    attention = _mha(layer, "cohere2")
    windows = {spec.window for spec in config.layers if spec.encoding == "rope"}
    if len(windows) != 1 or None in windows:
        raise Unfit(
            f"its RoPE layers have windows {sorted(windows, key=str)}; cohere2 has one window on every RoPE layer"
        )
    return _transformers().Cohere2Config(
        vocab_size=config.vocab_size,
        hidden_size=config.n_embd,
        intermediate_size=layer.block.mlp.width(config.n_embd),
        num_hidden_layers=config.n_layer,
        num_attention_heads=config.n_head,
        num_key_value_heads=attention.n_kv_head or config.n_head,
        max_position_embeddings=config.block_size,
        layer_norm_eps=layer.block.norm.eps,
        attention_bias=attention.qkv_bias,
        tie_word_embeddings=config.head.tie_embeddings,
        logit_scale=config.head.logit_scale,
        sliding_window=windows.pop(),
        layer_types=["sliding_attention" if spec.encoding == "rope" else "full_attention" for spec in config.layers],
        rope_parameters=_rope_parameters(config, "cohere2", layout="interleaved"),
        **_no_token_ids(),
    )


def bloom_config(config: GPTConfig) -> Any:
    layer = _uniform(config, "bloom")
    return _transformers().BloomConfig(
        vocab_size=config.vocab_size,
        hidden_size=config.n_embd,
        n_layer=config.n_layer,
        n_head=config.n_head,
        layer_norm_epsilon=layer.block.norm.eps,
        tie_word_embeddings=config.head.tie_embeddings,
        seq_length=config.block_size,
        **_no_token_ids(),
    )


def mpt_config(config: GPTConfig) -> Any:
    layer = _uniform(config, "mpt")
    return _transformers().MptConfig(
        vocab_size=config.vocab_size,
        d_model=config.n_embd,
        n_layers=config.n_layer,
        n_heads=config.n_head,
        max_seq_len=config.block_size,
        layer_norm_epsilon=layer.block.norm.eps,
        tie_word_embeddings=config.head.tie_embeddings,
        **_no_token_ids(),
    )


#: Families tried in order; each writes the config that should express a posenc model.
EXPORTERS: dict[str, Callable[[GPTConfig], Any]] = {
    "gpt2": gpt2_config,
    "gpt_neox": gpt_neox_config,
    "llama": llama_config,
    "qwen3": qwen3_config,
    "smollm3": smollm3_config,
    "cohere2": cohere2_config,
    "bloom": bloom_config,
    "mpt": mpt_config,
}


def to_hf(model: Any) -> Any:
    """The Hugging Face causal LM (float32, eval mode) whose logits are ``model``'s, in the first
    family of :data:`EXPORTERS` that expresses it exactly; refused by name when none does."""
    why: dict[str, str] = {}
    for family, write in EXPORTERS.items():
        try:
            hf_config = write(model.config)
            weights = _weights(model, family, hf_config)
        except ValueError as e:  # Unfit, or the importer refusing its own family's config
            why[family] = str(e)
            continue
        hf = _transformers().AutoModelForCausalLM.from_config(hf_config)
        hf.load_state_dict(weights | {k: v for k, v in hf.state_dict().items() if k not in weights}, strict=True)
        return hf.eval()
    tried = "".join(f"\n  {family}: {reason}" for family, reason in why.items())
    raise ValueError(f"to_hf: no Hugging Face family expresses this model ({model.config.describe()}); tried:{tried}")


def _weights(model: Any, family: str, hf_config: Any) -> dict[str, Tensor]:
    """The Hugging Face state dict of ``model`` in ``family``, through the family's importer in reverse."""
    from posenc.hf import IMPORTERS

    with torch.device("meta"):
        skeleton = _transformers().AutoModelForCausalLM.from_config(hf_config)
    theirs = skeleton.state_dict(keep_vars=True)
    numbers: dict[int, Tensor] = {}  # one block of element numbers per distinct tensor (tied ones share it)
    total = 0
    for t in theirs.values():
        if id(t) not in numbers:
            numbers[id(t)] = torch.arange(total, total + t.numel(), dtype=torch.float64).view(t.shape)
            total += t.numel()
    ids = {name: numbers[id(t)] for name, t in theirs.items()}
    imported_config, imported = IMPORTERS[family](SimpleNamespace(config=hf_config, state_dict=lambda: ids))
    _same_architecture(model.config, imported_config, family)

    ours = model.state_dict()
    params = {name for name, _ in model.named_parameters(remove_duplicate=False)}
    if missing := sorted(params - set(imported)):
        raise Unfit(f"{family} has no place for {missing[:4]}")
    flat = torch.full((total,), float("nan"), dtype=torch.float64)
    for name, where in imported.items():
        if name in ours:
            value = ours[name].detach().to(torch.float64)
        elif name.endswith(".bias"):
            value = torch.zeros(where.shape, dtype=torch.float64)  # a bias posenc does not have
        else:
            raise Unfit(f"{family}'s import makes {name!r}, which this model does not have")
        flat[where.long().flatten()] = value.flatten()
    for name, where in imported.items():  # tensors the family shares must agree here (one norm for two)
        if name in ours and not torch.equal(flat[where.long()], ours[name].detach().to(torch.float64)):
            shared = sorted(k for k, w in imported.items() if k != name and bool(torch.isin(w, where).any()))
            raise Unfit(f"{family} has one tensor for {name!r} and {shared}, which differ in this model")
    out: dict[str, Tensor] = {}
    for name, t in theirs.items():
        value = flat[ids[name].long()]
        if value.isnan().any():
            if isinstance(t, torch.nn.Parameter):
                raise Unfit(f"{family}'s {name!r} is not read by its importer")
            continue  # a buffer the importer derives (RoPE frequencies): the model's own stays
        out[name] = value.to(torch.float32)
    return out


def _same_architecture(ours: GPTConfig, imported: GPTConfig, family: str) -> None:
    a, b = _comparable(ours), _comparable(imported)
    if a != b:
        diffs = list(
            dict.fromkeys((re.sub(r"layers\[\d+\]", "layers[i]", p), repr(x), repr(y)) for p, x, y in _diff(a, b))
        )
        shown = "; ".join(f"{path} is {x} here, {y} in {family}" for path, x, y in diffs[:3])
        more = f" (and {len(diffs) - 3} more)" if len(diffs) > 3 else ""
        raise Unfit(shown + more)


def _comparable(config: GPTConfig) -> dict[str, Any]:
    """The config as data without dropout (training only) and bias flags (an absent bias is a zero
    bias), with RoPE's partial rotary written one way (``rotary_dim``)."""

    def explicit(i: int, layer: LayerSpec) -> LayerSpec:  # the MLP width written out
        mlp = layer.block.mlp
        return layer.replace(block=layer.block.replace(mlp=mlp.replace(hidden=mlp.width(config.n_embd))))

    d = config.replace(dropout=0.0).map_layers(explicit).to_dict()
    for layer in d["layers"]:
        attention = layer["attention"]
        for key, default in (("n_kv_head", config.n_head), ("head_dim", config.head_dim)):
            if key in attention and attention[key] is None:
                attention[key] = default
        pe = layer["pe"]
        if pe.get("name") == "rope":
            scaling = dict(pe["scaling"] or {})
            scaling.pop("max_position_embeddings", None)
            factor = scaling.pop("partial_rotary_factor", None)
            head_dim = layer["attention"].get("head_dim") or config.head_dim
            if factor is not None and pe["rotary_dim"] is None:
                pe["rotary_dim"] = int(head_dim * factor)
            if pe["rotary_dim"] == head_dim or factor == 1:
                pe["rotary_dim"] = None
            pe["scaling"] = None if scaling in ({}, {"rope_type": "default"}) else scaling
    return _without_biases(d)


def _without_biases(d: Any) -> Any:
    if isinstance(d, dict):
        return {k: _without_biases(v) for k, v in d.items() if k not in BIAS_KEYS}
    if isinstance(d, (list, tuple)):
        return [_without_biases(v) for v in d]
    return d


def _diff(a: Any, b: Any, path: str = "") -> list[tuple[str, Any, Any]]:
    if isinstance(a, dict) and isinstance(b, dict):
        return [d for k in {**a, **b} for d in _diff(a.get(k), b.get(k), f"{path}.{k}" if path else k)]
    if isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
        return [d for i, (x, y) in enumerate(zip(a, b)) for d in _diff(x, y, f"{path}[{i}]")]
    return [] if a == b else [(path, a, b)]


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
    return _transformers().PreTrainedTokenizerFast(tokenizer_object=tok, clean_up_tokenization_spaces=False, **eos)


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

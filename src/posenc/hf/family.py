"""One adapter per Hugging Face family, for import and export alike: a :class:`Family` holds the
family's importer (a Hugging Face model -> the GPTConfig that reproduces it and its weights under
posenc's names) and, for a family posenc exports to, its config writer (a GPTConfig -> the Hugging
Face config that expresses it). The other two directions are the importer run on numbered stand-ins,
so that no direction can drift from the importer:

- a Hugging Face config -> GPTConfig: the importer run on a weightless (meta) model of that config;
- posenc's weights -> Hugging Face's names: every parameter of the Hugging Face model is filled with
  its element numbers, imported, and each posenc tensor says which Hugging Face element each of its
  elements came from. The importer, run on the config, must give back the model's architecture --
  the sizes and every layer spec, where a bias posenc lacks may be a zero bias there (GPT-NeoX always
  has MLP and LayerNorm biases) -- and where the family has one tensor for two of posenc's (Cohere 2's
  one norm for both branches of a parallel block) they must be equal.

:class:`Roles` shows one part of each family of a registry (every importer, or every config writer)
as a read-only mapping.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any

import torch
from torch import Tensor

from posenc.config import GPTConfig, LayerSpec
from posenc.hf.common import Converted
from posenc.hf.writers import Unfit, transformers_module

#: config keys that say whether a projection or norm has a bias: an absent bias is a zero one
BIAS_KEYS = frozenset({"bias", "qkv_bias", "proj_bias"})


@dataclass(frozen=True)
class Family:
    """A Hugging Face family: ``importer`` (model -> (GPTConfig, posenc state dict)) and, where posenc
    exports to it, ``config_writer`` (GPTConfig -> its transformers config, raising :class:`Unfit`
    for a model it does not express)."""

    importer: Callable[[Any], Converted]
    config_writer: Callable[[GPTConfig], Any] | None = None

    @property
    def exports(self) -> bool:
        return self.config_writer is not None

    def from_hf(self, model: Any) -> Converted:
        """(GPTConfig, posenc state dict) of a Hugging Face model of this family (anything with a
        ``config`` and a ``state_dict()``)."""
        return self.importer(model)

    def config_from_hf(self, hf_config: Any) -> GPTConfig:
        """The GPTConfig that reproduces models of ``hf_config`` (no weights read or made)."""
        _, ids, _ = _numbered(hf_config)
        return self.importer(SimpleNamespace(config=hf_config, state_dict=lambda: ids))[0]

    def config_to_hf(self, config: GPTConfig) -> Any:
        """The Hugging Face config that expresses ``config``; :class:`Unfit` when this family does not."""
        if self.config_writer is None:
            raise Unfit("posenc does not export to this family")
        return self.config_writer(config)

    def state_dict_to_hf(self, model: Any, hf_config: Any) -> dict[str, Tensor]:
        """The Hugging Face state dict (float32) of the posenc ``model`` in a model of ``hf_config``,
        through the importer's renaming in reverse: :meth:`from_hf` of it gives back ``model``'s
        weights. Buffers the importer does not read (RoPE frequencies) are left out; :class:`Unfit`
        when ``hf_config`` is not ``model``'s architecture or a tensor has no place."""
        family = hf_config.model_type
        theirs, ids, total = _numbered(hf_config)
        imported_config, imported = self.importer(SimpleNamespace(config=hf_config, state_dict=lambda: ids))
        same_architecture(model.config, imported_config, family)

        ours = model.state_dict()
        params = {name for name, _ in model.named_parameters(remove_duplicate=False)}
        if missing := sorted(params - set(imported)):
            raise Unfit(f"{family} has no place for {missing[:4]}")
        places = {name: _places(where, total, family, name) for name, where in imported.items()}
        flat = torch.full((total,), float("nan"), dtype=torch.float64)
        for name, where in places.items():
            if name in ours:
                value = ours[name].detach().to(torch.float64)
            elif name.endswith(".bias"):
                value = torch.zeros(where.shape, dtype=torch.float64)  # a bias posenc does not have
            else:
                raise Unfit(f"{family}'s import makes {name!r}, which this model does not have")
            flat[where.flatten()] = value.flatten()
        for name, where in places.items():  # tensors the family shares must agree here (one norm for two)
            if name in ours and not torch.equal(flat[where], ours[name].detach().to(torch.float64)):
                shared = sorted(k for k, w in places.items() if k != name and bool(torch.isin(w, where).any()))
                raise Unfit(f"{family} has one tensor for {name!r} and {shared}, which differ in this model")
        out: dict[str, Tensor] = {}
        for name, t in theirs.items():
            value = flat[_places(ids[name], total, family, name)]
            if value.isnan().any():
                if isinstance(t, torch.nn.Parameter):
                    raise Unfit(f"{family}'s {name!r} is not read by its importer")
                continue  # a buffer the importer derives (RoPE frequencies): the model's own stays
            out[name] = value.to(torch.float32)
        return out


def _numbered(hf_config: Any) -> tuple[dict[str, Tensor], dict[str, Tensor], int]:
    """The state dict of a weightless model of ``hf_config`` (its parameters as such), each of its
    tensors numbered (one block per distinct tensor: tied ones share it; element ``k`` is ``2k + 1``,
    so that a value an importer computes rather than moves, such as Gemma's ``1 + w``, shows), and
    how many elements."""
    with torch.device("meta"):
        skeleton = transformers_module().AutoModelForCausalLM.from_config(hf_config)
    theirs = skeleton.state_dict(keep_vars=True)
    numbers: dict[int, Tensor] = {}
    total = 0
    for t in theirs.values():
        if id(t) not in numbers:
            numbers[id(t)] = (2 * torch.arange(total, total + t.numel(), dtype=torch.float64) + 1).view(t.shape)
            total += t.numel()
    return theirs, {name: numbers[id(t)] for name, t in theirs.items()}, total


def _places(numbers: Tensor, total: int, family: str, name: str) -> Tensor:
    """The elements (of :func:`_numbered`'s ``total``) that ``numbers`` name; :class:`Unfit` when an
    importer made them other than by moving elements (renaming, reshaping, slicing, concatenating)."""
    k = (numbers - 1) / 2
    if not bool(((k == k.round()) & (k >= 0) & (k < total)).all()):
        raise Unfit(f"{family}'s importer computes {name!r} from its weights, which export cannot reverse")
    return k.long()


class Roles(Mapping[str, Any]):
    """One part of each family of ``families`` (``"importer"``, ``"config_writer"``), by the same
    keys and in the same order, leaving out families without it; read-only, and always current."""

    def __init__(self, families: Mapping[str, Family], part: str) -> None:
        self._families, self._part = families, part

    def __getitem__(self, key: str) -> Any:
        value = getattr(self._families[key], self._part)
        if value is None:
            raise KeyError(key)
        return value

    def __iter__(self) -> Iterator[str]:
        return (k for k, family in self._families.items() if getattr(family, self._part) is not None)

    def __len__(self) -> int:
        return sum(1 for _ in self)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({dict(self)!r})"


def same_architecture(ours: GPTConfig, imported: GPTConfig, family: str) -> None:
    """:class:`Unfit`, naming the first differences, unless the two are one architecture (:func:`comparable`)."""
    a, b = comparable(ours), comparable(imported)
    if a != b:
        diffs = list(
            dict.fromkeys((re.sub(r"layers\[\d+\]", "layers[i]", p), repr(x), repr(y)) for p, x, y in _diff(a, b))
        )
        shown = "; ".join(f"{path} is {x} here, {y} in {family}" for path, x, y in diffs[:3])
        more = f" (and {len(diffs) - 3} more)" if len(diffs) > 3 else ""
        raise Unfit(shown + more)


def comparable(config: GPTConfig) -> dict[str, Any]:
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

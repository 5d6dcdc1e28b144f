"""The real-model study: a released RoPE model (SmolLM2-135M, trained at 8192 tokens) past its trained
context, zero-shot schedules that extend it to 2x, and where position lives in it.

Every row is a variant of the same weights built from the model's config (``with_encoding`` /
``map_layers``), evaluated on the same token sequences, from the embedded corpus's longest documents
(:func:`posenc.data.corpora.embedded_documents`) in the model's own tokenizer:

- **Extension** (``SCHEDULES``): sequences of 2x the trained context T, each a document's first
  tokens with three passkeys planted (:mod:`posenc.studies.real_data`); the loss of every document
  token by position (the planted sentences and the token after each left out) and whether each key
  is retrieved by a query ending at 1x, 1.5x and 2x. Every schedule is configured for 2T and read at
  all three lengths. ``dynamic`` rescales its base with the length: a 2T forward rotates every
  position with its 2T frequencies, which is the default schedule with the base that
  :func:`dynamic_base` gives, and that is what runs (the sequence is read in cached chunks).
- **Ablations** (``ablation_rows``): windows of ``ablation_len`` tokens (2048) from the same documents,
  RoPE replaced by NoPE in one layer at a time, and the rotation removed from the lowest 25% / 50%
  (p-RoPE, Barbero et al. 2024) or the highest 25% of the frequencies, each against the unmodified
  model on the same windows. A model with sliding-window ("local") and global layers (Gemma 3) also
  has each band in each kind of layer alone and each kind turned to NoPE.
- **Beside** (``Settings.beside``, Gemma 3 270M by default): a second model's ablations on the same
  documents in its own tokenizer, so that the two designs that ship most are read side by side.

Resumable: each (row, window) is saved in ``<out>/real/<row>-w<i>.json`` as it finishes and
``<out>/real.json`` is written again after each, so a page can be drawn from a partial run; a rerun
continues. Rows run window by window (window 0 of every row of both models first); the second model's
evaluations are saved in ``<out>/real/beside-<file>/``.
"""

from __future__ import annotations

import copy
import datetime
import hashlib
import json
import platform
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from posenc.io import atomic_write
from posenc.jobs import Sweep
from posenc.studies import real_data
from posenc.studies.common import environment, write_study

#: The default model: posenc.pretrained's name for it.
MODEL = "smollm2-135m"

#: Schedules for a 2x context: name -> (context T, head dim, base) -> the RoPE options changed.
SCHEDULES: dict[str, Callable[[int, int, float], dict[str, Any]]] = {
    "none": lambda T, hd, b: {},
    "linear (PI)": lambda T, hd, b: {"scaling": {"rope_type": "linear", "factor": 2.0}},
    "dynamic NTK": lambda T, hd, b: {"base": dynamic_base(b, hd, 2 * T, T)},
    "YaRN": lambda T, hd, b: {"scaling": {"rope_type": "yarn", "factor": 2.0, "original_max_position_embeddings": T}},
    "llama3": lambda T, hd, b: {
        "scaling": {
            "rope_type": "llama3",
            "factor": 2.0,
            "original_max_position_embeddings": T,
            "low_freq_factor": 1.0,
            "high_freq_factor": 4.0,
        }
    },
    "NTK-by-parts": lambda T, hd, b: {
        "scaling": {
            "rope_type": "yarn",
            "factor": 2.0,
            "original_max_position_embeddings": T,
            "attention_factor": 1.0,
        }
    },
}

#: Frequency bands whose rotation is removed: name -> (context T, head dim) -> the RoPE options changed.
#: The lowest are dropped with p-RoPE; the highest by dividing their frequencies by 1e30 (angles
#: under 1e-25 rad at any position here) through LongRoPE's per-frequency factors.
BANDS: dict[str, Callable[[int, int], dict[str, Any]]] = {
    "lowest 25% removed": lambda T, hd: {"p_rope": 0.75},
    "lowest 50% removed": lambda T, hd: {"p_rope": 0.5},
    "highest 25% removed": lambda T, hd: {"scaling": drop_highest(hd // 2, 0.25, T)},
}


@dataclass(frozen=True)
class Settings:
    """The study's scale. ``context``: the trained context T (None: the model's ``block_size``)."""

    model: str | None = None  # a GGUF file or Hugging Face folder; None: posenc.pretrained.fetch(MODEL)
    windows: int = 4  # sequences of 2T for the extension rows
    ablation_windows: int = 8
    ablation_len: int = 2048
    context: int | None = None
    chunk: int = 2048  # tokens per cached forward (bounds the logits held at once)
    bucket: int = 256  # the width of the stored loss-by-position buckets
    seed: int = 0
    evaluate: bool = True  # False: write real.json from the saved evaluations only (the others pending)
    rows: tuple[str, ...] | None = None  # evaluate only these rows (the others' saved evaluations are kept)
    beside: str | None = "gemma3-270m"  # a second model whose ablations run beside the first's (None: none)


QUICK = Settings(windows=1, ablation_windows=1, ablation_len=32, context=128, chunk=256, bucket=32, beside=None)


def dynamic_base(base: float, head_dim: int, length: int, context: int) -> float:
    """The base with which dynamic NTK (factor 1) rotates every position of a ``length``-token forward:
    ``b * (length / context) ** (d / (d - 2))``."""
    return base * (max(length, context) / context) ** (head_dim / (head_dim - 2))


def drop_highest(pairs: int, fraction: float, context: int) -> dict[str, Any]:
    """A LongRoPE schedule that leaves every frequency as it is but the highest ``fraction``, which
    it makes ~0 (the same factors at every length, attention factor 1)."""
    n = int(fraction * pairs)
    factors = [1e30] * n + [1.0] * (pairs - n)
    return {
        "rope_type": "longrope",
        "short_factor": factors,
        "long_factor": factors,
        "original_max_position_embeddings": context,
        "factor": 1.0,
        "attention_factor": 1.0,
    }


def rope_change(options: dict[str, Any], layers: list[int] | None = None) -> Callable[[Any], Any]:
    """config -> the config with the RoPE ``options`` replaced in ``layers`` (None: every RoPE layer;
    no options: unchanged)."""
    if not options:
        return lambda c: c
    if layers is None:
        return lambda c: c.with_encoding("rope", **options)
    return lambda c: c.map_layers(
        lambda j, layer: layer.replace(pe=layer.pe.replace(**options)) if j in layers else layer
    )


def rotary_pairs(config: Any) -> int:
    """Rotated channel pairs per head of the model's RoPE layers (the same in every layer here)."""
    pairs = {
        layer.pe.rotated_channels(layer.attention.encoding_dims(config.dims).head_dim) // 2
        for layer in config.layers
        if layer.encoding == "rope"
    }
    if len(pairs) != 1:
        raise ValueError(f"the RoPE layers rotate different numbers of pairs {sorted(pairs)}; the bands need one")
    return pairs.pop()


def layer_kinds(config: Any) -> dict[str, list[int]]:
    """The RoPE layers by kind: "local" (a sliding window) and "global" (none); {} when all are one kind."""
    rope = [i for i, layer in enumerate(config.layers) if layer.encoding == "rope"]
    kinds = {
        "local": [i for i in rope if config.layers[i].window is not None],
        "global": [i for i in rope if config.layers[i].window is None],
    }
    return kinds if all(kinds.values()) else {}


def ablation_rows(config: Any) -> dict[str, Callable[[Any], Any]]:
    """Row name -> (config -> the config of that row) for the where-position-lives ablations: the
    frequency bands in every RoPE layer, then (a model with local and global layers) in each kind
    alone and each kind turned to NoPE, then each layer turned to NoPE."""
    from posenc.encodings import encoding_config

    T, pairs = config.block_size, rotary_pairs(config)

    def nope_in(layers: list[int]) -> Callable[[Any], Any]:
        return lambda c: c.map_layers(
            lambda j, layer: layer.replace(pe=encoding_config("nope")) if j in layers else layer
        )

    bands = {name: opts(T, 2 * pairs) for name, opts in BANDS.items()}
    rows: dict[str, Callable[[Any], Any]] = {"unmodified": lambda c: c}
    rows |= {name: rope_change(opts) for name, opts in bands.items()}
    for kind, layers in layer_kinds(config).items():
        rows[f"{kind} layers NoPE"] = nope_in(layers)
        rows |= {f"{kind}: {name}": rope_change(opts, layers) for name, opts in bands.items()}
    rope_layers = [i for i, layer in enumerate(config.layers) if layer.encoding == "rope"]
    rows |= {f"layer {i} NoPE": nope_in([i]) for i in rope_layers}
    return rows


# -- evaluation -------------------------------------------------------------------------------------


@torch.no_grad()
def sequence_losses(model: Any, tokens: torch.Tensor, chunk: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(loss, argmax) of every next token of ``tokens`` (N,): entry t predicts token t + 1, (N - 1,) each.
    The sequence is read in cached chunks of ``chunk`` tokens (the same as one forward)."""
    model.eval()
    cache = model.new_cache() if len(tokens) > chunk else None
    losses, preds = [], []
    for start in range(0, len(tokens), chunk):
        x = tokens[start : start + chunk][None]
        logits, _ = model(x, cache=cache)
        y = tokens[start + 1 : start + chunk + 1]
        logits = logits[0, : len(y)].float()
        losses.append(F.cross_entropy(logits, y, reduction="none"))
        preds.append(logits.argmax(-1))
    return torch.cat(losses), torch.cat(preds)


def _buckets(losses: torch.Tensor, keep: torch.Tensor, width: int) -> tuple[list[float], list[int]]:
    """Sums and counts of the kept losses by position bucket (position p = index of the predicted token)."""
    n = -(-(len(losses) + 1) // width)
    pos = torch.arange(1, len(losses) + 1)
    sums = torch.zeros(n, dtype=torch.float64).index_add_(0, pos // width, (losses * keep).double())
    counts = torch.zeros(n, dtype=torch.int64).index_add_(0, pos // width, keep.long())
    return sums.tolist(), counts.tolist()


def score(model: Any, seq: real_data.Sequence, settings: Settings) -> dict[str, Any]:
    """One (row, window): loss sums/counts by bucket, and each key's retrieval (every answer token the argmax)."""
    tokens = torch.tensor(seq.tokens)
    device = next(model.parameters()).device
    losses, preds = (t.cpu() for t in sequence_losses(model, tokens.to(device), settings.chunk))
    keep = torch.ones(len(losses), dtype=torch.bool)
    for lo, hi in seq.planted:  # targets inside a planted piece, and the one right after it
        keep[max(lo - 1, 0) : hi] = False
    sums, counts = _buckets(losses, keep, settings.bucket)
    hits = [bool((preds[lo - 1 : hi - 1] == tokens[lo:hi]).all()) for lo, hi in seq.answers]
    return {"sums": sums, "counts": counts, "hits": hits, "key_positions": list(seq.key_positions)}


# -- the run ----------------------------------------------------------------------------------------


def load_model(path: str | None) -> tuple[Any, Any, dict[str, Any]]:
    """(GPT, tokenizer with ``encode``, {"model": path, "sha256": ...}) of a GGUF file or HF folder."""
    return real_data.load_pretrained(path or MODEL)


def run(sweep: Sweep) -> int:
    """``compare --study real``: evaluate every (row, window) not yet saved, write real.json (and the page)."""
    settings = (
        sweep.settings if isinstance(sweep.settings, Settings) else (QUICK if sweep.name == "quick" else Settings())
    )
    beside = load_model(settings.beside) if settings.beside else None
    return run_model(*load_model(settings.model), settings, sweep, beside=beside)


@dataclass
class Part:
    """One model's share of the study: its rows (name -> section, config change, sequences), where
    its evaluations are saved, what real.json says of it, and the evaluations done."""

    model: Any
    config: Any  # the model's config at 2T (the extension rows read 2T tokens)
    context: int
    rows: dict[str, tuple[str, Callable[[Any], Any], list]]
    folder: Path
    info: dict[str, Any]
    done: dict[str, dict[str, Any]]


def plan(model: Any, tokenizer: Any, source: dict[str, Any], settings: Settings, folder: Path, extension: bool) -> Part:
    """The rows of ``model``: the schedules (``extension``) and the ablations, on its own tokens."""
    T = (settings.context if extension else None) or model.config.block_size
    config = model.config.replace(block_size=2 * T)
    ropes = [layer.pe for layer in config.layers if layer.encoding == "rope"]
    if not ropes:
        raise ValueError(f"the real-model study needs a RoPE model; this one's layers are {config.layer_codes}")
    sequences = real_data.extension_sequences(tokenizer, settings.windows, 2 * T, settings.seed) if extension else []
    windows = real_data.ablation_windows(tokenizer, settings.ablation_windows, settings.ablation_len)
    hd = 2 * rotary_pairs(config)
    rows: dict[str, tuple[str, Callable[[Any], Any], list]] = {}
    if extension:
        rows |= {
            name: ("extension", rope_change(opts(T, hd, ropes[0].base)), sequences) for name, opts in SCHEDULES.items()
        }
    rows |= {
        name: ("ablation", change, windows) for name, change in ablation_rows(config.replace(block_size=T)).items()
    }
    kinds = layer_kinds(config)
    info = {
        "source": source,
        "model": {
            "layer_codes": "".join(config.layer_codes),
            "head_dim": hd,
            "rope_base": ropes[0].base,
            "rope_bases": sorted({pe.base for pe in ropes}),
            "local_layers": kinds.get("local", []),
            "window": max((layer.window or 0 for layer in config.layers), default=0) or None,
        },
        "tokens_sha256": tokens_hash([s.tokens for s in sequences] + [w.tokens for w in windows]),
        "documents": {"extension": [s.document for s in sequences], "ablation": [w.document for w in windows]},
        "rows": {name: {"section": section} for name, (section, _, _) in rows.items()},
    }
    folder.mkdir(parents=True, exist_ok=True)
    return Part(model, config, T, rows, folder, info, {})


def run_model(
    model: Any,
    tokenizer: Any,
    source: dict[str, Any],
    settings: Settings,
    sweep: Sweep,
    beside: tuple[Any, Any, dict[str, Any]] | None = None,
) -> int:
    """The study of ``model`` (a GPT) with ``tokenizer``; ``source`` says where the model came from.
    ``beside`` (model, tokenizer, source): a second model whose ablations run beside the first's."""
    t0 = time.time()
    parts = [plan(model, tokenizer, source, settings, sweep.out / "real", extension=True)]
    if beside is not None:
        folder = sweep.out / "real" / f"beside-{_slug(Path(beside[2]['path']).stem)}"
        parts.append(plan(*beside, settings, folder, extension=False))
    known = [r for part in parts for r in part.rows]
    unknown = sorted(set(settings.rows or ()) - set(known))
    if unknown:
        raise ValueError(f"--rows {unknown}: no such row; the rows are {list(dict.fromkeys(known))}")
    info = {
        "kind": "real",
        "format": 1,
        "command": sweep.command,
        **parts[0].info,
        "settings": asdict(settings) | {"context": parts[0].context},
        "full_scale": asdict(Settings()) | {"command": "posenc compare --study real --out out/real --render PAGE"},
        "python": platform.python_version(),
    }
    for part, name, _, change, w, seq in _units(parts):
        path = part.folder / f"{_slug(name)}-w{w}.json"
        saved = json.loads(path.read_text()) if path.exists() else None
        check = {"tokens_sha256": tokens_hash([seq.tokens]), "context": part.context, "bucket": settings.bucket}
        if saved is not None and saved.get("check") != check:
            saved = None  # another sequence or bucket width: evaluated again
        if saved is None and not (settings.evaluate and (settings.rows is None or name in settings.rows)):
            continue
        if saved is None:
            t = time.time()
            model_i = variant(part.model, change(part.config)).to(sweep.device)
            saved = {
                "row": name,
                "window": w,
                "check": check,
                **score(model_i, seq, settings),
                "seconds": time.time() - t,
            }
            atomic_write(path, json.dumps(saved))
            label = "" if part is parts[0] else f"{part.info['source']['path'].split('/')[-1]}: "
            print(f"[real] {label}{name} window {w}: {_said(saved)} ({saved['seconds']:.0f} s)", flush=True)
            del model_i
        part.done[f"{name}/w{w}"] = saved
        _write(info, parts, sweep, t0, final=False)
    _write(info, parts, sweep, t0, final=True)
    return 0


def _units(parts: list[Part]) -> Iterator[tuple[Part, str, str, Callable, int, Any]]:
    """(part, row, section, change, window, sequence): window 0 of every row of every part, then window 1, ..."""
    most = max(len(seqs) for part in parts for _, _, seqs in part.rows.values())
    for w in range(most):
        for part in parts:
            for name, (section, change, seqs) in part.rows.items():
                if w < len(seqs):
                    yield part, name, section, change, w, seqs[w]


def variant(model: Any, config: Any) -> Any:
    """``model`` as ``config`` says, which differs from its own only in the layers' encodings: a copy
    of it with each layer's encoding built from ``config`` (equal to ``GPT(config)`` with the model's
    state dict, without drawing a fresh initialisation of every weight first)."""
    if config.replace(layers=model.config.layers) != model.config.replace(block_size=config.block_size):
        raise ValueError("variant() changes the layers' encodings only; build other changes with GPT(config)")
    out = copy.deepcopy(model)
    for block, layer in zip(out.blocks, config.layers, strict=True):
        block.attn.pe = layer.pe.build(layer.attention.encoding_dims(config.dims))
    out.config = config
    out.length_dependent = any(block.attn.pe.length_dependent for block in out.blocks)
    return out.eval()


def _said(saved: dict[str, Any]) -> str:
    loss = sum(saved["sums"]) / max(1, sum(saved["counts"]))
    return f"loss {loss:.4f}" + (f", keys {''.join('+' if h else '-' for h in saved['hits'])}" if saved["hits"] else "")


def _slug(name: str) -> str:
    return "".join(c if c.isalnum() else "-" for c in name.lower()).strip("-")


def tokens_hash(sequences: list[list[int]]) -> str:
    h = hashlib.sha256()
    for seq in sequences:
        h.update(np.asarray(seq, dtype="<i4").tobytes())
    return h.hexdigest()


def _units_of(part: Part) -> dict[str, dict[str, Any]]:
    keep = ("row", "window", "sums", "counts", "hits", "key_positions", "seconds")
    return {k: {f: v[f] for f in keep} for k, v in part.done.items()}


def _write(info: dict[str, Any], parts: list[Part], sweep: Sweep, t0: float, final: bool) -> None:
    results = info | {
        "created": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "environment": environment(sweep.device, sweep.jobs, torch.get_num_threads()),
        "wall_time_s": time.time() - t0,
        "units": _units_of(parts[0]),
    }
    if len(parts) > 1:
        other = parts[1]
        results["beside"] = other.info | {"settings": info["settings"] | {"context": other.context}}
        results["beside"]["units"] = _units_of(other)
    if final:
        write_study(results, sweep.out, sweep.render)
    else:
        atomic_write(Path(sweep.out) / "real.json", json.dumps(results))

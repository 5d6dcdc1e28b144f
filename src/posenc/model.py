"""The GPT: token embedding, an optional input encoding, a stack of blocks whose attention each
carries its own positional encoding, and a tied language-model head.

Shapes: B batch, T tokens, C = n_embd, V = vocab_size, nh heads, hs head size.

Cached decoding equals the uncached forward for every encoding. A length-dependent rotation (dynamic
NTK or LongRoPE past the original context, xPos) changes with the total length; re-rotating the
cached keys of a layer is not enough, since the hidden states of every cached token in the layers
above were computed under the old rotation. So the cache keeps the tokens it has seen and their
positions, and when any layer's ``rotation_state`` at the new total length differs from the one
they were computed under, the forward recomputes the whole sequence into the cache (Hugging Face
does the same for Phi-3 when LongRoPE switches factors, its PR 33129). LongRoPE recomputes once,
at the step that crosses the original context; dynamic NTK and xPos at every step past it.
"""

from __future__ import annotations

import inspect
import math
import os
from collections.abc import Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from posenc.attention import KVCache
from posenc.attention.base import append_positions
from posenc.block import MLP, Block, NormConfig
from posenc.config import GPTConfig
from posenc.encodings.base import PositionalEncoding, check_positions
from posenc.packing import check_attention_mask, check_document_ids, positions_in_documents
from posenc.rnope import RNoPEBlock
from posenc.sampling import check_sampling, sample
from posenc.weight_init import WeightInit

__all__ = ["GPT", "MLP", "Block", "NormConfig", "RNoPEBlock", "sample"]


class GPT(nn.Module):
    """A nanoGPT-style decoder whose positional encoding is chosen per layer by ``config``.

    ``logits, loss = model(idx, targets=None, positions=None, cache=None)``: logits (B, T, V) for
    every position (with ``last_only=True`` the last one's, (B, 1, V): what generation reads, without
    the head's cost over a whole prompt); ``loss`` is the mean cross-entropy over targets != -1, or
    ``None``.
    """

    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        if not isinstance(config, GPTConfig):
            raise TypeError(f"GPT expects a GPTConfig, got {type(config).__name__}")
        self.config = config
        # Drawn before any submodule exists: constructors consume the global RNG by amounts that differ
        # between variants (a learned position table draws, RoPE does not), so a later draw would give
        # each variant another seed and break the shared initialisation promised by init_weights.
        init_seed = int(torch.randint(0, 2**31 - 1, ()))
        self.wte = nn.Embedding(config.vocab_size, config.n_embd)
        self.wpe = config.embedding.build(config.dims)
        self.ln_emb = None if config.embedding.norm is None else config.embedding.norm.build(config.n_embd)
        self.drop = nn.Dropout(config.dropout)
        self.blocks = config.build_layers()
        self.ln_f = config.head.norm.build(config.n_embd)
        self.length_dependent = any(block.attn.pe.length_dependent for block in self.blocks)
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=config.head.bias)
        self.eos_token_id: tuple[int, ...] = ()  # where generate stops by default (from_gguf sets it)
        if config.head.tie_embeddings:
            self.wte.weight = self.lm_head.weight
        self.init_weights(init_seed)

    @torch.no_grad()
    def init_weights(self, seed: int | None = None) -> None:
        """GPT-2 initialisation, each module of its own parameters (:mod:`posenc.weight_init`):
        matrices N(0, 0.02), projections into the residual stream N(0, 0.02/sqrt(2 n_layer)), biases
        zero, each matrix from a generator seeded by (seed, parameter name). The layers' encodings keep
        the initialisation their own constructors gave them, as their references do (FIRE's MLP keeps
        nn.Linear's; T5's table its small normal). ``seed`` defaults to one draw from torch's global
        RNG (the constructor draws it first, so the same global seed gives every variant the same
        ``seed``).
        """
        if seed is None:
            seed = int(torch.randint(0, 2**31 - 1, ()))
        init = WeightInit(seed, std=0.02, residual_std=0.02 / math.sqrt(2 * self.config.n_layer))
        init.normal("wte.weight", self.wte.weight)
        if self.wpe is not None:
            self.wpe.init_weights(init.child("wpe"))
        for i, block in enumerate(self.blocks):
            block.init_weights(init.child(f"blocks.{i}"))
        if not self.config.head.tie_embeddings:
            init.normal("lm_head.weight", self.lm_head.weight)
        for module in (self.ln_emb, self.ln_f, self.lm_head):
            if getattr(module, "bias", None) is not None:
                module.bias.zero_()

    def num_params(self, non_embedding: bool = True) -> int:
        """Parameter count; with ``non_embedding`` the position table is excluded (as nanoGPT counts)
        while the token embedding stays (it is tied to the output head)."""
        n = sum(p.numel() for p in self.parameters())
        if non_embedding and self.wpe is not None:
            n -= sum(p.numel() for p in self.wpe.parameters())
        return n

    def _check_inputs(self, idx: Tensor, targets: Tensor | None, positions: Tensor | None) -> None:
        if not isinstance(idx, Tensor):
            raise TypeError(f"idx must be a LongTensor of token ids, got {type(idx).__name__}")
        if idx.dtype not in (torch.int64, torch.int32):
            raise TypeError(f"idx must hold integer token ids, got dtype {idx.dtype}")
        if idx.dim() != 2:
            raise ValueError(f"idx must have shape (B, T), got {tuple(idx.shape)}; add a batch dim with idx[None]")
        if idx.shape[0] == 0 or idx.shape[1] == 0:
            raise ValueError(f"idx must have B > 0 and T > 0, got shape {tuple(idx.shape)}")
        V = self.config.vocab_size
        _check_range(idx, 0, V, f"token ids must be in [0, vocab_size={V})")
        if targets is not None:
            if not isinstance(targets, Tensor) or targets.shape != idx.shape:
                shape = tuple(targets.shape) if isinstance(targets, Tensor) else type(targets).__name__
                raise ValueError(f"targets must have the shape of idx {tuple(idx.shape)}, got {shape}")
            if targets.dtype not in (torch.int64, torch.int32):
                raise TypeError(f"targets must hold integer token ids, got dtype {targets.dtype}")
            _check_range(targets, -1, V, f"targets must be in [0, vocab_size={V}) or -1 (ignored)")
        if positions is not None:
            check_positions(positions, None, axes=True)
            (B, T), dim = idx.shape, positions.dim()
            if positions.shape[-1] != T or (dim > 1 and positions.shape[-2] != B):
                raise ValueError(
                    f"positions must have shape ({T},), {tuple(idx.shape)} or (n_axes, {B}, {T}), "
                    f"got {tuple(positions.shape)}"
                )
            axes = positions.shape[0] if dim == 3 else 1
            encodings = ([self.wpe] if self.wpe is not None else []) + [block.attn.pe for block in self.blocks]
            if wrong := sorted({type(pe).__name__ for pe in encodings if pe.position_axes not in (None, axes)}):
                raise ValueError(
                    f"positions of shape {tuple(positions.shape)} give {axes} position axes, which {wrong} "
                    "do not read (M-RoPE: RotaryEmbedding with an mrope_section of that many axes)"
                )

    def forward(
        self,
        idx: Tensor,
        targets: Tensor | None = None,
        *,
        positions: Tensor | None = None,
        cache: KVCache | None = None,
        document_ids: Tensor | None = None,
        last_only: bool = False,
    ) -> tuple[Tensor, Tensor | None]:
        """``document_ids`` (B, T), non-decreasing per row, packs several documents in a row: a token
        attends only to its own document and its position restarts at 0 there (unless ``positions``
        is given). With a ``cache`` the ids of past tokens are kept in it (see :mod:`posenc.packing`)."""
        if not torch.compiler.is_compiling():
            self._check_inputs(idx, targets, positions)
        B, T = idx.shape
        past = 0 if cache is None else cache.length
        if cache is not None and self.length_dependent:
            state = tuple(block.attn.pe.rotation_state(past + T) for block in self.blocks)
            if past and cache.rotation != state:
                return self._recompute(idx, targets, positions, cache, document_ids, last_only)
        segments = None
        if document_ids is not None or (cache is not None and cache.segments is not None):
            segments, doc_positions = self._segments(idx, document_ids, cache)
            positions = doc_positions if positions is None else positions
        if positions is None and past:
            positions = torch.arange(past, past + T, device=idx.device)
        x = self.wte(idx)  # (B, T, C)
        if self.config.embedding.scale != 1.0:
            x = x * torch.tensor(self.config.embedding.scale, dtype=x.dtype)
        if self.wpe is not None:
            x = x + self.wpe.embed(torch.arange(T, device=idx.device) if positions is None else positions)
        if self.ln_emb is not None:
            x = self.ln_emb(x)
        x = self.drop(x)
        for i, block in enumerate(self.blocks):
            x = block(x, positions, None if cache is None else cache.layers[i], segments)
        if segments is not None and cache is not None:
            cache.segments = segments[1]
        if cache is not None and self.length_dependent:  # what a recompute needs
            seen = positions if positions is not None else torch.arange(T, device=idx.device)
            cache.tokens = idx if cache.tokens is None else torch.cat((cache.tokens, idx), dim=1)
            cache.positions = seen if cache.positions is None else append_positions(cache.positions, seen, B)
            cache.rotation = state
        if last_only:
            if targets is not None:
                raise ValueError("last_only=True gives one position's logits; a loss needs every position's")
            x = x[:, -1:]
        logits = self.lm_head(self.ln_f(x))  # (B, T, V)
        if self.config.head.logit_scale != 1.0:
            logits = logits * self.config.head.logit_scale
        if self.config.head.softcap is not None:
            logits = self.config.head.softcap * torch.tanh(logits / self.config.head.softcap)
        return logits, None if targets is None else _loss(logits, targets)

    def _segments(
        self, idx: Tensor, document_ids: Tensor | None, cache: KVCache | None
    ) -> tuple[tuple[Tensor, Tensor], Tensor]:
        """(query ids, key ids) and the positions within documents of the T new tokens."""
        past = None if cache is None else cache.segments
        if past is None and cache is not None and cache.length:
            raise ValueError(
                f"document_ids: this cache already holds {cache.length} tokens seen without document_ids; "
                "pass document_ids from the first call on (or use a new cache)"
            )
        if document_ids is None:  # new tokens continue the last document of the cache
            document_ids = past[:, -1:].expand(-1, idx.shape[1])
        if torch.compiler.is_compiling():  # the checks need the host; the trainer's ids are valid by construction
            ids = document_ids.long()
            keys = ids if past is None else torch.cat((past, ids), dim=1)
        else:
            ids = check_document_ids(document_ids, tuple(idx.shape))
            keys = (
                ids
                if past is None
                else check_document_ids(torch.cat((past, ids), dim=1), (idx.shape[0], past.shape[1] + idx.shape[1]))
            )
        return (ids, keys), positions_in_documents(keys)[:, -idx.shape[1] :]

    def _recompute(
        self,
        idx: Tensor,
        targets: Tensor | None,
        positions: Tensor | None,
        cache: KVCache,
        document_ids: Tensor | None,
        last_only: bool = False,
    ) -> tuple[Tensor, Tensor | None]:
        """The forward of the cached tokens and ``idx`` together, into an emptied ``cache``; the new
        tokens' logits (module docstring)."""
        B, T = idx.shape
        tokens, seen, ids = cache.tokens, cache.positions, cache.segments
        if positions is None:  # as the cached path would place them
            positions = self._segments(idx, document_ids, cache)[1] if ids is not None else None
            if positions is None:
                positions = torch.arange(cache.length, cache.length + T, device=idx.device)
        if ids is not None:
            new = document_ids if document_ids is not None else ids[:, -1:].expand(-1, T)
            document_ids = torch.cat((ids, new), dim=1)
        cache.layers = self.new_cache().layers  # emptied: the forward below fills it again
        cache.segments = cache.tokens = cache.positions = cache.rotation = None
        full = torch.cat((tokens, idx), dim=1)
        full_positions = append_positions(seen, positions, B)
        logits, _ = self(full, positions=full_positions, cache=cache, document_ids=document_ids, last_only=last_only)
        logits = logits[:, -T:]
        return logits, None if targets is None else _loss(logits, targets)

    def new_cache(self) -> KVCache:
        return KVCache([block.attn.new_cache() for block in self.blocks])

    def configure_optimizers(
        self,
        weight_decay: float,
        learning_rate: float,
        betas: tuple[float, float] = (0.9, 0.95),
        device_type: str = "cpu",
    ) -> torch.optim.AdamW:
        """AdamW with weight decay on >= 2-D weights only (matmuls, embeddings), except where an encoding
        follows its reference (``PositionalEncoding.decays``); fused on CUDA."""
        decays = {}
        for module in self.modules():
            if isinstance(module, PositionalEncoding):
                decays |= {id(p): module.decays(n, p) for n, p in module.named_parameters()}
        params = [p for p in self.parameters() if p.requires_grad]
        decayed = [p for p in params if decays.get(id(p), p.dim() >= 2)]
        groups = [
            {"params": decayed, "weight_decay": weight_decay},
            {"params": [p for p in params if not decays.get(id(p), p.dim() >= 2)], "weight_decay": 0.0},
        ]
        extra = (
            {"fused": True}
            if device_type == "cuda" and "fused" in inspect.signature(torch.optim.AdamW).parameters
            else {}
        )
        return torch.optim.AdamW(groups, lr=learning_rate, betas=betas, **extra)

    @torch.no_grad()
    def generate(
        self,
        idx: Tensor,
        max_new_tokens: int,
        temperature: float = 1.0,
        top_k: int | None = None,
        *,
        top_p: float | None = None,
        eos_token_id: int | Sequence[int] | None = None,
        use_cache: bool = True,
        generator: torch.Generator | None = None,
        attention_mask: Tensor | None = None,
        positions: Tensor | None = None,
    ) -> Tensor:
        """Extend idx (B, T) by up to ``max_new_tokens`` sampled tokens; ``temperature=0`` is greedy,
        else the logits are divided by ``temperature`` and cut to the ``top_k`` largest, then to the
        smallest set of probability >= ``top_p`` (:func:`posenc.sampling.filter_logits`).

        A row that emits one of ``eos_token_id`` (an id or several; default the model's own,
        ``self.eos_token_id``, which ``from_gguf`` reads from the file; ``()`` never stops) is
        finished: it gets the first of those ids at every later step, and generation ends early
        once every row is finished, so the result can be shorter than ``T + max_new_tokens``.

        With ``use_cache`` past keys/values are kept in a :class:`KVCache`; once the context would
        exceed ``block_size`` the cache restarts from the last ``block_size`` tokens, exactly as
        the uncached path crops its context, so both paths see the same tokens.

        ``attention_mask`` (B, T), 1 for real tokens and 0 for left padding, batches prompts of
        different lengths: each row's real tokens start at position 0 and never see the padding, so
        every row generates what it would generate alone.

        ``positions`` gives the prompt's own position ids, (B, T) or (n_axes, B, T) for M-RoPE (see
        :func:`posenc.multiaxis.mrope_positions`): each new token then takes the row's largest id so
        far plus one, on every axis -- Hugging Face's ``rope_deltas`` rule, by which text after an
        image continues from the image's largest id. Padding (``attention_mask`` 0) is not counted.
        """
        if not isinstance(max_new_tokens, int) or max_new_tokens < 0:
            raise ValueError(f"max_new_tokens must be an int >= 0, got {max_new_tokens!r}")
        check_sampling(temperature, top_k, top_p)
        self._check_inputs(idx, None, positions)
        eos = self._eos_ids(eos_token_id).to(idx.device)
        finished = torch.zeros(idx.shape[0], dtype=torch.bool, device=idx.device)
        block = self.config.block_size
        ids = None if attention_mask is None else check_attention_mask(attention_mask, tuple(idx.shape)).to(idx.device)
        if positions is not None:
            positions = positions.to(idx.device).expand(*positions.shape[:-2], *idx.shape)  # (T,) -> (B, T)
            seen = positions
            if attention_mask is not None:  # padding's ids do not count
                pad = ~attention_mask.to(idx.device, torch.bool)
                seen = positions.masked_fill(pad, torch.iinfo(positions.dtype).min)
            next_pos = seen.reshape(-1, *idx.shape).amax(dim=(0, 2)) + 1  # (B,): every axis's largest id + 1
        cache = self.new_cache() if use_cache else None
        start = 0  # first token not yet seen by the cache
        for _ in range(max_new_tokens):
            if cache is not None and cache.length + idx.shape[1] - start > block:  # context full: restart
                cache, start = self.new_cache(), idx.shape[1] - block
            lo = max(start, idx.shape[1] - block) if cache is None else start
            docs = None if ids is None else ids[:, lo:]
            pos = None if positions is None else positions[..., lo:]
            logits, _ = self(idx[:, lo:], cache=cache, document_ids=docs, positions=pos, last_only=True)
            next_id = sample(logits[:, -1, :], temperature, top_k, generator, top_p=top_p)  # (B, 1)
            if len(eos):
                next_id = next_id.masked_fill(finished[:, None], eos[0])
                finished |= torch.isin(next_id[:, 0], eos)
            idx = torch.cat((idx, next_id), dim=1)
            if positions is not None:
                positions = torch.cat((positions, next_pos[:, None].expand(*positions.shape[:-1], 1)), dim=-1)
                next_pos = next_pos + 1
            if ids is not None:
                ids = torch.cat((ids, ids[:, -1:]), dim=1)  # a new token continues the row's document
            if cache is not None:
                start = idx.shape[1] - 1
            if len(eos) and finished.all():
                break
        return idx

    def _eos_ids(self, eos_token_id: int | Sequence[int] | None) -> Tensor:
        """The stop ids generate() uses: ``eos_token_id``, else the model's own; checked against the vocabulary."""
        ids = self.eos_token_id if eos_token_id is None else eos_token_id
        ids = list(ids) if isinstance(ids, Sequence) else [ids]
        V = self.config.vocab_size
        if any(isinstance(i, bool) or not isinstance(i, int) or not 0 <= i < V for i in ids):
            raise ValueError(f"eos_token_id must be ids in [0, vocab_size={V}), got {eos_token_id!r}")
        return torch.tensor(ids, dtype=torch.long)

    @classmethod
    def from_checkpoint(cls, ckpt: Mapping | str | os.PathLike, config: GPTConfig | None = None) -> GPT:
        """The model a training checkpoint holds -- a run folder (its latest checkpoint), a checkpoint
        file, or ``posenc.checkpoint.load_checkpoint``'s dict --, built from its config, or from
        ``config``: a variant with the same parameters (another RoPE schedule, say). A path is
        checked as ``load_checkpoint`` checks it and loaded on the CPU."""
        if isinstance(ckpt, (str, os.PathLike)):
            from posenc.checkpoint import load_checkpoint

            ckpt = load_checkpoint(ckpt, map_location="cpu", required=("model", "config"))
        elif not isinstance(ckpt, Mapping):
            raise TypeError(
                f"from_checkpoint takes a run folder, a checkpoint file or a checkpoint dict, got a {type(ckpt).__name__}"
            )
        model = cls(GPTConfig.from_dict(ckpt["config"]) if config is None else config)
        model.load_state_dict(ckpt["model"])
        return model

    @classmethod
    def from_hf(
        cls, model_or_state_dict: nn.Module | Mapping[str, Tensor] | str | os.PathLike, *, n_head: int | None = None
    ) -> GPT:
        """A GPT with the weights of a Hugging Face causal LM (``GPT2LMHeadModel``, ``LlamaForCausalLM``,
        ... : the families of docs/models.md) that reproduces its logits. Takes the model, or the path
        of a local folder that holds one (config.json and weights; a hub name is not fetched), or a
        bare GPT-2 state dict with ``n_head``. See :mod:`posenc.hf`."""
        from posenc.hf import convert

        config, weights = convert(model_or_state_dict, n_head=n_head)
        model = cls(config)
        model.load_state_dict(weights, strict=True)
        return model

    @classmethod
    def from_gguf(cls, path: str | os.PathLike[str], *, dtype: torch.dtype = torch.float32) -> GPT:
        """The model of a GGUF file (``posenc.pretrained.fetch`` gets one) with its weights
        dequantized to ``dtype``, in eval mode, through transformers' GGUF loader and ``from_hf``
        (``pip install 'posenc[gguf]'``); ``eos_token_id`` is the file's. Architectures posenc
        cannot build are refused by name (:data:`posenc.pretrained.GGUF_ARCHITECTURES`)."""
        from posenc.pretrained import eos_token_ids, gguf_metadata, hf_model_from_gguf

        model = cls.from_hf(hf_model_from_gguf(path, dtype)).to(dtype)
        model.eos_token_id = eos_token_ids(gguf_metadata(path))
        return model.eval()

    def to_hf(self) -> nn.Module:
        """This model as a Hugging Face causal LM with the same logits (float32, eval mode), in the
        first family that expresses it exactly (GPT-2, GPT-NeoX, Llama, Qwen3, SmolLM3); refused,
        with each family's reason, when none does. See :mod:`posenc.hf.export`."""
        from posenc.hf.export import to_hf

        return to_hf(self)


def _loss(logits: Tensor, targets: Tensor) -> Tensor:
    """Mean cross-entropy of logits (B, T, V) over the targets (B, T) that are not -1."""
    return F.cross_entropy(logits.reshape(-1, logits.size(-1)), targets.reshape(-1), ignore_index=-1)


def _check_range(t: Tensor, lo: int, hi: int, message: str) -> None:
    """Refuse values outside [lo, hi). On the CPU a host check with the offending values; on an
    accelerator an on-device assert, so that a training step never waits for a host sync."""
    if t.device.type != "cpu":
        torch._assert_async(((t >= lo) & (t < hi)).all(), message)
        return
    got_lo, got_hi = int(t.min()), int(t.max())
    if got_lo < lo or got_hi >= hi:
        raise ValueError(f"{message}, got min {got_lo}, max {got_hi}")

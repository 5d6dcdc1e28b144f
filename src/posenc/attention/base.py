"""What every attention variant shares: its config protocol, the KV cache of one layer, and the one
call into the attention kernel.

An attention variant (``posenc/attention/<name>.py``, one line in ``ATTENTIONS``) is an
:class:`Attention` subclass with a nested ``Config`` (:class:`AttentionConfig`) and the forward
signature ``forward(x, positions=None, cache=None, segments=None)``:

- ``x`` (B, T, C); ``positions`` (T,) or (B, T), defaulting to ``past + arange(T)``;
- ``cache``: what ``new_cache()`` returned (the variant decides what it keeps per token);
- ``segments``: (query document ids (B, T), key document ids (B, past + T)) of packed documents.

The layer's encoding ``pe``, its :class:`~posenc.attention.mask.Mask` (window, chunk), dropout and
the options of its config (a logit ``softcap``, per-head ``sinks``, the kernel ``backend``) reach
the kernel through :meth:`Attention.attend`, the only place a variant calls it.
Shapes: B batch, T new tokens, S = held + T keys (a cache holds every past key, or those a window
or chunk leaves visible), C channels, nh heads.
"""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from posenc.attention.kernel import BACKENDS, attend
from posenc.attention.mask import Mask
from posenc.attention.scores import ScoreInputs
from posenc.built import BuiltFromConfig
from posenc.encodings.base import EncodingConfig, ModelDims, PositionalEncoding
from posenc.encodings.nope import NoPE
from posenc.spec import Spec, check_bool, check_choice, check_number, spec
from posenc.weight_init import WeightInit


@spec
class AttentionConfig(Spec):
    """Base of every attention variant's ``Config``: options of the layer beyond the model's sizes.

    ``softcap``: Gemma 2's ``cap * tanh(scores / cap)`` on the q.k logits (None = off);
    ``sinks``: one learned logit per head in the softmax's denominator (gpt-oss);
    ``backend``: the kernel (``"auto"``, or force ``"blockwise"``, ``"flex"``, ``"sdpa"``).
    """

    softcap: float | None = None
    sinks: bool = False
    backend: str = "auto"

    #: the class this config builds (set on ``Cls.Config`` when ``Cls`` is defined)
    attention: ClassVar[type[Attention]]

    def __post_init__(self) -> None:
        owner = f"{type(self).__qualname__}"
        check_number(owner, "softcap", self.softcap, low=0, optional=True)
        check_bool(owner, "sinks", self.sinks)
        check_choice(owner, "backend", self.backend, BACKENDS)

    def check(self, dims: ModelDims, encoding: EncodingConfig) -> None:
        """Refuse sizes, or an encoding, this variant cannot build (default: any)."""

    def encoding_dims(self, dims: ModelDims) -> ModelDims:
        """The sizes the layer's encoding acts on (default: the model's head size)."""
        return dims

    def build(self, dims: ModelDims, *, pe: PositionalEncoding, mask: Mask, dropout: float) -> Attention:
        return self.attention(self, dims, pe=pe, mask=mask, dropout=dropout)

    def cache_bytes_per_token(self, dims: ModelDims, dtype: torch.dtype = torch.float16) -> int:
        """Bytes one token adds to this layer's KV cache (positions not counted)."""
        raise NotImplementedError


class LayerKVCache:
    """Keys, values, key positions and encoding features of the tokens one layer can still see.

    A layer with a sliding ``window`` or ``chunk`` (its :class:`Mask`) keeps only the keys a later
    query can see (Hugging Face's sliding cache): the last ``window - 1``, or the tokens of the
    current chunk; :meth:`update` returns this step's keys after them. ``length`` counts every token
    seen, ``stored`` the keys held.
    """

    def __init__(self, mask: Mask | None = None) -> None:
        self.mask = Mask() if mask is None else mask
        self.seen = 0
        self.k: Tensor | None = None  # (B, nkv, S, hs), rotated unless the encoding is length-dependent
        self.v: Tensor | None = None
        self.positions: Tensor | None = None  # (S,) or (B, S)
        self.features: Tensor | None = None  # (B, nh, S, F): the encoding's token_features, if any

    @property
    def length(self) -> int:
        """Number of tokens already processed."""
        return self.seen

    @property
    def stored(self) -> int:
        """Number of keys held."""
        return 0 if self.k is None else self.k.shape[-2]

    def update(self, k: Tensor, v: Tensor, positions: Tensor, documents: bool = False) -> tuple[Tensor, Tensor, Tensor]:
        """Append k, v (B, nkv, T, hs) at ``positions`` (T,) or (B, T); return the held and the new ones."""
        self.seen += k.shape[-2]
        if self.k is not None:
            k, v = torch.cat((self.k, k), dim=-2), torch.cat((self.v, v), dim=-2)
            positions = append_positions(self.positions, positions, k.shape[0])
        cut = k.shape[-2] - kept(self.mask, self.seen, k.shape[-2], documents)
        self.k, self.v, self.positions = k[..., cut:, :], v[..., cut:, :], positions[..., cut:]
        return k, v, positions


def kept(mask: Mask, seen: int, held: int, documents: bool = False) -> int:
    """How many of the ``held`` last keys a layer with ``mask`` that has seen ``seen`` tokens keeps:
    those from the first key a query at index ``seen`` or later can see. A chunked layer keeps whole
    chunks (the kernel counts chunks from the first key it is given), and every key with packed
    documents (their chunks start at each document's first token, which a cut could drop)."""
    if mask.chunk is not None and documents:
        return held
    first = mask.first_key(seen)
    if mask.chunk is not None:
        first = first // mask.chunk * mask.chunk
    return min(held, seen - first)


def append_positions(past: Tensor, new: Tensor, rows: int) -> Tensor:
    """Cached key positions followed by the new ones; (T,) next to (B, T) gives both a batch dim."""
    if past.dim() != new.dim():
        past, new = past.expand(rows, -1), new.expand(rows, -1)
    return torch.cat((past, new), dim=-1)


class KVCache:
    """Per-layer caches of one generation; lives outside the modules (no state in ``forward``).

    ``KVCache(n_layer)`` holds a :class:`LayerKVCache` per layer; ``KVCache(layers)`` takes the
    layers' own caches (``attn.new_cache()``: an attention variant decides what it keeps).
    """

    def __init__(self, layers: int | list) -> None:
        self.layers = [LayerKVCache() for _ in range(layers)] if isinstance(layers, int) else list(layers)
        self.segments: Tensor | None = None  # (B, T_past) document ids, when the model packs documents
        # kept only for models with a length-dependent rotation, which recompute when it changes
        self.tokens: Tensor | None = None  # (B, T_past) token ids
        self.positions: Tensor | None = None  # (T_past,) or (B, T_past) their positions
        self.rotation: tuple | None = None  # every layer's rotation_state when they were computed

    @property
    def length(self) -> int:
        """Number of tokens already processed."""
        return self.layers[0].length if self.layers else 0


class Attention(nn.Module, metaclass=BuiltFromConfig):
    """Base of the attention variants: the encoding, the mask and the kernel call they share.

    A variant's constructor is ``Variant(config, dims, *, pe=None, mask=None, dropout=0.0)``: its
    ``Config``, the model's sizes, and the layer's encoding (None: NoPE), mask and dropout
    (:mod:`posenc.built`); ``Variant.create(n_embd, n_head, ...)`` takes flat keyword arguments.
    """

    Config: ClassVar[type[AttentionConfig]] = AttentionConfig

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "Config" in cls.__dict__:
            cls.Config.attention = cls

    @classmethod
    def create(cls, *args: Any, **kwargs: Any) -> Attention:
        """The layer from flat keyword arguments; a variant that offers it overrides this."""
        raise TypeError(
            f"{cls.__name__} takes (config, dims, pe=, mask=, dropout=); it has no create() taking {args!r}"
        )

    def _setup(
        self, config: AttentionConfig, pe: PositionalEncoding | None, mask: Mask | None, dropout: float, n_head: int
    ) -> None:
        """The parts every variant keeps: its config, encoding (None: NoPE), mask, dropout and sinks."""
        pe = NoPE() if pe is None else pe
        mask = Mask() if mask is None else mask
        if pe.where == "input":
            raise ValueError(
                f"{type(pe).__name__} acts at the model input (where='input'); pass it to the model, not to attention"
            )
        self.config, self.pe, self.mask = config, pe, mask
        self.window, self.chunk = mask.window, mask.chunk
        self.dropout = dropout
        self.resid_dropout = nn.Dropout(dropout)
        # N(0, 0.02), as gpt-oss's initialiser (Hugging Face GptOssPreTrainedModel._init_weights)
        self.sinks = nn.Parameter(torch.randn(n_head) * 0.02) if config.sinks else None

    def init_weights(self, init: WeightInit) -> None:
        """Initialise this variant's own parameters (projections with ``init.linear``, the one into
        the residual stream with ``residual=True``); the encoding's stay as built."""
        raise NotImplementedError(f"{type(self).__name__} must define init_weights(init)")

    def new_cache(self) -> LayerKVCache:
        """An empty cache for this layer: it keeps the keys this layer's window and chunk leave visible."""
        return LayerKVCache(self.mask)

    @staticmethod
    def default_positions(x: Tensor, positions: Tensor | None, past: int) -> tuple[Tensor | None, Tensor]:
        """(positions as given or ``past + arange(T)`` after a cache, the queries' positions). With
        several position axes (M-RoPE's (axes, B, T)) the queries' positions for masks and caches are
        their order, ``past + arange(T)``, as Hugging Face's masks are."""
        T = x.shape[1]
        if positions is None and past:
            positions = torch.arange(past, past + T, device=x.device)
        if positions is None:
            return None, torch.arange(T, device=x.device)
        return positions, torch.arange(past, past + T, device=x.device) if positions.dim() == 3 else positions

    def features(self, x: Tensor, cache: LayerKVCache | None) -> tuple[Tensor | None, Tensor | None]:
        """The encoding's (new tokens', all keys') token features; cached beside the keys."""
        past = None if cache is None else cache.features
        if past is not None and past.shape[-2] == 0:  # a chunked cache between chunks: features start afresh
            past = None
        new = self.pe.token_features(x, past)
        if new is None:
            return None, None
        every = new if past is None else torch.cat((past, new), dim=-2)
        if cache is not None:  # called after the cache's update: keep the features of the keys it keeps
            cache.features = every[:, :, every.shape[-2] - cache.stored :]
        return new, every

    def attend(
        self,
        q: Tensor,
        k: Tensor,
        v: Tensor,
        q_pos: Tensor,
        k_pos: Tensor,
        segments: tuple[Tensor, Tensor] | None,
        features: tuple[Tensor | None, Tensor | None],
        scale: float | None,
    ) -> Tensor:
        """The kernel: q (B, nh, T, hs), k (B, nkv, S, hs), v (B, nkv, S, dv) -> (B, nh, T, dv)."""
        if segments is not None and not self.pe.supports_segments:
            raise ValueError(f"{type(self.pe).__name__} does not support packed documents (document segments)")
        if segments is not None and segments[1].shape[1] > k.shape[-2]:  # a sliding cache held fewer keys
            segments = (segments[0], segments[1][:, -k.shape[-2] :])
        bias = self.pe.where == "scores"
        learned = bias and torch.is_grad_enabled() and any(p.requires_grad for p in self.pe.parameters())
        learned = learned or (features[1] is not None and features[1].requires_grad)
        inputs = ScoreInputs(
            score_bias=self.pe.score_bias if bias else None,
            elementwise_score_bias=self.pe.elementwise_score_bias if bias and self.pe.elementwise_bias else None,
            content_bias=self.pe.content_bias if self.pe.has_content_bias else None,
            q_positions=q_pos if bias else None,
            k_positions=k_pos if bias else None,
            q_features=features[0],
            k_features=features[1],
            mask=self.mask,
            q_segments=None if segments is None else segments[0],
            k_segments=None if segments is None else segments[1],
            softcap=self.config.softcap,
            sinks=self.sinks,
            weighting=self.pe.weighting,
            learned_bias=learned,
        )
        dropout_p = self.dropout if self.training else 0.0
        return attend(q, k, v, inputs, scale=scale, dropout_p=dropout_p, backend=self.config.backend)


def with_head_dim(dims: ModelDims, head_dim: int) -> ModelDims:
    return dataclasses.replace(dims, head_dim=head_dim)

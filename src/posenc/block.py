"""One transformer layer: its norms, its MLP and its attention, each from its config.

Shapes: B batch, T tokens, C = n_embd, H the MLP's hidden width.

- :class:`NormConfig`: LayerNorm (with or without bias) or RMSNorm, and its eps.
- :class:`MLP` (``MLP.Config``): GPT-2's (c_fc -> tanh GELU -> c_proj), the same with the exact
  erf GELU (GPT-NeoX/Pythia), Llama's SwiGLU (c_proj(silu(w_gate x) * w_up x)) or Gemma's GeGLU
  (tanh GELU in place of SiLU).
- :class:`Block` (``Block.Config``: norm + MLP + residual layout): pre-norm, ``x + attn(ln_1(x))``
  then ``x + mlp(ln_2(x))``, or parallel (GPT-NeoX, GPT-J, Phi, Cohere):
  ``x + attn(ln_1(x)) + mlp(ln_2(x))``; with ``post_norm`` each branch's output is normalised
  before it joins the residual (``post_attn_norm``, ``post_mlp_norm``: Gemma 2/3 beside the
  pre-norms, OLMo 2/3 instead of them, ``pre_norm=False``); its attention and encoding come from
  the layer's :class:`~posenc.config.LayerSpec`.

Parameter names (``ln_1``, ``attn``, ``ln_2``, ``mlp.c_fc``, ...) are nanoGPT's: initial weights are
seeded by name (each module's ``init_weights``), and checkpoints load by name.
"""

from __future__ import annotations

import functools
from typing import Literal

import torch.nn.functional as F
from torch import Tensor, nn

from posenc.attention.base import LayerKVCache
from posenc.built import BuiltFromConfig
from posenc.encodings.base import ModelDims, sizes
from posenc.spec import Spec, check_bool, check_choice, check_int, check_number, spec
from posenc.weight_init import WeightInit

NORMS: tuple[str, ...] = ("layernorm", "rmsnorm")
MLPS: tuple[str, ...] = ("gelu", "gelu_exact", "swiglu", "geglu")
#: gated MLPs: c_proj(act(w_gate x) * w_up x), SiLU (Llama) or tanh GELU (Gemma)
GATED: tuple[str, ...] = ("swiglu", "geglu")


@spec
class NormConfig(Spec):
    """``kind``: ``"layernorm"`` (with a bias unless ``bias=False``) or ``"rmsnorm"``; ``eps``."""

    kind: Literal["layernorm", "rmsnorm"] = "layernorm"
    eps: float = 1e-5
    bias: bool = True

    def __post_init__(self) -> None:
        check_choice("NormConfig", "kind", self.kind, NORMS)
        check_number("NormConfig", "eps", self.eps, low=0, high=1)
        check_bool("NormConfig", "bias", self.bias)

    def build(self, width: int) -> nn.Module:
        if self.kind == "rmsnorm":
            return nn.RMSNorm(width, eps=self.eps)
        return nn.LayerNorm(width, eps=self.eps, bias=self.bias)


class MLP(nn.Module, metaclass=BuiltFromConfig):
    """GPT-2's MLP (``kind="gelu"``: c_fc -> tanh GELU -> c_proj; ``"gelu_exact"``: the erf GELU,
    Hugging Face's ``"gelu"``), Llama's (``"swiglu"``: c_proj(silu(w_gate x) * w_up x)) or Gemma's
    (``"geglu"``: the same with the tanh GELU), of hidden
    width ``Config.width(C)``.

    ``MLP(config, dims, *, dropout=0.0)``: its config and the model's sizes (it reads ``dims.n_embd``);
    ``MLP(n_embd, config=None, dropout=0.0)`` is :meth:`create`."""

    @spec
    class Config(Spec):
        """``kind``, the hidden width ``hidden`` (None: 4 C for GELU, 8 C / 3 rounded up to 64 for
        SwiGLU) and biases on its projections."""

        kind: Literal["gelu", "gelu_exact", "swiglu", "geglu"] = "gelu"
        hidden: int | None = None
        bias: bool = True

        def __post_init__(self) -> None:
            check_choice("MLP.Config", "kind", self.kind, MLPS)
            check_int("MLP.Config", "hidden", self.hidden, optional=True)
            check_bool("MLP.Config", "bias", self.bias)

        def width(self, n_embd: int) -> int:
            if self.hidden is not None:
                return self.hidden
            return 4 * n_embd if self.kind not in GATED else 64 * -(-8 * n_embd // (3 * 64))

        def build(self, dims: ModelDims, *, dropout: float = 0.0) -> MLP:
            return MLP(self, dims, dropout=dropout)

    @classmethod
    def create(cls, n_embd: int, config: Config | None = None, dropout: float = 0.0) -> MLP:
        """By hand, from the width as a number (``config`` None: the default MLP)."""
        return cls(cls.Config() if config is None else config, sizes(n_embd=n_embd), dropout=dropout)

    def __init__(self, config: Config, dims: ModelDims, *, dropout: float = 0.0) -> None:
        super().__init__()
        C, H = dims.n_embd, config.width(dims.n_embd)
        self.gated = config.kind in GATED
        self.act = F.silu if config.kind == "swiglu" else functools.partial(F.gelu, approximate="tanh")
        if self.gated:
            self.w_gate = nn.Linear(C, H, bias=config.bias)
            self.w_up = nn.Linear(C, H, bias=config.bias)
        else:
            self.c_fc = nn.Linear(C, H, bias=config.bias)
            # GPT-2's "gelu_new" (tanh) or the exact erf GELU
            self.gelu = nn.GELU(approximate="none" if config.kind == "gelu_exact" else "tanh")
        self.c_proj = nn.Linear(H, C, bias=config.bias)
        self.dropout = nn.Dropout(dropout)

    def init_weights(self, init: WeightInit) -> None:
        for name in ("w_gate", "w_up") if self.gated else ("c_fc",):
            init.linear(name, getattr(self, name))
        init.linear("c_proj", self.c_proj, residual=True)

    def forward(self, x: Tensor) -> Tensor:
        h = self.act(self.w_gate(x)) * self.w_up(x) if self.gated else self.gelu(self.c_fc(x))  # (B, T, H)
        return self.dropout(self.c_proj(h))


class Block(nn.Module, metaclass=BuiltFromConfig):
    """Pre-norm transformer block: ``x + attn(ln_1(x))``, then ``x + mlp(ln_2(x))``; with
    ``Config.parallel``, ``x + attn(ln_1(x)) + mlp(ln_2(x))``.

    ``Block(config, dims, *, attn, dropout=0.0)``: its config, the model's sizes and the layer's
    attention (built from the layer's own config); ``Block(n_embd, config, attn, dropout)`` is
    :meth:`create`."""

    @spec
    class Config(Spec):
        """The block around attention: its norms, its MLP and whether attention and MLP read the
        same input (``parallel``, GPT-NeoX's ``use_parallel_residual``) or one after the other."""

        norm: NormConfig = NormConfig()
        mlp: MLP.Config = MLP.Config()
        parallel: bool = False
        pre_norm: bool = True
        post_norm: bool = False

        def __post_init__(self) -> None:
            for name in ("parallel", "pre_norm", "post_norm"):
                check_bool("Block.Config", name, getattr(self, name))
            if not isinstance(self.norm, NormConfig):
                object.__setattr__(self, "norm", NormConfig.from_dict(self.norm))
            if not isinstance(self.mlp, MLP.Config):
                object.__setattr__(self, "mlp", MLP.Config.from_dict(self.mlp))

        def build(self, dims: ModelDims, *, attn: nn.Module, dropout: float = 0.0) -> Block:
            return Block(self, dims, attn=attn, dropout=dropout)

    @classmethod
    def create(cls, n_embd: int, config: Config, attn: nn.Module, dropout: float = 0.0) -> Block:
        """By hand, from the width as a number."""
        return cls(config, sizes(n_embd=n_embd), attn=attn, dropout=dropout)

    def __init__(self, config: Config, dims: ModelDims, *, attn: nn.Module, dropout: float = 0.0) -> None:
        super().__init__()
        n_embd = dims.n_embd
        pre = (lambda: config.norm.build(n_embd)) if config.pre_norm else nn.Identity
        self.ln_1 = pre()
        self.attn = attn
        self.ln_2 = pre()
        self.mlp = config.mlp.build(dims, dropout=dropout)
        if config.post_norm:
            self.post_attn_norm = config.norm.build(n_embd)
            self.post_mlp_norm = config.norm.build(n_embd)
        self.parallel, self.post_norm = config.parallel, config.post_norm

    def init_weights(self, init: WeightInit) -> None:
        """The attention's and the MLP's own initialisation; the norms' biases zero."""
        self.attn.init_weights(init.child("attn"))
        self.mlp.init_weights(init.child("mlp"))
        for norm in (self.ln_1, self.ln_2, getattr(self, "post_attn_norm", None), getattr(self, "post_mlp_norm", None)):
            if getattr(norm, "bias", None) is not None:
                norm.bias.data.zero_()

    def forward(
        self,
        x: Tensor,
        positions: Tensor | None = None,
        cache: LayerKVCache | None = None,
        segments: tuple[Tensor, Tensor] | None = None,
    ) -> Tensor:
        a = self.attn(self.ln_1(x), positions, cache, segments)
        if self.post_norm:
            a = self.post_attn_norm(a)
        if not self.parallel:
            x = x + a
        m = self.mlp(self.ln_2(x))
        if self.post_norm:
            m = self.post_mlp_norm(m)
        return x + a + m if self.parallel else x + m

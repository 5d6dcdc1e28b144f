"""RNoPE as a part of another model: :class:`RNoPEBlock`, a stack of RoPE and NoPE layers (RNoPE-SWA
with windowed RoPE layers), built from the same layer specs as ``GPTConfig.layer_pattern``."""

from __future__ import annotations

from torch import Tensor, nn

from posenc.attention import CausalSelfAttention, Mask
from posenc.block import MLP, Block, NormConfig
from posenc.built import BuiltFromConfig
from posenc.config import GPTConfig, LayerSpec
from posenc.encodings import NoPE, RotaryEmbedding
from posenc.encodings.base import ModelDims
from posenc.spec import Spec, check_bool, spec

__all__ = ["RNoPEBlock", "rnope_layers"]


def rnope_layers(
    pattern: str, *, sliding_window: int | None, rope_base: float, qk_norm: bool, bias: bool
) -> tuple[LayerSpec, ...]:
    """:class:`RNoPEBlock`'s layers: RoPE (base ``rope_base``) on R/r, NoPE on N/n, a window of
    ``sliding_window`` tokens on the lower-case ones; RMS QK-norm when ``qk_norm``; ``bias`` on
    every projection and LayerNorm."""
    check_bool("RNoPEBlock", "qk_norm", qk_norm)
    windowed = any(c.islower() for c in pattern)
    if windowed != (sliding_window is not None):
        raise ValueError(
            f"RNoPEBlock pattern {pattern!r} has {'' if windowed else 'no '}windowed (lower-case) layers "
            f"but sliding_window={sliding_window!r}"
        )
    norm = NormConfig(bias=bias)
    attention = CausalSelfAttention.Config(qkv_bias=bias, proj_bias=bias, qk_norm="rms" if qk_norm else None)
    layer = LayerSpec(attention=attention, block=Block.Config(norm=norm, mlp=MLP.Config(bias=bias)))
    rope = RotaryEmbedding.Config(base=rope_base)
    return tuple(
        layer.replace(
            pe=rope if c in "Rr" else NoPE.Config(), mask=Mask(window=sliding_window if c.islower() else None)
        )
        for c in pattern
    )


class RNoPEBlock(nn.Module, metaclass=BuiltFromConfig):
    """One repeat of an RNoPE stack: a block per character of ``pattern`` (default "RRRN": three
    RoPE layers then one NoPE layer; lower case "r" = RoPE with a sliding window, RNoPE-SWA).

    For use in your own model; ``GPT`` builds the same blocks from ``GPTConfig.layer_pattern``.
    ``RNoPEBlock(config, dims, *, dropout=0.0)``: its ``Config`` and the model's sizes (``n_embd``,
    ``n_head``, ``block_size``); ``RNoPEBlock(n_embd, n_head, pattern, ...)`` is :meth:`create`.
    """

    @spec
    class Config(Spec):
        """The layers: ``pattern``, the window ``sliding_window`` of its lower-case layers, the RoPE
        layers' ``rope_base``, RMS QK-norm (``qk_norm``) and biases (``bias``) on every layer."""

        pattern: str = "RRRN"
        sliding_window: int | None = None
        rope_base: float = 10000.0
        qk_norm: bool = False
        bias: bool = False

        def __post_init__(self) -> None:
            pattern = self.pattern
            bad = sorted({c for c in pattern if c not in "RrNn"}) if isinstance(pattern, str) else [pattern]
            if bad or not pattern:
                raise ValueError(f"RNoPEBlock pattern must use only R, r, N, n; got {pattern!r} (bad: {bad})")
            self.layers()  # refuses a window that does not fit the pattern

        def layers(self) -> tuple[LayerSpec, ...]:
            return rnope_layers(
                self.pattern,
                sliding_window=self.sliding_window,
                rope_base=self.rope_base,
                qk_norm=self.qk_norm,
                bias=self.bias,
            )

    @classmethod
    def create(
        cls,
        n_embd: int,
        n_head: int,
        pattern: str = "RRRN",
        *,
        sliding_window: int | None = None,
        rope_base: float = 10000.0,
        qk_norm: bool = False,
        dropout: float = 0.0,
        bias: bool = False,
        block_size: int = 1024,
    ) -> RNoPEBlock:
        """By hand, from the sizes as numbers and the config's fields."""
        config = cls.Config(pattern, sliding_window=sliding_window, rope_base=rope_base, qk_norm=qk_norm, bias=bias)
        return cls(config, ModelDims(n_embd=n_embd, n_head=n_head, block_size=block_size), dropout=dropout)

    def __init__(self, config: Config, dims: ModelDims, *, dropout: float = 0.0) -> None:
        super().__init__()
        model = GPTConfig(
            n_layer=len(config.pattern),
            n_head=dims.n_head,
            n_embd=dims.n_embd,
            block_size=dims.block_size,
            dropout=dropout,
            layers=config.layers(),
        )
        self.config, self.pattern = config, config.pattern
        self.blocks = model.build_layers()

    def forward(self, x: Tensor, positions: Tensor | None = None) -> Tensor:
        for block in self.blocks:
            x = block(x, positions)
        return x

"""GPT-2's initialisation, handed to each module so that it initialises its own parameters.

A module with parameters of its own defines ``init_weights(init: WeightInit)`` and says, per
parameter, what it is: ``init.linear("c_fc", self.c_fc)`` draws a matrix N(0, ``std``) and zeroes
its bias; ``residual=True`` marks a projection into the residual stream, drawn N(0,
``residual_std``) (GPT-2's 0.02 / sqrt(2 n_layer)). ``init.child("mlp")`` is the initialiser of a
submodule. Each matrix is drawn from its own generator seeded by (seed, the parameter's name in the
model), so variants that share a parameter (name and shape) start from the same values whatever
else they hold.
"""

from __future__ import annotations

import dataclasses
import zlib

import torch
from torch import nn


@dataclasses.dataclass(frozen=True)
class WeightInit:
    seed: int
    std: float = 0.02
    residual_std: float = 0.02
    prefix: str = ""  # the module's name in the model, with a trailing dot

    def child(self, name: str) -> WeightInit:
        return dataclasses.replace(self, prefix=f"{self.prefix}{name}.")

    @torch.no_grad()
    def normal(self, name: str, p: nn.Parameter, residual: bool = False) -> None:
        gen = torch.Generator().manual_seed(self.seed * 1_000_003 + zlib.crc32(f"{self.prefix}{name}".encode()))
        p.copy_(torch.randn(p.shape, generator=gen) * (self.residual_std if residual else self.std))

    @torch.no_grad()
    def linear(self, name: str, layer: nn.Linear, residual: bool = False) -> None:
        self.normal(f"{name}.weight", layer.weight, residual)
        if layer.bias is not None:
            layer.bias.zero_()

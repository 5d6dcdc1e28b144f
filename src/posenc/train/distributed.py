"""The process group of a run: rank, world size, and the few collectives the loop needs.

``torchrun`` sets ``RANK``/``WORLD_SIZE``/``LOCAL_RANK``; without them a run is one process and
every collective is the identity, so the loop has no ``if ddp`` branches of its own.
"""

from __future__ import annotations

import os
from typing import Any

import torch
import torch.distributed as torch_dist


class Dist:
    """Rank and world of this process; :meth:`init` joins the group when torchrun started it."""

    def __init__(self) -> None:
        self.rank, self.world, self.local_rank, self.enabled, self._owned = 0, 1, 0, False, False

    @classmethod
    def from_env(cls, device: str | None = None) -> Dist:
        d = cls()
        if int(os.environ.get("RANK", -1)) == -1:
            return d
        if not torch_dist.is_initialized():
            backend = "nccl" if torch.cuda.is_available() and device != "cpu" else "gloo"
            torch_dist.init_process_group(backend)
            d._owned = True
        d.enabled, d.rank, d.world = True, torch_dist.get_rank(), torch_dist.get_world_size()
        d.local_rank = int(os.environ.get("LOCAL_RANK", 0))
        return d

    @property
    def master(self) -> bool:
        return self.rank == 0

    def rows(self, batch_size: int) -> slice:
        """This rank's rows of a global micro-batch."""
        return slice(self.rank * batch_size // self.world, (self.rank + 1) * batch_size // self.world)

    def barrier(self) -> None:
        if self.enabled:
            torch_dist.barrier()

    def sum_(self, t: torch.Tensor) -> torch.Tensor:
        if self.enabled:
            torch_dist.all_reduce(t)
        return t

    def all_gather_object(self, obj: Any) -> list[Any]:
        if not self.enabled:
            return [obj]
        out: list[Any] = [None] * self.world
        torch_dist.all_gather_object(out, obj)
        return out

    def close(self) -> None:
        if self._owned and torch_dist.is_initialized():
            torch_dist.destroy_process_group()

"""Process-group handling for multi-GPU / multi-node training launched with `torchrun`.

torchrun sets RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR and MASTER_PORT; a run without them is one process.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class DistributedContext:
    """This process's place in the run. Rank 0 does all file I/O."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @classmethod
    def from_environment(cls, device_type: str) -> DistributedContext:
        """Read torchrun's variables and join the process group (NCCL on CUDA, else gloo) if not joined yet."""
        world_size = _int_variable("WORLD_SIZE", 1)
        if world_size == 1:
            return cls()
        rank, local_rank = _int_variable("RANK", 0), _int_variable("LOCAL_RANK", 0)
        if not dist.is_initialized():
            for name in ("MASTER_ADDR", "MASTER_PORT"):
                if name not in os.environ:
                    raise RuntimeError(f"WORLD_SIZE={world_size} but {name} is not set: launch with torchrun")
            dist.init_process_group("nccl" if device_type == "cuda" else "gloo", rank=rank, world_size=world_size)
        return cls(rank=rank, world_size=world_size, local_rank=local_rank)

    def mean(self, value: torch.Tensor) -> torch.Tensor:
        """Mean of a tensor over all processes (the tensor itself in a single process)."""
        if not self.enabled:
            return value
        value = value.detach().clone()
        dist.all_reduce(value)
        return value / self.world_size

    def sum(self, value: torch.Tensor) -> torch.Tensor:
        """Sum of a tensor over all processes."""
        if not self.enabled:
            return value
        value = value.detach().clone()
        dist.all_reduce(value)
        return value

    def gather(self, value: Any) -> list[Any]:
        """Every process's `value` (picklable, produced by this program), in rank order, on every process."""
        if not self.enabled:
            return [value]
        gathered: list[Any] = [None] * self.world_size
        dist.all_gather_object(gathered, value)
        return gathered

    def barrier(self) -> None:
        if self.enabled:
            dist.barrier()


def local_rank_from_environment() -> int:
    """This process's index on its node (torchrun's LOCAL_RANK; 0 without torchrun)."""
    return _int_variable("LOCAL_RANK", 0)


def _int_variable(name: str, default: int) -> int:
    text = os.environ.get(name)
    if text is None:
        return default
    try:
        return int(text)
    except ValueError:
        raise RuntimeError(f"environment variable {name}={text!r} is not an integer") from None

"""The distributed environment: torchrun's env contract, the device, and the process group, in one object.

The trainer reads only torchrun's contract (RANK, LOCAL_RANK, WORLD_SIZE, LOCAL_WORLD_SIZE, MASTER_ADDR, MASTER_PORT).
Without it the process is one rank of a process group of one (a HashStore), so every code path is the same. nccl on
CUDA, gloo otherwise, with an explicit timeout. `DistEnv` also carries the helpers evaluation needs (a float64 sum over
ranks, a rank's share of n items), so a trainer and an evaluator in the same process share one process group.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from datetime import timedelta
from typing import Any

log = logging.getLogger(__name__)


@dataclasses.dataclass
class DistEnv:
    rank: int = 0
    local_rank: int = 0
    world: int = 1
    local_world: int = 1
    distributed: bool = False  # started by torchrun (the env contract is present)
    device: Any = None  # torch.device once `setup` chose one
    owns_group: bool = False  # this object created the process group (and destroys it in `teardown`)

    @classmethod
    def from_env(cls) -> DistEnv:
        env = os.environ
        if "WORLD_SIZE" not in env or "RANK" not in env:
            return cls()
        world = int(env["WORLD_SIZE"])
        return cls(
            rank=int(env["RANK"]),
            local_rank=int(env.get("LOCAL_RANK", "0")),
            world=world,
            local_world=int(env.get("LOCAL_WORLD_SIZE", str(world))),
            distributed=True,
        )

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def choose_device(self, requested: str, field: str = "train.device") -> Any:
        """cuda:LOCAL_RANK for "cuda" (or "auto" with a GPU), else cpu; TrainError (naming `field`, the setting that
        asked) when CUDA is asked for but absent."""
        import torch

        from repeatlab.errors import TrainError

        use_cuda = requested == "cuda" or (requested == "auto" and torch.cuda.is_available())
        if use_cuda and not torch.cuda.is_available():
            raise TrainError(f"{field}: 'cuda' is not allowed here: no CUDA device is available")
        self.device = torch.device("cuda", self.local_rank) if use_cuda else torch.device("cpu")
        if use_cuda:
            torch.cuda.set_device(self.device)
        return self.device

    def init_process_group(self, timeout_s: int | None) -> None:
        """Join torchrun's process group, or make a group of one; nccl on CUDA, gloo otherwise. timeout_s None: torch's
        default timeout. A group that exists already (made by the caller's caller) is used, not owned."""
        import torch.distributed as dist

        if dist.is_initialized():
            return
        backend = "nccl" if self.device is not None and self.device.type == "cuda" else "gloo"
        timeout = None if timeout_s is None else timedelta(seconds=int(timeout_s))  # None: torch's default
        if self.distributed:
            dist.init_process_group(backend=backend, timeout=timeout)
        else:
            dist.init_process_group(backend=backend, store=dist.HashStore(), rank=0, world_size=1, timeout=timeout)
        self.owns_group = True

    def teardown(self) -> None:
        import torch.distributed as dist

        if self.owns_group and dist.is_initialized():
            dist.destroy_process_group()
        self.owns_group = False

    def reduce(self, values: Any) -> Any:
        """Sum a tensor over ranks as float64 (returns a CPU tensor); the identity in one process."""
        import torch
        import torch.distributed as dist

        if self.world == 1 or not dist.is_initialized():
            return values
        buf = values.to(self.device, torch.float64).clone()
        dist.all_reduce(buf, op=dist.ReduceOp.SUM)
        return buf.cpu()

    def shard(self, n: int) -> range:
        """This rank's share of n items: rank, rank + world, ..."""
        return range(self.rank, n, self.world)

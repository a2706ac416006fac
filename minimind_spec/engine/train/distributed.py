"""Distributed data parallel under `torchrun`: process group, this rank's share of a batch,
and the reductions the loop logs.

`torchrun --nproc_per_node N minimind-spec train ...` sets RANK / WORLD_SIZE / LOCAL_RANK;
`setup()` then joins the group (gloo on CPU, NCCL on CUDA) and picks this rank's device. Each
optimizer step's rows are the same on every rank (the epoch order is seeded); rank r trains the
r-th contiguous block of them, so N ranks with per-rank micro-batches of m see exactly the
micro-batches one process sees with micro-batch m, and averaging gradients across ranks gives
the same update. Only rank 0 logs and writes checkpoints.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class World:
    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.size > 1


def setup(device: str) -> tuple[World, str]:
    """Join the process group when launched by torchrun; returns the world and this rank's device."""
    size = int(os.environ.get("WORLD_SIZE", "1"))
    if size <= 1:
        return World(), device
    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    if device.startswith("cuda"):
        torch.cuda.set_device(local_rank)
        device = f"cuda:{local_rank}"
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device.startswith("cuda") else "gloo")
    return World(rank, size, local_rank), device


def current() -> World:
    if dist.is_available() and dist.is_initialized():
        return World(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")))
    return World()


def mean(value: float, world: World, device: str) -> float:
    if not world.distributed:
        return value
    tensor = torch.tensor([value], dtype=torch.float64, device=device)
    dist.all_reduce(tensor)
    return float(tensor) / world.size


def total(value: int, world: World, device: str) -> int:
    if not world.distributed:
        return value
    tensor = torch.tensor([value], dtype=torch.int64, device=device)
    dist.all_reduce(tensor)
    return int(tensor)


def barrier(world: World) -> None:
    if world.distributed:
        dist.barrier()


def teardown() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()

"""Data parallelism under `torchrun`: the process group, DDP or FSDP2 wrapping, this rank's
share of a batch, the reductions the loop logs, and full (unsharded) state for checkpoints.

`torchrun --nproc_per_node N minimind-spec train ...` sets RANK / WORLD_SIZE / LOCAL_RANK;
`setup()` then joins the group (gloo on CPU, NCCL on CUDA) and picks this rank's device. Each
optimizer step's rows are the same on every rank (the epoch order is seeded); rank r trains the
r-th contiguous block of them. The loop sums the step's loss over every rank's micro-batches
and divides once by the step's total count (`sums` all-reduces the counts and the metrics), so
N ranks give the same update as one process, whatever the micro-batch. Only rank 0 logs and
writes checkpoints.

With `--fsdp` each decoder layer, then the whole model, is sharded with FSDP2 (`fully_shard`):
every rank holds 1/N of the weights, gradients and optimizer state, and gathers one layer's
weights at a time. Checkpoints stay in the single-process format: `full_state` gathers the
weights and the optimizer state (by parameter index) on rank 0, and `load_full_state` hands a
checkpoint back to every rank's shard, so a run may resume with or without FSDP.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from builders.model import MiniMindForCausalLM

from ..model_io import model_tensors, with_tied_head


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


def sums(values: list[float], world: World, device: str) -> list[float]:
    """Each value summed over the ranks (one all-reduce, float64); the values themselves on one process."""
    if not world.distributed:
        return list(values)
    tensor = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(tensor)
    return tensor.tolist()


def barrier(world: World) -> None:
    if world.distributed:
        dist.barrier()


def teardown() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def shard(model: MiniMindForCausalLM) -> nn.Module:
    """FSDP2: shard each decoder layer, then the rest (embeddings, final norm, head) as the root."""
    from torch.distributed.fsdp import fully_shard

    for layer in model.model.decoder_layers:
        fully_shard(layer)
    fully_shard(model)
    return model


def _parameter_names(model: nn.Module, optimizer: torch.optim.Optimizer) -> list[str]:
    """The optimizer's parameters by name, in its index order (param groups flattened)."""
    names = {id(p): name for name, p in model.named_parameters()}
    return [names[id(p)] for group in optimizer.param_groups for p in group["params"]]


def full_state(model: nn.Module, optimizer: torch.optim.Optimizer | None, sharded: bool
               ) -> tuple[dict[str, torch.Tensor], dict[str, Any] | None]:
    """The full weights (tied tensors once) and optimizer state (parameters by index) on CPU.
    Sharded, every rank must call it (it gathers); rank 0 gets the result, the others empty dicts."""
    if not sharded:
        return model_tensors(model), optimizer.state_dict() if optimizer is not None else None
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict, get_optimizer_state_dict

    options = StateDictOptions(full_state_dict=True, cpu_offload=True)
    gathered: dict[str, Any] = get_model_state_dict(model, options=options)  # full tensors, by name
    weights = model_tensors(model, gathered)
    if optimizer is None:
        return weights, None
    by_name: dict[str, Any] = get_optimizer_state_dict(model, optimizer, options=options)
    if not by_name:
        return weights, {}
    index = {name: i for i, name in enumerate(_parameter_names(model, optimizer))}
    groups = [{**group, "params": [index[name] for name in group["params"]]} for group in by_name["param_groups"]]
    return weights, {"state": {index[name]: value for name, value in by_name["state"].items()}, "param_groups": groups}


def load_full_state(model: nn.Module, optimizer: torch.optim.Optimizer | None, weights: dict[str, torch.Tensor],
                    optimizer_state: dict[str, Any] | None, sharded: bool) -> None:
    """Load full weights (and optimizer state by index) into `model` (sharded or not) on every rank."""
    if not sharded:
        raise ValueError("unsharded models load through export.load_weights_into and Optimizer.load_state_dict")
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict, set_optimizer_state_dict

    options = StateDictOptions(full_state_dict=True)
    full: dict[str, Any] = with_tied_head(model, weights)
    set_model_state_dict(model, full, options=options)
    if optimizer is not None and optimizer_state is not None:
        names = _parameter_names(model, optimizer)
        by_name: dict[str, Any] = {"state": {names[int(i)]: value for i, value in optimizer_state["state"].items()},
                   "param_groups": [{**group, "params": [names[i] for i in group["params"]]}
                                    for group in optimizer_state["param_groups"]]}
        set_optimizer_state_dict(model, optimizer, by_name, options=options)

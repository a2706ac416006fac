"""The optimizer and learning-rate schedule of a training stage.

AdamW (or Adam, SGD) with the spec's betas; weight decay on the trainable parameters of every
role except norms and embeddings (and biases: the compiled model has none). The schedule is a
linear warmup from 0 to the peak over `warmup` steps, then cosine (or linear) decay to
`min_lr_ratio` x peak at `total_steps`, or constant.
"""

from __future__ import annotations

import math

import networkx as nx
import torch
from torch import nn

from ...graph import ParamRole
from ...plan import StagePlan
from ..trainability import parameters_by_role

NO_DECAY_ROLES = frozenset({ParamRole.NORM, ParamRole.EMBEDDING})


def lr_factor(step: int, warmup: int, total_steps: int, scheduler: str, min_lr_ratio: float) -> float:
    """Multiplier of the peak lr at optimizer step `step` (0-based)."""
    if warmup and step < warmup:
        return (step + 1) / warmup
    if scheduler == "constant":
        return 1.0
    decay_steps = max(1, total_steps - warmup)
    progress = min(1.0, (step - warmup) / decay_steps)
    if scheduler == "linear":
        return 1.0 - (1.0 - min_lr_ratio) * progress
    return min_lr_ratio + (1.0 - min_lr_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


def lr_at(stage: StagePlan, step: int, total_steps: int) -> float:
    """The stage's scheduled learning rate at optimizer step `step` (0-based) of `total_steps`."""
    return stage.lr * lr_factor(step, stage.warmup, total_steps, stage.scheduler, stage.min_lr_ratio)


def build_optimizer(model: nn.Module, graph: nx.DiGraph, stage: StagePlan) -> torch.optim.Optimizer:
    """The stage's optimizer over the parameters that require grad, in decay / no-decay groups."""
    decay: list[nn.Parameter] = []
    no_decay: list[nn.Parameter] = []
    for role, params in parameters_by_role(model, graph).items():
        trainable = [p for p in params if p.requires_grad]
        (no_decay if role in NO_DECAY_ROLES else decay).extend(trainable)
    groups = [{"params": decay, "weight_decay": stage.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    groups = [g for g in groups if g["params"]]
    if stage.optimizer == "SGD":
        return torch.optim.SGD(groups, lr=stage.lr, momentum=stage.betas[0])
    if stage.optimizer == "Adam":
        return torch.optim.Adam(groups, lr=stage.lr, betas=stage.betas)
    return torch.optim.AdamW(groups, lr=stage.lr, betas=stage.betas)

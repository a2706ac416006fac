"""Which parameters train: set per stage by parameter role, through the graph.

Every graph node that owns parameters has a `ParamRole` (embedding, attention, mlp, router,
norm, head, lora) and an id equal to its module's qualified name, so a role set maps onto
exactly the model's tensors. `set_trainable(model, graph, roles)` can be called at any time
(by `compile_graph` for the default, and again for each training stage); nothing about
trainability is fixed when the model is built. `parameters_by_role` serves optimizer
grouping (no weight decay on norms and embeddings).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import networkx as nx
from torch import nn

from ..graph import ParamRole, nodes


@dataclass(frozen=True)
class TrainableSummary:
    roles: frozenset[ParamRole]
    trainable: int  # parameters (each tensor once) that now require grad
    total: int

    @property
    def percent(self) -> float:
        return 100.0 * self.trainable / self.total if self.total else 0.0


def parameters_by_role(model: nn.Module, graph: nx.DiGraph) -> dict[ParamRole, list[nn.Parameter]]:
    """Each role's parameters, each tensor once (a tied lm_head adds nothing to `embedding`)."""
    out: dict[ParamRole, list[nn.Parameter]] = {}
    seen: set[int] = set()
    for op in nodes(graph):
        if op.role is None:
            continue
        for param in model.get_submodule(op.id).parameters(recurse=False):
            if id(param) not in seen:
                seen.add(id(param))
                out.setdefault(op.role, []).append(param)
    return out


def set_trainable(model: nn.Module, graph: nx.DiGraph, roles: Iterable[ParamRole]) -> TrainableSummary:
    """Make exactly the parameters of `roles` require grad; returns the counts."""
    wanted = frozenset(roles)
    trainable = total = 0
    for role, params in parameters_by_role(model, graph).items():
        for param in params:
            param.requires_grad_(role in wanted)
            total += param.numel()
            trainable += param.numel() if role in wanted else 0
    return TrainableSummary(wanted, trainable, total)

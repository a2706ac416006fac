"""Cost figures read off the module graph: parameters, FLOPs, KV cache and activations.

Used by `build` (the summary), `diff` (cost deltas), the declared-vs-compiled check and the
training plan (`plan.py`). Parameters are counted once per tensor: a tied lm_head adds none. Which parameters
count as trainable depends on the parameter roles a stage trains (`trainable_roles`); by
default, as the spec describes it: only the LoRA adapters when LoRA is on, else everything.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass

import networkx as nx

from ..config import ModelConfig
from .build import nodes
from .ir import BASE_ROLES, OpType, ParamRole

DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}
NO_ACTIVATION = frozenset({OpType.INPUT, OpType.OUTPUT, OpType.AUX_LOSS, OpType.ROPE})


@dataclass(frozen=True)
class Costs:
    total_params: int
    trainable_params: int
    frozen_params: int
    lora_params: int
    trainable_roles: frozenset[ParamRole]
    params_by_op: dict[str, int]
    flops_per_token: int  # forward, at the spec's seq_len for attention
    kv_cache_bytes_per_token: int
    activation_bytes: int  # one sequence of seq_len: every node's output (experts: their share of tokens), at the spec's dtype
    dtype: str
    active_params_per_token: int = 0  # parameters one token passes through (MoE: top-k of the routed experts)

    @property
    def trainable_percent(self) -> float:
        return 100.0 * self.trainable_params / self.total_params if self.total_params else 0.0


def default_trainable_roles(graph: nx.DiGraph) -> frozenset[ParamRole]:
    """What trains when no stage says otherwise: only the adapters if the graph has LoRA, else the whole base."""
    has_lora = any(op.role == ParamRole.LORA for op in nodes(graph))
    return frozenset({ParamRole.LORA}) if has_lora else BASE_ROLES


def params_with_roles(graph: nx.DiGraph, roles: Iterable[ParamRole]) -> int:
    """Parameters (each tensor once) of the nodes whose role is in `roles`."""
    wanted = set(roles)
    return sum(op.params for op in nodes(graph) if op.role in wanted)


def _numel(shape: str, seq_len: int) -> int:
    total = 1
    for dim in re.findall(r"[A-Za-z_]\w*|\d+", shape):
        total *= 1 if dim == "B" else seq_len if dim == "T" else int(dim) if dim.isdigit() else 1
    return total


def graph_costs(graph: nx.DiGraph, config: ModelConfig, trainable_roles: Iterable[ParamRole] | None = None) -> Costs:
    """The costs of `graph` (built from `config`), with `trainable_roles` training (default: see module doc)."""
    roles = frozenset(trainable_roles) if trainable_roles is not None else default_trainable_roles(graph)
    by_op: Counter[str] = Counter()
    activations = 0
    active = 0.0
    for op_node in nodes(graph):
        by_op[str(op_node.op)] += op_node.params
        active += op_node.params * op_node.token_fraction
        if op_node.op not in NO_ACTIVATION:
            activations += round(_numel(op_node.out_shape, config.seq_len) * op_node.token_fraction)
        if op_node.op == OpType.ATTENTION and config.attention_backend == "eager":
            activations += config.n_heads * config.seq_len * config.seq_len  # materialised attention probabilities
    total = sum(by_op.values())
    trainable = params_with_roles(graph, roles)
    bytes_per = DTYPE_BYTES[config.dtype]
    return Costs(
        total_params=total, trainable_params=trainable, frozen_params=total - trainable,
        lora_params=params_with_roles(graph, {ParamRole.LORA}), trainable_roles=roles,
        params_by_op={op: n for op, n in by_op.items() if n},
        flops_per_token=sum(n.flops for n in nodes(graph)),
        kv_cache_bytes_per_token=2 * config.n_layers * config.n_kv_heads * config.head_dim * bytes_per,
        activation_bytes=activations * bytes_per, dtype=config.dtype, active_params_per_token=round(active),
    )

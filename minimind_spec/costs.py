"""Cost figures read off the module graph: parameters, FLOPs, KV cache and activations.

Used by `build` (the summary), `diff` (cost deltas) and the declared-vs-compiled check.
Parameters are counted once per tensor: a tied lm_head adds none.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass

import networkx as nx

from .graph import OpType, nodes
from .resolved import ResolvedSpec

DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}


@dataclass(frozen=True)
class Costs:
    total_params: int
    trainable_params: int
    frozen_params: int
    lora_params: int
    params_by_op: dict[str, int]
    flops_per_token: int  # forward, at the spec's seq_len for attention
    kv_cache_bytes_per_token: int
    activation_bytes: int  # one sequence of seq_len: every node's output (experts: their share of tokens), at the spec's dtype
    dtype: str

    @property
    def trainable_percent(self) -> float:
        return 100.0 * self.trainable_params / self.total_params if self.total_params else 0.0


def _numel(shape: str, seq_len: int) -> int:
    total = 1
    for dim in re.findall(r"[A-Za-z_]\w*|\d+", shape):
        total *= 1 if dim == "B" else seq_len if dim == "T" else int(dim) if dim.isdigit() else 1
    return total


def graph_costs(graph: nx.DiGraph) -> Costs:
    resolved: ResolvedSpec = graph.graph["resolved"]
    c = resolved.model
    by_op: Counter[str] = Counter()
    trainable = lora = activations = 0
    for op_node in nodes(graph):
        by_op[str(op_node.op)] += op_node.params
        trainable += op_node.params if op_node.trainable else 0
        lora += op_node.params if op_node.op == OpType.LORA else 0
        if op_node.op not in (OpType.INPUT, OpType.OUTPUT, OpType.AUX_LOSS, OpType.ROPE):
            fraction = op_node.attrs.get("expected_token_fraction", 1.0)  # MoE experts see top_k/E of the tokens
            activations += round(_numel(op_node.out_shape, c.seq_len) * fraction)
        if op_node.op == OpType.ATTENTION and c.attention_backend == "eager":
            activations += c.n_heads * c.seq_len * c.seq_len  # materialised attention probabilities
    total = sum(by_op.values())
    bytes_per = DTYPE_BYTES[c.dtype]
    return Costs(
        total_params=total, trainable_params=trainable, frozen_params=total - trainable, lora_params=lora,
        params_by_op={op: n for op, n in by_op.items() if n},
        flops_per_token=sum(n.flops for n in nodes(graph)),
        kv_cache_bytes_per_token=2 * c.n_layers * c.n_kv_heads * c.head_dim * bytes_per
        if c.positional_encoding in ("RoPE", "Absolute") else 0,
        activation_bytes=activations * bytes_per, dtype=c.dtype,
    )

"""Graph invariants: the module graph is a DAG with one input and one output, every edge
delivers a shape its target accepts, and the streams meeting at a merge point agree.

A failure here is a bug in the graph builder or an impossible spec, so it is an error.
"""

from __future__ import annotations

import networkx as nx

from ..errors import Problem
from .build import node
from .ir import MERGE_OPS, EdgeKind, LoRAAttrs, OpType


def _where(node_id: str) -> str:
    return f"graph:{node_id}"


def check_graph(graph: nx.DiGraph) -> list[Problem]:
    problems: list[Problem] = []
    if not nx.is_directed_acyclic_graph(graph):
        cycle = " -> ".join(u for u, _ in nx.find_cycle(graph))
        problems.append(Problem("graph", f"graph has a cycle: {cycle}"))
    sources = [n for n, deg in graph.in_degree() if deg == 0]
    sinks = [n for n, deg in graph.out_degree() if deg == 0]
    if len(sources) != 1 or node(graph, sources[0]).op != OpType.INPUT:
        problems.append(Problem("graph", f"graph must have exactly one input node, found {sources}"))
    if len(sinks) != 1 or node(graph, sinks[0]).op != OpType.OUTPUT:
        problems.append(Problem("graph", f"graph must have exactly one output node, found {sinks}"))
    for src, dst, data in graph.edges(data=True):
        target = node(graph, dst)
        if data["shape"] not in target.in_shapes:
            problems.append(Problem(_where(dst), f"receives {data['shape']} from {src} but takes {', '.join(target.in_shapes)}"))
    for op_node in (node(graph, n) for n in graph.nodes):
        if op_node.op in MERGE_OPS:
            streams = {d["shape"] for _, _, d in graph.in_edges(op_node.id, data=True) if d["kind"] != EdgeKind.ROUTING}
            if streams != {op_node.out_shape}:
                problems.append(Problem(_where(op_node.id), f"merge point joins shapes {sorted(streams)} into {op_node.out_shape}"))
        if isinstance(op_node.attrs, LoRAAttrs):
            target = node(graph, op_node.attrs.target)
            if target.out_shape != op_node.out_shape:
                problems.append(Problem(_where(op_node.id), f"adapter output {op_node.out_shape} does not match {target.id} {target.out_shape}"))
    return problems

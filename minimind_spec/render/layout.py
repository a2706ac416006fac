"""Turn the module graph into a `Drawing`: what to draw, independent of the output syntax.

The collapsed view (the default) finds runs of identical decoder layers and draws each run
once, as a block marked "x8"; inside a layer, runs of identical MoE experts are drawn once the
same way. Two layers are identical when their nodes, shapes, parameter counts, attributes
and internal wiring agree once the layer index is removed from every name. Residual adds,
the MoE router, combine and aux loss, and LoRA adapters stay visible as their own nodes.
The expanded view draws every node of the graph, each layer in its own block.

Emitters (`mermaid.py`, `dot.py`) only translate a `Drawing` into text.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

import networkx as nx

from ..graph import EdgeKind, OpNode, OpType, ParamRole, default_trainable_roles, node, nodes
from ..graph.ir import (
    AddAttrs, AttentionAttrs, AuxLossAttrs, EmbeddingAttrs, GLUAttrs, InputAttrs, LinearAttrs, LMHeadAttrs, LoRAAttrs,
    MoECombineAttrs, NormAttrs, RopeAttrs, RouterAttrs, attrs_dict,
)

_EXPERT = re.compile(r"\.(experts|shared_experts)\.(\d+)\.")


@dataclass
class DrawNode:
    """One box of the drawing; `members` are the graph node ids it stands for."""

    key: str
    lines: list[str]
    shape: str  # box | round | stadium | hexagon | trapezoid | parallelogram | circle
    classes: list[str] = field(default_factory=list)
    members: list[str] = field(default_factory=list)


@dataclass
class Block:
    """A group of nodes drawn together (a layer or a run of identical layers, a run of experts)."""

    key: str
    title: str
    nodes: list[DrawNode] = field(default_factory=list)
    blocks: list[Block] = field(default_factory=list)
    classes: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class DrawEdge:
    src: str
    dst: str
    kind: EdgeKind
    label: str = ""


@dataclass
class Drawing:
    title: str
    root: Block
    edges: list[DrawEdge]
    expanded: bool

    def all_nodes(self) -> list[DrawNode]:
        out: list[DrawNode] = []

        def walk(block: Block) -> None:
            out.extend(block.nodes)
            for child in block.blocks:
                walk(child)

        walk(self.root)
        return out


# ----- labels -----

def count(n: int) -> str:
    """A parameter count with thousands separators: 262,144."""
    return f"{n:,}"


def _number(x: float) -> str:
    """1000000.0 -> '1000000', 1e-05 -> '1e-05', 0.01 -> '0.01'."""
    return str(int(x)) if float(x).is_integer() else f"{x:g}"


def describe(op: OpNode) -> str:
    """The middle line of a node's label: what the op computes."""
    match op.attrs:
        case EmbeddingAttrs(num_embeddings=n, dim=dim):
            kind = "Embedding" if op.op == OpType.EMBEDDING else "absolute positions"
            return f"{kind} {n} × {dim}"
        case RopeAttrs() as rope:
            scaling = "" if rope.scaling == "none" else f", {rope.scaling} ×{_number(rope.factor)}"
            return f"RoPE θ={_number(rope.theta)}, head_dim {rope.head_dim}{scaling}"
        case NormAttrs(eps=eps, place="query" | "key", dim=dim):
            return f"QK-norm: RMSNorm per head over {dim}, eps={_number(eps)}"
        case NormAttrs(eps=eps):
            return f"{'RMSNorm' if op.op == OpType.RMSNORM else 'LayerNorm'} eps={_number(eps)}"
        case LinearAttrs(in_features=n_in, out_features=n_out):
            return f"Linear {n_in} → {n_out}"
        case AttentionAttrs() as attn:
            kv = "" if attn.n_kv_heads == attn.n_heads else f", {attn.n_kv_heads} kv heads"
            return f"causal attention, {attn.n_heads} heads × {attn.head_dim}{kv}, {attn.backend}"
        case GLUAttrs(activation=activation):
            return f"{activation}(gate) × up"
        case RouterAttrs() as router:
            aux = ", aux loss" if router.aux_loss else ", no aux loss"
            return f"router: top-{router.top_k} of {router.num_experts} experts{aux}"
        case MoECombineAttrs() as combine:
            shared = f" + {combine.num_shared_experts} shared" if combine.num_shared_experts else ""
            return f"gate-weighted sum of top-{combine.top_k} experts{shared}"
        case AuxLossAttrs(weight=weight, layers=layers):
            return f"load-balancing loss, weight {_number(weight)}, {layers} layers"
        case LMHeadAttrs() as head:
            tied = " (tied to embed_tokens)" if head.tied else ""
            return f"Linear {head.in_features} → {head.out_features}{tied}"
        case LoRAAttrs() as lora:
            return f"LoRA r={lora.rank} α={_number(lora.alpha)}"
        case InputAttrs(dtype=dtype):
            return f"token ids, {dtype}"
        case AddAttrs(merge_point=merge_point):
            return "+ " + str(merge_point)
    match op.op:
        case OpType.OUTPUT:
            return "logits" + (" + aux loss" if len(op.in_shapes) > 1 else "")
    return str(op.op)


_EDGE_LABELS = {EdgeKind.RESIDUAL: "residual", EdgeKind.ROUTING: "routing weights", EdgeKind.AUX: "aux"}

_SHAPES = {
    OpType.INPUT: "stadium", OpType.OUTPUT: "stadium", OpType.AUX_LOSS: "stadium",
    OpType.ADD: "circle", OpType.MOE_COMBINE: "hexagon", OpType.ROUTER: "trapezoid",
    OpType.LORA: "parallelogram", OpType.ROPE: "round", OpType.POSITION_EMBEDDING: "round",
}

_CLASSES = {
    OpType.ADD: "merge", OpType.MOE_COMBINE: "merge", OpType.ROUTER: "moe", OpType.AUX_LOSS: "moe",
    OpType.LORA: "lora", OpType.INPUT: "io", OpType.OUTPUT: "io",
    OpType.RMSNORM: "norm", OpType.LAYERNORM: "norm", OpType.ATTENTION: "attention",
}


def _label(op: OpNode, name: str, frozen: bool) -> list[str]:
    """Label lines: name, what it computes, output shape, parameters."""
    if op.op == OpType.LORA:
        return [describe(op), f"{count(op.params)} params, trainable"]
    if op.op == OpType.ADD:
        return [f"⊕ {name}", op.out_shape]
    lines = [name, describe(op), op.out_shape if op.out_shape != "()" else "scalar"]
    if op.params:
        lines.append(f"{count(op.params)} params" + (", frozen" if frozen else ""))
    return lines


# ----- collapsing identical repeats -----

def _strip(value: object, pattern: str, replacement: str) -> object:
    """`value` with every occurrence of `pattern` in its strings replaced (for signatures)."""
    if isinstance(value, str):
        return value.replace(pattern, replacement)
    if isinstance(value, dict):
        return tuple(sorted((k, _strip(v, pattern, replacement)) for k, v in value.items()))
    if isinstance(value, (list, tuple)):
        return tuple(_strip(v, pattern, replacement) for v in value)
    return value


def _signature(graph: nx.DiGraph, ids: list[str], prefix: str) -> tuple:
    """What a repeated unit (a layer, an expert) looks like with its index removed."""
    members = set(ids)
    parts: list[tuple[object, ...]] = []
    for node_id in ids:
        op = node(graph, node_id)
        parts.append((node_id.replace(prefix, "*"), str(op.op), op.out_shape, op.in_shapes, op.params, op.role,
                      op.tied_to, _strip(attrs_dict(op.attrs), prefix, "*")))
    for node_id in ids:
        for _, dst, data in graph.out_edges(node_id, data=True):
            if dst in members:
                parts.append((node_id.replace(prefix, "*"), dst.replace(prefix, "*"), data["kind"]))
    return tuple(parts)


def _runs(keys: list[int], signatures: dict[int, tuple]) -> list[list[int]]:
    """Consecutive keys with equal signatures, as runs."""
    runs: list[list[int]] = []
    for k in keys:
        if runs and signatures[runs[-1][-1]] == signatures[k]:
            runs[-1].append(k)
        else:
            runs.append([k])
    return runs


def _span(run: list[int]) -> str:
    return str(run[0]) if len(run) == 1 else f"{run[0]}-{run[-1]}"


@dataclass
class _Plan:
    rep: dict[str, str] = field(default_factory=dict)  # graph node id -> id of the node drawn for it
    block_of: dict[str, str] = field(default_factory=dict)  # drawn node id -> key of its block
    blocks: dict[str, Block] = field(default_factory=dict)  # block key -> block, parents before children
    parent: dict[str, str | None] = field(default_factory=dict)  # block key -> parent block key (None: top level)
    layer_run: dict[int, int] = field(default_factory=dict)  # layer index -> first layer of its run
    short: dict[str, str] = field(default_factory=dict)  # drawn node id -> name shown in its block


def _plan(graph: nx.DiGraph, expand: bool) -> _Plan:
    by_layer: dict[int, list[str]] = {}
    for op in nodes(graph):
        if op.layer is not None:
            by_layer.setdefault(op.layer, []).append(op.id)
    layer_keys = sorted(by_layer)
    if expand:
        layer_runs = [[i] for i in layer_keys]
    else:
        sigs = {i: _signature(graph, by_layer[i], f"layers.{i}.") for i in layer_keys}
        layer_runs = _runs(layer_keys, sigs)

    plan = _Plan()
    for run in layer_runs:
        first = run[0]
        block_key = f"model.layers.{_span(run)}"
        per_layer = sum(node(graph, n).params for n in by_layer[first])
        times = f" (x{len(run)})" if len(run) > 1 else ""
        plan.blocks[block_key] = Block(block_key, f"model.layers.{_span(run)}{times} · {count(per_layer)} params per layer",
                                       classes=["layers"])
        plan.parent[block_key] = None
        expert_rep = _plan_experts(graph, plan, by_layer[first], block_key, expand)
        for node_id in by_layer[first]:
            plan.block_of.setdefault(node_id, block_key)
            plan.short.setdefault(node_id, node(graph, node_id).short_name)
        for i in run:
            plan.layer_run[i] = first
            for node_id in by_layer[i]:
                in_first = node_id.replace(f"layers.{i}.", f"layers.{first}.", 1)
                plan.rep[node_id] = expert_rep.get(in_first, in_first)
    for op in nodes(graph):
        plan.rep.setdefault(op.id, op.id)
    return plan


def _plan_experts(graph: nx.DiGraph, plan: _Plan, layer_ids: list[str], layer_block: str, expand: bool) -> dict[str, str]:
    """Inside one drawn layer, put each run of identical experts in one block drawn once.

    Returns the mapping from every expert node of this layer to the node drawn for it."""
    units: dict[tuple[str, str], dict[int, list[str]]] = {}
    for node_id in layer_ids:
        m = _EXPERT.search(node_id)
        if m:
            units.setdefault((node_id[: m.start()], m.group(1)), {}).setdefault(int(m.group(2)), []).append(node_id)
    rep: dict[str, str] = {}
    for (head, kind), experts in units.items():
        keys = sorted(experts)
        if expand:
            runs = [[e] for e in keys]
        else:
            sigs = {e: _signature(graph, experts[e], f".{kind}.{e}.") for e in keys}
            runs = _runs(keys, sigs)
        for run in runs:
            first = run[0]
            block_key = f"{head}.{kind}.{_span(run)}"
            per_expert = sum(node(graph, n).params for n in experts[first])
            if len(run) > 1:
                title = f"{kind}.{_span(run)} (x{len(run)}) · {count(per_expert)} params each"
            else:
                title = f"{kind}.{first} · {count(per_expert)} params"
            plan.blocks[block_key] = Block(block_key, title, classes=["experts"])
            plan.parent[block_key] = layer_block
            for e in run:
                for node_id in experts[e]:
                    rep[node_id] = node_id.replace(f".{kind}.{e}.", f".{kind}.{first}.", 1)
            for node_id in experts[first]:
                plan.block_of[node_id] = block_key
                plan.short[node_id] = node_id.split(f".{kind}.{first}.", 1)[1]
    return rep


def layout(graph: nx.DiGraph, expand: bool = False) -> Drawing:
    """The `Drawing` of a module graph, collapsed (default) or with every node (`expand`)."""
    plan = _plan(graph, expand)
    trainable = default_trainable_roles(graph)
    lora_base = ParamRole.LORA in trainable  # only then are base weights marked frozen
    members: dict[str, list[str]] = {}
    for node_id, drawn in plan.rep.items():
        members.setdefault(drawn, []).append(node_id)

    variant = graph.graph.get("variant")
    title = str(graph.graph.get("name") or "model") + (f" ({variant})" if variant else "")
    root = Block("root", title)
    for op in nodes(graph):
        if plan.rep[op.id] != op.id:
            continue
        block_key = plan.block_of.get(op.id)
        name = plan.short.get(op.id, op.id)
        if op.op == OpType.INPUT:
            name = f"{title}: {op.id}"
        frozen = lora_base and op.params > 0 and op.role not in trainable
        draw = DrawNode(op.id, _label(op, name, frozen), _SHAPES.get(op.op, "box"),
                        [c for c in [_CLASSES.get(op.op)] if c], members[op.id])
        if frozen:
            draw.classes.append("frozen")
        (plan.blocks[block_key] if block_key else root).nodes.append(draw)

    for key, block in plan.blocks.items():
        parent = plan.parent[key]
        (plan.blocks[parent] if parent else root).blocks.append(block)

    edges: list[DrawEdge] = []
    seen: set[tuple[str, str, str]] = set()
    for src, dst, data in graph.edges(data=True):
        a, b = node(graph, src), node(graph, dst)
        if (not expand and a.layer is not None and b.layer is not None and a.layer != b.layer
                and plan.layer_run[a.layer] == plan.layer_run[b.layer]):
            continue  # wiring from one collapsed layer into the next: the block's "xN" says it
        rs, rd, kind = plan.rep[src], plan.rep[dst], data["kind"]
        if rs == rd or (rs, rd, kind) in seen:
            continue
        seen.add((rs, rd, kind))
        edges.append(DrawEdge(rs, rd, kind, _EDGE_LABELS.get(kind, "")))
    return Drawing(title=title, root=root, edges=edges, expanded=expand)

"""Compile the module graph into a PyTorch model, reading nothing but the graph.

`compile_graph(graph)` walks the graph: every node whose op owns a module is built by the
closed registry in `builders.registry` from the node's typed attributes; container ops
(attention, gated MLP, MoE combine) receive the submodules they are wired to, found through
the graph's edges (the projections feeding an attention node, the adapter feeding a
projection, the experts and router feeding a combine); the decoder layers and the model are
assembled last. Everything is built on the meta device first (no memory, instant even for
billions of parameters), then materialised on the target device and initialised as
MiniMind / Llama do: normal(0, 0.02) weights, norms at one, LoRA B at zero. Which
parameters train is set by role (`trainability.set_trainable`): by default only the
adapters when the graph has LoRA, else everything.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable
from pathlib import Path
from typing import TypeVar

import networkx as nx
import torch
from torch import nn

from builders.attention import Attention
from builders.lora import Projection
from builders.mlp import GatedMLP
from builders.model import DecoderLayer, MiniMindForCausalLM, MiniMindModel
from builders.moe import MoE
from builders.positional import LearnedPositionEmbedding, RotaryEmbedding
from builders.registry import builder_for

from ..config import ResolvedSpec
from ..graph import EdgeKind, OpNode, OpType, ParamRole, build_graph, default_trainable_roles, edge_kind, node, nodes
from ..graph.ir import (
    AddAttrs, AttentionAttrs, EmbeddingAttrs, GLUAttrs, LinearAttrs, LMHeadAttrs, LoRAAttrs, MoECombineAttrs, NormAttrs,
    RopeAttrs, RouterAttrs, TokenRowsAttrs,
)
from .trainability import set_trainable
from .writer import INIT_STD, save_model_dir

CONTAINER_OPS = frozenset({OpType.ATTENTION, OpType.GLU, OpType.MOE_COMBINE})
WIRED_BY_MODEL = frozenset({OpType.INPUT, OpType.OUTPUT, OpType.ADD, OpType.AUX_LOSS})


class _Wiring:
    """Finds the modules an op is wired to by following the graph's edges."""

    def __init__(self, graph: nx.DiGraph, built: dict[str, nn.Module]) -> None:
        self.graph = graph
        self.built = built

    def inputs(self, op: OpNode, kind: EdgeKind | None = None) -> list[OpNode]:
        """The ops feeding `op` (along edges of `kind`), in wiring order."""
        return [node(self.graph, src) for src in self.graph.predecessors(op.id)
                if kind is None or edge_kind(self.graph, src, op.id) == kind]

    def consumer(self, op: OpNode, op_type: OpType) -> OpNode:
        """The one op of `op_type` that `op` feeds."""
        (found,) = [node(self.graph, dst) for dst in self.graph.successors(op.id) if node(self.graph, dst).op == op_type]
        return found

    def projections(self, ops: list[OpNode]) -> dict[str, nn.Module]:
        """The built projections among `ops`, by projection name (q_proj, gate_proj, ...)."""
        return {op.attrs.projection: self.built[op.id] for op in ops if isinstance(op.attrs, LinearAttrs)}


def _build_leaf(op: OpNode, wiring: _Wiring) -> nn.Module:
    build, attrs = builder_for(op.op), op.attrs
    match attrs:
        case TokenRowsAttrs():
            return build(token_ids=attrs.token_ids, dim=attrs.dim)
        case EmbeddingAttrs():  # trainable token rows, if any, feed it and were built before it (graph order)
            rows = [wiring.built[r.id] for r in wiring.inputs(op, EdgeKind.ADAPTER)]
            return build(num_embeddings=attrs.num_embeddings, dim=attrs.dim, **({"token_rows": rows[0]} if rows else {}))
        case RopeAttrs():
            return build(head_dim=attrs.head_dim, max_position_embeddings=attrs.max_position_embeddings, theta=attrs.theta,
                         scaling=attrs.scaling, factor=attrs.factor,
                         original_max_position_embeddings=attrs.original_max_position_embeddings,
                         beta_fast=attrs.beta_fast, beta_slow=attrs.beta_slow, attention_factor=attrs.attention_factor)
        case NormAttrs():
            return build(dim=attrs.dim, eps=attrs.eps)
        case LoRAAttrs():
            return build(in_features=attrs.in_features, out_features=attrs.out_features, rank=attrs.rank,
                         alpha=attrs.alpha, dropout=attrs.dropout)
        case LinearAttrs():  # its adapter, if any, feeds it and was built before it (graph order)
            adapters = [wiring.built[a.id] for a in wiring.inputs(op, EdgeKind.ADAPTER)]
            return build(in_features=attrs.in_features, out_features=attrs.out_features, lora=adapters[0] if adapters else None)
        case LMHeadAttrs():
            rows = [wiring.built[r.id] for r in wiring.inputs(op, EdgeKind.ADAPTER)]
            return build(in_features=attrs.in_features, out_features=attrs.out_features, **({"token_rows": rows[0]} if rows else {}))
        case RouterAttrs():
            return build(d_model=attrs.d_model, num_experts=attrs.num_experts)
    raise NotImplementedError(f"compile: op type {op.op!s} ({op.id}) has no wiring")  # pragma: no cover


def _build_container(op: OpNode, wiring: _Wiring) -> nn.Module:
    build, attrs = builder_for(op.op), op.attrs
    match attrs:
        case AttentionAttrs():  # fed by q/k/v projections, or by the QK-norms that follow q and k
            inputs = wiring.inputs(op)
            head_norms = {o.attrs.place: o for o in inputs if isinstance(o.attrs, NormAttrs)}
            qkv = wiring.projections(inputs + [p for n in head_norms.values() for p in wiring.inputs(n)])
            o_proj = wiring.built[wiring.consumer(op, OpType.LINEAR).id]
            q_norm, k_norm = (wiring.built[head_norms[p].id] if p in head_norms else None for p in ("query", "key"))
            return build(q_proj=qkv["q_proj"], k_proj=qkv["k_proj"], v_proj=qkv["v_proj"], o_proj=o_proj,
                         n_heads=attrs.n_heads, n_kv_heads=attrs.n_kv_heads, head_dim=attrs.head_dim,
                         dropout=attrs.dropout, backend=attrs.backend, q_norm=q_norm, k_norm=k_norm)
        case GLUAttrs():
            gate_up = wiring.projections(wiring.inputs(op))
            down_proj = wiring.built[wiring.consumer(op, OpType.LINEAR).id]
            return build(gate_proj=gate_up["gate_proj"], up_proj=gate_up["up_proj"], down_proj=down_proj,
                         activation=attrs.activation)
        case MoECombineAttrs():
            (router,) = wiring.inputs(op, EdgeKind.ROUTING)
            router_attrs = router.attrs
            assert isinstance(router_attrs, RouterAttrs)
            experts: dict[str, list[nn.Module]] = {"routed_expert": [], "shared_expert": []}
            for expert_output in wiring.inputs(op, EdgeKind.DATA):
                (glu,) = [g for g in wiring.inputs(expert_output) if isinstance(g.attrs, GLUAttrs)]
                assert isinstance(glu.attrs, GLUAttrs)
                experts[glu.attrs.kind].append(wiring.built[glu.id])
            return build(gate=wiring.built[router.id], experts=experts["routed_expert"],
                         shared_experts=experts["shared_expert"], top_k=attrs.top_k,
                         norm_topk_prob=router_attrs.norm_topk_prob,
                         aux_loss_weight=router_attrs.aux_loss_weight if router_attrs.aux_loss else 0.0)
    raise NotImplementedError(f"compile: op type {op.op!s} ({op.id}) has no wiring")  # pragma: no cover


def _build_modules(graph: nx.DiGraph) -> dict[str, nn.Module]:
    """Every module of the graph keyed by node id: leaves first, then containers, each in
    graph order (so a dense MLP or expert exists before the MoE that gathers it)."""
    built: dict[str, nn.Module] = {}
    wiring = _Wiring(graph, built)
    ops = [op for op in nodes(graph) if op.op not in WIRED_BY_MODEL]
    for op in ops:
        if op.op not in CONTAINER_OPS:
            built[op.id] = _build_leaf(op, wiring)
    for op in ops:
        if op.op in CONTAINER_OPS:
            built[op.id] = _build_container(op, wiring)
    return built


M = TypeVar("M", bound=nn.Module)


def _as(module: nn.Module | None, kind: type[M]) -> M:
    """A built module as the class its builder makes (the builders' registry returns plain modules)."""
    if not isinstance(module, kind):
        raise TypeError(f"expected a {kind.__name__}, the builder made {type(module).__name__}")
    return module


def _decoder_layer(index: int, layer_ops: list[OpNode], built: dict[str, nn.Module]) -> DecoderLayer:
    """One decoder layer from its ops: the two norms by place, attention, the (dense or MoE) MLP."""
    norms = {op.attrs.place: built[op.id] for op in layer_ops if isinstance(op.attrs, NormAttrs)}
    (attention,) = [built[op.id] for op in layer_ops if op.op == OpType.ATTENTION]
    mlps = [built[op.id] for op in layer_ops
            if op.op == OpType.MOE_COMBINE or (isinstance(op.attrs, GLUAttrs) and op.attrs.kind == "dense")]
    residual = next(op.attrs for op in layer_ops if isinstance(op.attrs, AddAttrs))
    (mlp,) = mlps
    if not isinstance(mlp, (GatedMLP, MoE)):
        raise TypeError(f"expected a GatedMLP or MoE, the builder made {type(mlp).__name__}")
    return DecoderLayer(input_layernorm=norms["input"], self_attn=_as(attention, Attention),
                        post_attention_layernorm=norms["post_attention"], mlp=mlp,
                        dropout=residual.dropout, sd_prob=residual.sd_prob, layer_index=index)


def _max_positions(positions: OpNode) -> int:
    """The longest sequence the positions op takes: RoPE's table, or the learned embedding's rows."""
    if isinstance(positions.attrs, RopeAttrs):
        return positions.attrs.max_position_embeddings
    if isinstance(positions.attrs, EmbeddingAttrs):
        return positions.attrs.num_embeddings
    raise TypeError(f"{positions.id} is not a positions op")


def assemble(graph: nx.DiGraph) -> MiniMindForCausalLM:
    """Build the model's module tree from the graph on the current default device."""
    built = _build_modules(graph)
    by_layer: dict[int, list[OpNode]] = {}
    top: dict[OpType, OpNode] = {}
    for op in nodes(graph):
        if op.layer is not None:
            by_layer.setdefault(op.layer, []).append(op)
        else:
            top.setdefault(op.op, op)  # the final norm is the only top-level norm
    layers = [_decoder_layer(i, by_layer[i], built) for i in sorted(by_layer)]
    attention = next(op.attrs for ops in by_layer.values() for op in ops if isinstance(op.attrs, AttentionAttrs))
    positions = top.get(OpType.ROPE) or top[OpType.POSITION_EMBEDDING]
    rope = positions.op == OpType.ROPE
    max_positions = _max_positions(positions)
    norm = top.get(OpType.RMSNORM) or top[OpType.LAYERNORM]
    head = top[OpType.LM_HEAD]
    assert isinstance(head.attrs, LMHeadAttrs)
    stack = MiniMindModel(
        embed_tokens=_as(built[top[OpType.EMBEDDING].id], nn.Embedding), layers=layers, norm=built[norm.id],
        rotary_emb=_as(built[positions.id], RotaryEmbedding) if rope else None,
        embed_positions=None if rope else _as(built[positions.id], LearnedPositionEmbedding),
    )
    return MiniMindForCausalLM(
        model=stack, lm_head=_as(built[head.id], Projection), tie_word_embeddings=head.attrs.tied,
        n_kv_heads=attention.n_kv_heads, head_dim=attention.head_dim, max_position_embeddings=max_positions,
    )


def materialize(model: MiniMindForCausalLM, device: torch.device | str, seed: int | None = None) -> MiniMindForCausalLM:
    """Allocate a meta-built model on `device` and initialise it (seeded when `seed` is given)."""
    requires_grad = {name: p.requires_grad for name, p in model.named_parameters()}
    model.to_empty(device=device)
    model.tie_weights()
    generator = None
    if seed is not None:
        generator = torch.Generator(device=torch.device(device)).manual_seed(seed)
    model.reset_parameters(std=INIT_STD, generator=generator)
    for name, param in model.named_parameters():
        param.requires_grad_(requires_grad[name])
    return model


def compile_graph(graph: nx.DiGraph, device: torch.device | str = "cpu", dtype: torch.dtype | None = None,
                  seed: int | None = None, trainable_roles: Iterable[ParamRole] | None = None) -> MiniMindForCausalLM:
    """The PyTorch model of a module graph. `device="meta"` allocates nothing; `dtype` casts
    the parameters (default float32); `seed` makes the initial weights reproducible;
    `trainable_roles` picks what trains (default: see the module docstring)."""
    with torch.device("meta"):
        model = assemble(graph)
    set_trainable(model, graph, trainable_roles if trainable_roles is not None else default_trainable_roles(graph))
    if torch.device(device).type != "meta":
        materialize(model, device, seed)
    if dtype is not None:
        model.to(dtype)
        for module in model.modules():  # keep RoPE tables in float32
            if isinstance(module, RotaryEmbedding) and module.cos_table.device.type != "meta":
                module.reset_tables()
    return model


def compile_model(resolved: ResolvedSpec, device: torch.device | str = "cpu", dtype: torch.dtype | None = None,
                  seed: int | None = None, trainable_roles: Iterable[ParamRole] | None = None) -> MiniMindForCausalLM:
    """The PyTorch model of a resolved spec: `compile_graph(build_graph(resolved), ...)`; its
    `save_pretrained(dir)` writes it with this config (`export.save_model_dir`)."""
    model = compile_graph(build_graph(resolved), device, dtype, seed, trainable_roles)
    model.pretrained_writer = functools.partial(_write_pretrained, resolved)
    return model


def _write_pretrained(resolved: ResolvedSpec, model: nn.Module, directory: Path) -> list[Path]:
    return save_model_dir(model, resolved, directory)

"""Compile the module graph into a PyTorch model.

`compile_model(resolved)` builds the graph (`build_graph`), then walks it: every node whose
op owns a module is built by the closed registry in `builders.registry` from the node's
flat attributes, under the node id as its qualified name; container ops (attention, gated
MLP, MoE combine) receive the submodules built before them; the decoder layers and the model
are assembled last. Everything is built on the meta device first (no memory, instant even for
billions of parameters), then materialised on the target device and initialised as
MiniMind / Llama do: normal(0, 0.02) weights, norms at one, LoRA B at zero. With LoRA in the
spec the base weights are frozen and only the adapters train, as the graph marks them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import nn

from builders.model import DecoderLayer, MiniMindForCausalLM, MiniMindModel
from builders.registry import builder_for

from .graph import OpNode, OpType, build_graph, node, nodes
from .resolved import ModelConfig, ResolvedSpec

if TYPE_CHECKING:
    import networkx as nx

INIT_STD = 0.02
CONTAINER_OPS = (OpType.ATTENTION, OpType.GLU, OpType.MOE_COMBINE)
WIRED_BY_MODEL = (OpType.INPUT, OpType.OUTPUT, OpType.ADD, OpType.AUX_LOSS)


def _build_leaf(op: OpNode, config: ModelConfig, built: dict[str, nn.Module]) -> nn.Module:
    a, build = op.attrs, builder_for(op.op)
    if op.op in (OpType.EMBEDDING, OpType.POSITION_EMBEDDING):
        return build(num_embeddings=a["num_embeddings"], dim=a["dim"])
    if op.op == OpType.ROPE:
        rs = config.rope_scaling
        return build(
            head_dim=a["head_dim"], max_position_embeddings=a["max_position_embeddings"], theta=a["theta"],
            scaling=a["scaling"], factor=a["factor"], original_max_position_embeddings=rs.original_max_position_embeddings,
            beta_fast=rs.beta_fast, beta_slow=rs.beta_slow, attention_factor=rs.attention_factor,
        )
    if op.op in (OpType.RMSNORM, OpType.LAYERNORM):
        return build(dim=a["dim"], eps=a["eps"])
    if op.op == OpType.LORA:
        return build(in_features=a["in_features"], out_features=a["out_features"], rank=a["rank"],
                     alpha=a["alpha"], dropout=a["dropout"])
    if op.op == OpType.LINEAR:  # its adapter node comes first in graph order
        return build(in_features=a["in_features"], out_features=a["out_features"], lora=built.get(f"{op.id}.lora"))
    if op.op == OpType.LM_HEAD:
        return build(in_features=a["in_features"], out_features=a["out_features"])
    if op.op == OpType.ROUTER:
        return build(d_model=config.d_model, num_experts=a["num_experts"])
    raise NotImplementedError(f"compile: op type {op.op!s} ({op.id}) has no wiring")  # pragma: no cover


def _build_container(op: OpNode, graph: nx.DiGraph, built: dict[str, nn.Module]) -> tuple[str, nn.Module]:
    """(qualified name, module) of a container op, from submodules built in the first pass."""
    a, build = op.attrs, builder_for(op.op)
    if op.op == OpType.ATTENTION:
        prefix = op.id.removesuffix(".attention")
        return prefix, build(
            q_proj=built[f"{prefix}.q_proj"], k_proj=built[f"{prefix}.k_proj"], v_proj=built[f"{prefix}.v_proj"],
            o_proj=built[f"{prefix}.o_proj"], n_heads=a["n_heads"], n_kv_heads=a["n_kv_heads"],
            head_dim=a["head_dim"], dropout=a["dropout"], backend=a["backend"],
        )
    if op.op == OpType.GLU:
        prefix = op.id.removesuffix(".act")
        return prefix, build(gate_proj=built[f"{prefix}.gate_proj"], up_proj=built[f"{prefix}.up_proj"],
                             down_proj=built[f"{prefix}.down_proj"], activation=a["activation"])
    prefix = op.id.removesuffix(".combine")  # MOE_COMBINE
    router = node(graph, f"{prefix}.gate").attrs
    return prefix, build(
        gate=built[f"{prefix}.gate"],
        experts=[built[f"{prefix}.experts.{e}"] for e in range(a["num_experts"])],
        shared_experts=[built[f"{prefix}.shared_experts.{s}"] for s in range(a["num_shared_experts"])],
        top_k=a["top_k"], norm_topk_prob=router["norm_topk_prob"],
        aux_loss_weight=router["aux_loss_weight"] if router["aux_loss"] else 0.0,
    )


def _build_modules(graph: nx.DiGraph, config: ModelConfig) -> dict[str, nn.Module]:
    """Every module of the graph keyed by qualified name: leaves first, then containers
    (attention, gated MLP, MoE), each in graph order so experts exist before their MoE."""
    built: dict[str, nn.Module] = {}
    ops = [op for op in nodes(graph) if op.op not in WIRED_BY_MODEL]
    for op in ops:
        if op.op not in CONTAINER_OPS:
            built[op.id] = _build_leaf(op, config, built)
    for op in ops:
        if op.op in CONTAINER_OPS:
            name, module = _build_container(op, graph, built)
            built[name] = module
    return built


def assemble(graph: nx.DiGraph, config: ModelConfig) -> MiniMindForCausalLM:
    """Build the model's module tree from the graph on the current default device."""
    built = _build_modules(graph, config)
    layers = []
    for i in range(config.n_layers):
        p = f"model.layers.{i}"
        residual = graph.nodes[f"{p}.mlp_residual"]["node"].attrs
        layers.append(DecoderLayer(
            input_layernorm=built[f"{p}.input_layernorm"], self_attn=built[f"{p}.self_attn"],  # type: ignore[arg-type]
            post_attention_layernorm=built[f"{p}.post_attention_layernorm"], mlp=built[f"{p}.mlp"],  # type: ignore[arg-type]
            dropout=residual["dropout"], sd_prob=residual["sd_prob"], layer_index=i,
        ))
    stack = MiniMindModel(
        embed_tokens=built["model.embed_tokens"], layers=layers, norm=built["model.norm"],  # type: ignore[arg-type]
        rotary_emb=built.get("model.rotary_emb"), embed_positions=built.get("model.embed_positions"),  # type: ignore[arg-type]
    )
    return MiniMindForCausalLM(
        model=stack, lm_head=built["lm_head"], tie_word_embeddings=config.tie_word_embeddings,  # type: ignore[arg-type]
        n_kv_heads=config.n_kv_heads, head_dim=config.head_dim,
        max_position_embeddings=config.max_position_embeddings, label_smoothing=config.label_smoothing,
    )


def apply_trainable(model: nn.Module, graph: nx.DiGraph) -> None:
    """Freeze the parameters the graph marks as not trainable (the base model under LoRA)."""
    for op in nodes(graph):
        if op.params and not op.trainable:
            for param in model.get_submodule(op.id).parameters(recurse=False):
                param.requires_grad_(False)


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


def compile_model(resolved: ResolvedSpec, device: torch.device | str = "cpu", dtype: torch.dtype | None = None,
                  seed: int | None = None) -> MiniMindForCausalLM:
    """The PyTorch model of a resolved spec. `device="meta"` allocates nothing; `dtype`
    casts the parameters (default float32); `seed` makes the initial weights reproducible."""
    graph = build_graph(resolved)
    with torch.device("meta"):
        model = assemble(graph, resolved.model)
    apply_trainable(model, graph)
    if torch.device(device).type != "meta":
        materialize(model, device, seed)
    if dtype is not None:
        model.to(dtype)
        for module in model.modules():  # keep RoPE tables in float32
            if hasattr(module, "reset_tables") and module.cos_table.device.type != "meta":
                module.reset_tables()
    return model

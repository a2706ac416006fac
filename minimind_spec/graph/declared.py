"""Declared vs compiled: every number the spec states is compared with the graph.

The spec's `modules[].params` and shapes, `total_params`, LoRA `trainable_params` and
`percentage`, the io shapes, `free_parameters` shapes and `concat_merge_points` are checked
against what the graph really contains. A disagreement is a warning carrying both numbers
and a one-line reason; the model is never bent to match a declaration.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass

import networkx as nx

from ..config import ModelConfig, ResolvedSpec
from ..errors import Problem, pointer, warning
from ..schema import Spec
from .build import node, nodes
from .costs import Costs, graph_costs
from .ir import INPUT_ID, AddAttrs, LinearAttrs, LMHeadAttrs, MergePoint, MoECombineAttrs, NormAttrs, OpNode, ParamRole

_SEQ = {"seq_len", "t", "seq", "sequence_length", "seqlen", "l"}
_BATCH = {"b", "batch", "batch_size"}


def normalize_shape(text: str, config: ModelConfig) -> tuple[str, ...] | None:
    """'(B, seq_len, vocab_size)' -> ('B', 'T', '6400'); None if a symbol is unknown."""
    symbols = {"d_model": config.d_model, "hidden": config.d_model, "d": config.d_model, "hidden_size": config.d_model,
               "vocab": config.vocab_size, "vocab_size": config.vocab_size, "v": config.vocab_size,
               "num_experts": config.moe.num_experts if config.moe else None, "e": config.moe.num_experts if config.moe else None,
               "n_heads": config.n_heads, "head_dim": config.head_dim}
    out = []
    for token in re.findall(r"[A-Za-z_]\w*|\d+", text):
        low = token.lower()
        if low in _BATCH:
            out.append("B")
        elif low in _SEQ:
            out.append("T")
        elif token.isdigit():
            out.append(token)
        elif symbols.get(low) is not None:
            out.append(str(symbols[low]))
        else:
            return None
    return tuple(out)


@dataclass(frozen=True)
class _Actual:
    """What the graph holds for one declared module: params, shapes and why."""

    params: int
    in_shape: str
    out_shape: str
    reason: str


def _layer_nodes(graph: nx.DiGraph, layer: int, roles: set[ParamRole]) -> list[OpNode]:
    return [n for n in nodes(graph) if n.layer == layer and n.role in roles]


def _embedding(graph: nx.DiGraph, config: ModelConfig) -> _Actual:
    emb = node(graph, "model.embed_tokens")
    return _Actual(emb.params, emb.in_shapes[0], emb.out_shape, f"embedding {config.vocab_size}x{config.d_model} = {emb.params:,}")


def _attention(graph: nx.DiGraph, config: ModelConfig) -> _Actual:
    projs = [(n, n.attrs) for n in _layer_nodes(graph, 0, {ParamRole.ATTENTION}) if isinstance(n.attrs, LinearAttrs)]
    qk_norms = [n for n in _layer_nodes(graph, 0, {ParamRole.NORM}) if isinstance(n.attrs, NormAttrs) and n.attrs.place in ("query", "key")]
    total = sum(n.params for n, _ in projs) + sum(n.params for n in qk_norms)
    parts = ", ".join(f"{attrs.projection[0]} {attrs.in_features}x{attrs.out_features}" for _, attrs in projs)
    if qk_norms:
        parts += f", QK-norm 2x{config.head_dim}"
    heads = f"{config.n_heads} heads" + (f", {config.n_kv_heads} kv heads" if config.n_kv_heads != config.n_heads else "")
    return _Actual(total, f"(B, T, {config.d_model})", f"(B, T, {config.d_model})", f"{heads}: {parts} = {total:,} per layer")


def _mlp(graph: nx.DiGraph, config: ModelConfig) -> _Actual:
    total = sum(n.params for n in _layer_nodes(graph, 0, {ParamRole.MLP, ParamRole.ROUTER}))
    hidden = f"(B, T, {config.d_model})"
    if config.moe is None:
        return _Actual(total, hidden, hidden, f"SwiGLU with hidden {config.mlp_hidden} has three {config.d_model}x{config.mlp_hidden} matrices = {total:,} per layer")
    moe = config.moe
    experts = moe.num_experts + moe.num_shared_experts
    return _Actual(total, hidden, hidden, f"MoE: router {moe.num_experts}x{config.d_model} + {experts} experts of three "
                                         f"{config.d_model}x{moe.expert_hidden} matrices = {total:,} per layer")


def _lm_head(graph: nx.DiGraph, config: ModelConfig) -> _Actual:
    head = node(graph, "lm_head")
    attrs = head.attrs
    assert isinstance(attrs, LMHeadAttrs)
    weights = attrs.weight_elements
    tied = " (tied to the embedding: adds no parameters)" if attrs.tied else ""
    return _Actual(weights, head.in_shapes[0], head.out_shape, f"{config.d_model}x{config.vocab_size} = {weights:,}{tied}")


def _norm(graph: nx.DiGraph, config: ModelConfig) -> _Actual:
    norm = node(graph, "model.norm")
    return _Actual(norm.params, norm.in_shapes[0], norm.out_shape, f"{config.norm} over {config.d_model} = {norm.params:,}")


def _positions(graph: nx.DiGraph, config: ModelConfig) -> _Actual | None:
    if "model.embed_positions" not in graph:
        return None
    pos = node(graph, "model.embed_positions")
    return _Actual(pos.params, pos.in_shapes[0], pos.out_shape, f"positions {config.max_position_embeddings}x{config.d_model} = {pos.params:,}")


def _matcher(name: str, kind: str) -> Callable[[nx.DiGraph, ModelConfig], _Actual | None] | None:
    text = f"{name} {kind}".lower()
    if "position" in text:
        return _positions
    if "embedding" in text:
        return _embedding
    if "attention" in text:
        return _attention
    if any(w in text for w in ("feedforward", "feed-forward", "mlp", "mixture", "moe", "ffn")):
        return _mlp
    if "lm head" in text or "lm_head" in text or "unembed" in text:
        return _lm_head
    if "norm" in text:
        return _norm
    return None


def _spec(resolved: ResolvedSpec) -> Spec:
    """The spec as written (`check_declared` checks nothing for a model rebuilt from config.json, which has none)."""
    if resolved.spec is None:
        raise ValueError("a model rebuilt from config.json declares nothing")
    return resolved.spec


def _check_modules(resolved: ResolvedSpec, graph: nx.DiGraph, out: list[Problem]) -> None:
    config = resolved.model
    for i, module in enumerate(_spec(resolved).modules):
        matcher = _matcher(module.name, module.type)
        actual = matcher(graph, config) if matcher else None
        if actual is None:
            out.append(warning(pointer("modules", i), f"{module.name} ({module.type}) matches no op in the graph; not checked"))
            continue
        if module.params is not None and module.params != actual.params:
            out.append(warning(pointer("modules", i, "params"), f"{module.name} declared {module.params:,}; {actual.reason}"))
        for key, real in (("in_shape", actual.in_shape), ("out_shape", actual.out_shape)):
            declared = getattr(module, key)
            if declared is not None and normalize_shape(declared, config) != normalize_shape(real, config):
                out.append(warning(pointer("modules", i, key), f"{module.name} declared {declared}; the graph has {real}"))


def _total_reason(graph: nx.DiGraph, costs: Costs, config: ModelConfig) -> str:
    per_layer = sum(n.params for n in nodes(graph) if n.layer == 0 and n.role != ParamRole.LORA)
    rest = costs.total_params - costs.lora_params - config.n_layers * per_layer
    text = f"{config.n_layers} layers x {per_layer:,} + embeddings/final norm {rest:,}"
    if costs.lora_params:
        text += f" + LoRA {costs.lora_params:,}"
    return text + (" (lm_head tied)" if config.tie_word_embeddings else " (lm_head untied)")


def _check_totals(resolved: ResolvedSpec, graph: nx.DiGraph, costs: Costs, out: list[Problem]) -> None:
    config, declared = resolved.model, _spec(resolved).total_params
    lora_note = "only the LoRA adapters train" if config.lora else "everything trains (no LoRA)"
    checks = (
        ("all", costs.total_params, _total_reason(graph, costs, config)),
        ("trainable", costs.trainable_params, lora_note),
        ("frozen", costs.frozen_params, "the base model is frozen under LoRA" if config.lora else "nothing is frozen without LoRA"),
    )
    for key, real, why in checks:
        value = getattr(declared, key)
        if value is not None and value != real:
            out.append(warning(pointer("total_params", key), f"declared {value:,}; compiled {real:,}: {why}"))

    out += lora_declared_problems(resolved, costs.lora_params, costs.total_params)


def lora_declared_problems(resolved: ResolvedSpec, lora_params: int, total_params: int) -> list[Problem]:
    """The spec's declared LoRA `trainable_params` and `percentage` against the compiled adapters."""
    config, lora = resolved.model, resolved.spec.techniques.lora if resolved.spec is not None else None
    if config.lora is None or lora is None:
        return []
    out = []
    why = f"rank {config.lora.rank} on {', '.join(config.lora.targets)} in {config.n_layers} layers"
    if lora.trainable_params is not None and lora.trainable_params != lora_params:
        out.append(warning(pointer("techniques", "lora", "trainable_params"), f"declared {lora.trainable_params:,}; compiled {lora_params:,}: {why}"))
    if lora.percentage is not None:
        real = 100.0 * lora_params / total_params
        if abs(real - lora.percentage) > max(0.005, 0.05 * real):
            out.append(warning(pointer("techniques", "lora", "percentage"),
                               f"declared {lora.percentage:g}%; compiled {real:.2f}% ({lora_params:,} of {total_params:,})"))
    return out


def _check_io(resolved: ResolvedSpec, graph: nx.DiGraph, out: list[Problem]) -> None:
    config, io = resolved.model, _spec(resolved).io
    real_in = node(graph, INPUT_ID).out_shape
    real_out = node(graph, "lm_head").out_shape
    for key, shapes, real in (("input_spec", io.input_spec.shapes, real_in), ("output_spec", io.output_spec.shapes, real_out)):
        for i, declared in enumerate(shapes):
            if normalize_shape(declared, config) != normalize_shape(real, config):
                out.append(warning(pointer("io", key, "shapes", i), f"declared {declared}; the graph has {real}"))


def _check_free_parameters(resolved: ResolvedSpec, graph: nx.DiGraph, out: list[Problem]) -> None:
    config = resolved.model
    for i, free in enumerate(_spec(resolved).free_parameters):
        where = pointer("free_parameters", i, "shape")
        if free.name in ("moe_gate", "router", "gate"):
            if config.moe is None:
                out.append(warning(pointer("free_parameters", i), f"{free.name}: this build is dense and has no router (it appears with --variant MoE)"))
                continue
            real = f"({config.moe.num_experts}, {config.d_model})"
            if normalize_shape(free.shape, config) != normalize_shape(real, config):
                out.append(warning(where, f"{free.name} declared {free.shape}; each layer's router weight is {real} (num_experts x d_model)"))
        elif free.name == "aux_loss_weight":
            if free.shape.strip().lower() not in ("scalar", "()", "(1,)"):
                out.append(warning(where, f"aux_loss_weight declared {free.shape}; it is a scalar"))
            if config.moe is not None and not config.moe.aux_loss:
                out.append(warning(pointer("free_parameters", i), "aux_loss_weight is declared but the aux loss is off in this build"))
        else:
            out.append(warning(pointer("free_parameters", i), f"{free.name!r} matches nothing in the graph; not checked"))


def _check_merge_points(resolved: ResolvedSpec, graph: nx.DiGraph, out: list[Problem]) -> None:
    present = {op.attrs.merge_point for op in nodes(graph) if isinstance(op.attrs, (AddAttrs, MoECombineAttrs))}
    for i, point in enumerate(_spec(resolved).concat_merge_points):
        if MergePoint(point.from_, point.to, point.op) not in present:
            extra = " (it appears with --variant MoE)" if point.op == "gate" and resolved.model.moe is None else ""
            out.append(warning(pointer("concat_merge_points", i), f"{point.op} merge {point.from_} -> {point.to} is not in this build{extra}"))


def check_declared(resolved: ResolvedSpec, graph: nx.DiGraph, costs: Costs | None = None) -> list[Problem]:
    """Warnings for every declared number or shape that the graph contradicts."""
    if resolved.spec is None:  # rebuilt from an exported config.json: nothing was declared
        return []
    costs = costs or graph_costs(graph, resolved.model)
    out: list[Problem] = []
    _check_modules(resolved, graph, out)
    _check_totals(resolved, graph, costs, out)
    _check_io(resolved, graph, out)
    _check_free_parameters(resolved, graph, out)
    _check_merge_points(resolved, graph, out)
    return out

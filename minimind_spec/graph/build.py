"""Build the module graph (a networkx.DiGraph) from a resolved `ModelConfig`.

One node per op. Node ids that own parameters are the qualified names of the compiled
model's submodules, Hugging Face Llama style (`model.layers.0.self_attn.q_proj`), so the
graph and the `nn.Module` can be compared name for name. Every node carries an `OpNode`
under the key "node": op type, typed attributes (every argument its builder needs), symbolic
shapes such as `(B, T, 512)`, parameter count and role, and forward FLOPs per token. Edges
carry the shape that flows along them and an `EdgeKind`.

The same graph serves build reports, checks, rendering, diffs, the compiler and the training plan.
"""

from __future__ import annotations

from typing import Any

import networkx as nx

from ..config import ModelConfig, ResolvedSpec
from ..schema import ProjectionName
from .ir import (
    INPUT_ID, OUTPUT_ID, AddAttrs, AttentionAttrs, AuxLossAttrs, EdgeKind, EmbeddingAttrs, GLUAttrs, InputAttrs, LinearAttrs,
    LMHeadAttrs, LoRAAttrs, MergePoint, MLPKind, MoECombineAttrs, NormAttrs, NormPlace, OpNode, OpType, OutputAttrs,
    ParamRole, RopeAttrs, RouterAttrs, TokenRowsAttrs, attrs_dict,
)

ATTENTION_MERGE = MergePoint("attention_output", "mlp_input", "add")
MLP_MERGE = MergePoint("mlp_output", "layer_output", "add")
EXPERTS_MERGE = MergePoint("moe_experts", "mlp_output", "gate")
EMBEDDING_MERGE = MergePoint("embedding_output", "attention_input", "add")  # token + absolute position embeddings


def shape(*dims: int | str) -> str:
    return "(" + ", ".join(str(d) for d in dims) + ")"


def node(graph: nx.DiGraph, node_id: str) -> OpNode:
    """The typed `OpNode` of a graph node."""
    return graph.nodes[node_id]["node"]


def nodes(graph: nx.DiGraph) -> list[OpNode]:
    """All `OpNode`s in insertion (topological build) order."""
    return [data["node"] for _, data in graph.nodes(data=True)]


def edge_kind(graph: nx.DiGraph, src: str, dst: str) -> EdgeKind:
    return graph.edges[src, dst]["kind"]


class _GraphBuilder:
    """Adds the nodes of one model, step by step: embeddings, each layer, the head."""

    def __init__(self, config: ModelConfig) -> None:
        self.config = config
        self.graph = nx.DiGraph()
        self.hidden = shape("B", "T", config.d_model)

    # ----- primitives -----

    def add(self, op_node: OpNode, *inputs: str, kind: EdgeKind = EdgeKind.DATA) -> str:
        self.graph.add_node(op_node.id, node=op_node)
        for src in inputs:
            self.edge(src, op_node.id, kind)
        return op_node.id

    def edge(self, src: str, dst: str, kind: EdgeKind) -> None:
        self.graph.add_edge(src, dst, shape=node(self.graph, src).out_shape, kind=kind)

    def linear(self, node_id: str, src: str, n_in: int, n_out: int, layer: int, projection: ProjectionName,
               role: ParamRole, fraction: float = 1.0) -> str:
        """A bias-free projection, with a LoRA adapter when it is a LoRA target."""
        in_shape, out_shape = node(self.graph, src).out_shape, shape("B", "T", n_out)
        params = n_in * n_out
        lora = self.config.lora
        adapter = None
        if lora is not None and projection in lora.targets:
            lora_params = lora.rank * (n_in + n_out)
            adapter = self.add(OpNode(
                id=f"{node_id}.lora", op=OpType.LORA, in_shapes=(in_shape,), out_shape=out_shape, params=lora_params,
                flops=round(2 * lora_params * fraction), layer=layer, role=ParamRole.LORA, token_fraction=fraction,
                attrs=LoRAAttrs(in_features=n_in, out_features=n_out, rank=lora.rank, alpha=lora.alpha,
                                scaling=lora.scaling, dropout=lora.dropout, target=node_id),
            ), src, kind=EdgeKind.ADAPTER)
        in_shapes = (in_shape, out_shape) if adapter else (in_shape,)
        self.add(OpNode(id=node_id, op=OpType.LINEAR, in_shapes=in_shapes, out_shape=out_shape, params=params,
                        flops=round(2 * params * fraction), layer=layer, role=role, token_fraction=fraction,
                        attrs=LinearAttrs(in_features=n_in, out_features=n_out, projection=projection)), src)
        if adapter:
            self.edge(adapter, node_id, EdgeKind.ADAPTER)
        return node_id

    def token_rows(self, target: str) -> str | None:
        """LoRA's trainable token rows of the embedding or the (untied) head `target`, when the spec has them."""
        lora = self.config.lora
        if lora is None or not lora.trainable_tokens:
            return None
        n, d = len(lora.trainable_tokens), self.config.d_model
        return self.add(OpNode(
            id=f"{target}.token_rows", op=OpType.TOKEN_ROWS, in_shapes=(shape("B", "T"),), out_shape=shape(n, d), params=n * d,
            role=ParamRole.LORA, attrs=TokenRowsAttrs(token_ids=lora.trainable_tokens, dim=d, target=target),
        ), INPUT_ID, kind=EdgeKind.ADAPTER)

    def norm(self, node_id: str, src: str, layer: int | None, place: NormPlace) -> str:
        d, is_rms = self.config.d_model, self.config.norm == "RMSNorm"
        return self.add(OpNode(
            id=node_id, op=OpType.RMSNORM if is_rms else OpType.LAYERNORM, in_shapes=(self.hidden,), out_shape=self.hidden,
            params=d if is_rms else 2 * d, flops=(4 if is_rms else 7) * d, layer=layer, role=ParamRole.NORM,
            attrs=NormAttrs(dim=d, eps=self.config.norm_eps, place=place),
        ), src)

    def head_norm(self, node_id: str, src: str, heads: int, layer: int, place: NormPlace) -> str:
        """QK-norm: an RMSNorm over each head's head_dim features of a q or k projection (one weight shared by the heads)."""
        hd, eps = self.config.head_dim, self.config.norm_eps
        heads_shape = shape("B", "T", heads * hd)
        return self.add(OpNode(
            id=node_id, op=OpType.RMSNORM, in_shapes=(heads_shape,), out_shape=heads_shape, params=hd,
            flops=4 * heads * hd, layer=layer, role=ParamRole.NORM, attrs=NormAttrs(dim=hd, eps=eps, place=place),
        ), src)

    def residual(self, node_id: str, stream: str, branch: str, layer: int, point: MergePoint) -> str:
        self.add(OpNode(
            id=node_id, op=OpType.ADD, in_shapes=(self.hidden, self.hidden), out_shape=self.hidden,
            flops=self.config.d_model, layer=layer,
            attrs=AddAttrs(merge_point=point, dropout=self.config.dropout, sd_prob=self.config.sd_prob),
        ), stream, kind=EdgeKind.RESIDUAL)
        self.edge(branch, node_id, EdgeKind.DATA)
        return node_id

    # ----- blocks -----

    def glu_mlp(self, prefix: str, src: str, hidden: int, layer: int, kind: MLPKind, fraction: float = 1.0) -> str:
        d = self.config.d_model
        gate = self.linear(f"{prefix}.gate_proj", src, d, hidden, layer, "gate_proj", ParamRole.MLP, fraction)
        up = self.linear(f"{prefix}.up_proj", src, d, hidden, layer, "up_proj", ParamRole.MLP, fraction)
        hidden_shape = shape("B", "T", hidden)
        act = self.add(OpNode(
            id=f"{prefix}.act", op=OpType.GLU, in_shapes=(hidden_shape, hidden_shape), out_shape=hidden_shape,
            flops=round(5 * hidden * fraction), layer=layer, token_fraction=fraction,
            attrs=GLUAttrs(activation=self.config.activation, hidden=hidden, kind=kind),
        ), gate, up)
        return self.linear(f"{prefix}.down_proj", act, hidden, d, layer, "down_proj", ParamRole.MLP, fraction)

    def moe_mlp(self, prefix: str, src: str, layer: int) -> str:
        moe, d = self.config.moe, self.config.d_model
        assert moe is not None
        router = self.add(OpNode(
            id=f"{prefix}.gate", op=OpType.ROUTER, in_shapes=(self.hidden,), out_shape=shape("B", "T", moe.num_experts),
            params=moe.num_experts * d, flops=2 * moe.num_experts * d, layer=layer, role=ParamRole.ROUTER,
            attrs=RouterAttrs(d_model=d, num_experts=moe.num_experts, top_k=moe.top_k, norm_topk_prob=moe.norm_topk_prob,
                              aux_loss=moe.aux_loss, aux_loss_weight=moe.aux_loss_weight),
        ), src)
        fraction = moe.top_k / moe.num_experts
        outputs = [self.glu_mlp(f"{prefix}.experts.{e}", src, moe.expert_hidden, layer, "routed_expert", fraction)
                   for e in range(moe.num_experts)]
        outputs += [self.glu_mlp(f"{prefix}.shared_experts.{s}", src, moe.expert_hidden, layer, "shared_expert")
                    for s in range(moe.num_shared_experts)]
        combine = self.add(OpNode(
            id=f"{prefix}.combine", op=OpType.MOE_COMBINE,
            in_shapes=(shape("B", "T", moe.num_experts), self.hidden), out_shape=self.hidden,
            flops=2 * (moe.top_k + moe.num_shared_experts) * d, layer=layer,
            attrs=MoECombineAttrs(merge_point=EXPERTS_MERGE, top_k=moe.top_k, num_experts=moe.num_experts,
                                  num_shared_experts=moe.num_shared_experts),
        ), *outputs)
        self.edge(router, combine, EdgeKind.ROUTING)
        return combine

    def attention(self, prefix: str, src: str, layer: int, rope: str | None) -> str:
        config = self.config
        d, hd = config.d_model, config.head_dim
        q = self.linear(f"{prefix}.q_proj", src, d, config.n_heads * hd, layer, "q_proj", ParamRole.ATTENTION)
        k = self.linear(f"{prefix}.k_proj", src, d, config.n_kv_heads * hd, layer, "k_proj", ParamRole.ATTENTION)
        v = self.linear(f"{prefix}.v_proj", src, d, config.n_kv_heads * hd, layer, "v_proj", ParamRole.ATTENTION)
        if config.qk_norm:
            q = self.head_norm(f"{prefix}.q_norm", q, config.n_heads, layer, "query")
            k = self.head_norm(f"{prefix}.k_norm", k, config.n_kv_heads, layer, "key")
        inputs = (q, k, v) + ((rope,) if rope else ())
        attn = self.add(OpNode(
            id=f"{prefix}.attention", op=OpType.ATTENTION,
            in_shapes=tuple(node(self.graph, s).out_shape for s in inputs), out_shape=shape("B", "T", config.n_heads * hd),
            flops=4 * config.seq_len * config.n_heads * hd, layer=layer,
            attrs=AttentionAttrs(n_heads=config.n_heads, n_kv_heads=config.n_kv_heads, head_dim=hd, dropout=config.dropout,
                                 backend=config.attention_backend, flops_context=config.seq_len),
        ), *inputs)
        return self.linear(f"{prefix}.o_proj", attn, config.n_heads * hd, d, layer, "o_proj", ParamRole.ATTENTION)

    # ----- the model, step by step -----

    def embeddings(self) -> tuple[str, str | None]:
        """Token embedding and positions; returns (residual stream, RoPE node or None)."""
        config = self.config
        d = config.d_model
        tokens = shape("B", "T")
        self.add(OpNode(id=INPUT_ID, op=OpType.INPUT, out_shape=tokens, attrs=InputAttrs()))
        rows = self.token_rows("model.embed_tokens")
        stream = self.add(OpNode(
            id="model.embed_tokens", op=OpType.EMBEDDING, in_shapes=(tokens,) + ((node(self.graph, rows).out_shape,) if rows else ()),
            out_shape=self.hidden, params=config.vocab_size * d, role=ParamRole.EMBEDDING,
            attrs=EmbeddingAttrs(num_embeddings=config.vocab_size, dim=d),
        ), INPUT_ID)
        if rows:
            self.edge(rows, stream, EdgeKind.ADAPTER)
        if config.positional_encoding == "RoPE":
            rs = config.rope_scaling
            rope = self.add(OpNode(
                id="model.rotary_emb", op=OpType.ROPE, in_shapes=(tokens,), out_shape=shape("T", config.head_dim),
                attrs=RopeAttrs(head_dim=config.head_dim, max_position_embeddings=config.max_position_embeddings,
                                theta=config.rope_theta, scaling=rs.kind, factor=rs.factor,
                                original_max_position_embeddings=rs.original_max_position_embeddings,
                                beta_fast=rs.beta_fast, beta_slow=rs.beta_slow, attention_factor=rs.attention_factor),
            ), INPUT_ID)
            return stream, rope
        positions = self.add(OpNode(
            id="model.embed_positions", op=OpType.POSITION_EMBEDDING, in_shapes=(tokens,), out_shape=self.hidden,
            params=config.max_position_embeddings * d, role=ParamRole.EMBEDDING,
            attrs=EmbeddingAttrs(num_embeddings=config.max_position_embeddings, dim=d),
        ), INPUT_ID)
        stream = self.add(OpNode(
            id="model.embed_add", op=OpType.ADD, in_shapes=(self.hidden, self.hidden), out_shape=self.hidden, flops=d,
            attrs=AddAttrs(merge_point=EMBEDDING_MERGE),
        ), stream, positions)
        return stream, None

    def layer(self, i: int, stream: str, rope: str | None) -> tuple[str, str | None]:
        """One pre-norm decoder layer; returns (residual stream, router feeding the aux loss or None)."""
        prefix = f"model.layers.{i}"
        normed = self.norm(f"{prefix}.input_layernorm", stream, i, "input")
        attn_out = self.attention(f"{prefix}.self_attn", normed, i, rope)
        stream = self.residual(f"{prefix}.attn_residual", stream, attn_out, i, ATTENTION_MERGE)
        normed = self.norm(f"{prefix}.post_attention_layernorm", stream, i, "post_attention")
        router = None
        if self.config.moe is None:
            mlp_out = self.glu_mlp(f"{prefix}.mlp", normed, self.config.mlp_hidden, i, "dense")
        else:
            mlp_out = self.moe_mlp(f"{prefix}.mlp", normed, i)
            router = f"{prefix}.mlp.gate" if self.config.moe.aux_loss else None
        return self.residual(f"{prefix}.mlp_residual", stream, mlp_out, i, MLP_MERGE), router

    def head(self, stream: str, aux_sources: list[str]) -> None:
        """Final norm, lm_head, the aux loss of the routers, and the output node."""
        config = self.config
        d, tied = config.d_model, config.tie_word_embeddings
        normed = self.norm("model.norm", stream, None, "final")
        rows = None if tied else self.token_rows("lm_head")
        logits = self.add(OpNode(
            id="lm_head", op=OpType.LM_HEAD, in_shapes=(self.hidden,) + ((node(self.graph, rows).out_shape,) if rows else ()),
            out_shape=shape("B", "T", config.vocab_size),
            params=0 if tied else config.vocab_size * d, flops=2 * d * config.vocab_size,
            role=ParamRole.EMBEDDING if tied else ParamRole.HEAD, tied_to="model.embed_tokens" if tied else None,
            attrs=LMHeadAttrs(in_features=d, out_features=config.vocab_size, tied=tied, weight_elements=config.vocab_size * d),
        ), normed)
        if rows:
            self.edge(rows, logits, EdgeKind.ADAPTER)
        outputs = [logits]
        if aux_sources:
            assert config.moe is not None
            outputs.append(self.add(OpNode(
                id="aux_loss", op=OpType.AUX_LOSS, in_shapes=tuple(shape("B", "T", config.moe.num_experts) for _ in aux_sources),
                out_shape=shape(), attrs=AuxLossAttrs(weight=config.moe.aux_loss_weight, layers=len(aux_sources)),
            ), *aux_sources, kind=EdgeKind.AUX))
        self.add(OpNode(id=OUTPUT_ID, op=OpType.OUTPUT, in_shapes=tuple(node(self.graph, s).out_shape for s in outputs),
                        out_shape=shape("B", "T", config.vocab_size), attrs=OutputAttrs()), *outputs)

    def build(self) -> nx.DiGraph:
        stream, rope = self.embeddings()
        aux_sources = []
        for i in range(self.config.n_layers):
            stream, router = self.layer(i, stream, rope)
            if router is not None:
                aux_sources.append(router)
        self.head(stream, aux_sources)
        return self.graph


def build_graph(resolved: ResolvedSpec) -> nx.DiGraph:
    """The module graph of a resolved spec; `graph.graph` holds its `name` and `variant`."""
    graph = _GraphBuilder(resolved.model).build()
    graph.graph["name"] = resolved.name
    graph.graph["variant"] = resolved.variant
    return graph


def graph_to_json(graph: nx.DiGraph) -> dict[str, Any]:
    """Node-link JSON of the graph."""
    out_nodes = []
    for op_node in nodes(graph):
        data = {name: getattr(op_node, name) for name in ("id", "op", "out_shape", "in_shapes", "params", "flops", "layer",
                                                           "role", "token_fraction", "tied_to")}
        data["op"] = str(op_node.op)
        data["role"] = str(op_node.role) if op_node.role else None
        data["in_shapes"] = list(op_node.in_shapes)
        data["attrs"] = attrs_dict(op_node.attrs)
        out_nodes.append(data)
    edges = [{"source": u, "target": v, "shape": data["shape"], "kind": str(data["kind"])} for u, v, data in graph.edges(data=True)]
    return {"directed": True, "name": graph.graph.get("name"), "variant": graph.graph.get("variant"),
            "nodes": out_nodes, "edges": edges}

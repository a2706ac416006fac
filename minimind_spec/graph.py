"""Build the module graph (a networkx.DiGraph) from a `ResolvedSpec`.

One node per op. Node ids that own parameters are the qualified names of the compiled
model's submodules, Hugging Face Llama style (`model.layers.0.self_attn.q_proj`), so the
graph and the `nn.Module` can be compared name for name. Every node carries an `OpNode`
under the key "node": op type, typed attributes, symbolic shapes such as `(B, T, 512)`,
parameter count and forward FLOPs per token. Edges carry the shape that flows along them
and a kind: "data", "residual", "adapter" (LoRA), "routing" (router -> MoE combine) or "aux".

The same graph serves build reports, checks, rendering, diffs and the compiler.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

import networkx as nx

from .resolved import ModelConfig, ResolvedSpec

INPUT_ID = "input_ids"
OUTPUT_ID = "output"


class OpType(StrEnum):
    INPUT = "input"
    EMBEDDING = "embedding"
    POSITION_EMBEDDING = "position_embedding"
    ROPE = "rope"
    RMSNORM = "rmsnorm"
    LAYERNORM = "layernorm"
    LINEAR = "linear"
    ATTENTION = "attention"
    ADD = "add"  # merge point: residual add
    GLU = "glu"  # act(gate) * up
    ROUTER = "router"
    MOE_COMBINE = "moe_combine"  # merge point: gate-weighted sum of expert outputs
    AUX_LOSS = "aux_loss"
    LM_HEAD = "lm_head"
    LORA = "lora"
    OUTPUT = "output"


MERGE_OPS = {OpType.ADD, OpType.MOE_COMBINE}


@dataclass(frozen=True)
class OpNode:
    """One op of the graph. `flops` are forward FLOPs per token (multiply-add = 2)."""

    id: str
    op: OpType
    out_shape: str
    in_shapes: tuple[str, ...] = ()
    params: int = 0
    flops: int = 0
    layer: int | None = None
    attrs: dict[str, Any] = field(default_factory=dict)
    tied_to: str | None = None  # id of the node whose weight this one shares
    trainable: bool = True

    @property
    def short_name(self) -> str:
        """The id without the layer prefix, e.g. 'self_attn.q_proj'."""
        if self.layer is None:
            return self.id
        return self.id.split(f"layers.{self.layer}.", 1)[1]


def shape(*dims: int | str) -> str:
    return "(" + ", ".join(str(d) for d in dims) + ")"


def node(graph: nx.DiGraph, node_id: str) -> OpNode:
    """The typed `OpNode` of a graph node."""
    return graph.nodes[node_id]["node"]


def nodes(graph: nx.DiGraph) -> list[OpNode]:
    """All `OpNode`s in insertion (topological build) order."""
    return [data["node"] for _, data in graph.nodes(data=True)]


class _GraphBuilder:
    def __init__(self, config: ModelConfig) -> None:
        self.c = config
        self.g = nx.DiGraph()
        self.hidden = shape("B", "T", config.d_model)
        self.frozen_base = config.lora is not None

    def add(self, op_node: OpNode, *inputs: str, kind: str = "data") -> str:
        trainable = op_node.op == OpType.LORA or not self.frozen_base
        if op_node.trainable != trainable and op_node.params:
            op_node = OpNode(**{**op_node.__dict__, "trainable": trainable})
        self.g.add_node(op_node.id, node=op_node)
        for src in inputs:
            self.g.add_edge(src, op_node.id, shape=node(self.g, src).out_shape, kind=kind)
        return op_node.id

    def edge(self, src: str, dst: str, kind: str) -> None:
        self.g.add_edge(src, dst, shape=node(self.g, src).out_shape, kind=kind)

    def linear(self, node_id: str, src: str, n_in: int, n_out: int, layer: int, role: str, fraction: float = 1.0) -> str:
        """A bias-free projection, with a LoRA adapter when its role is a LoRA target."""
        in_shape, out_shape = node(self.g, src).out_shape, shape("B", "T", n_out)
        params = n_in * n_out
        attrs = {"in_features": n_in, "out_features": n_out, "bias": False, "role": role}
        if fraction != 1.0:
            attrs["expected_token_fraction"] = fraction
        lora = self.c.lora
        adapter = None
        if lora is not None and role in lora.targets:
            lora_params = lora.rank * (n_in + n_out)
            adapter = self.add(OpNode(
                id=f"{node_id}.lora", op=OpType.LORA, in_shapes=(in_shape,), out_shape=out_shape, params=lora_params,
                flops=round(2 * lora_params * fraction), layer=layer,
                attrs={"rank": lora.rank, "alpha": lora.alpha, "scaling": lora.scaling, "dropout": lora.dropout,
                       "target": node_id, "in_features": n_in, "out_features": n_out},
            ), src, kind="adapter")
        in_shapes = (in_shape, out_shape) if adapter else (in_shape,)
        self.add(OpNode(id=node_id, op=OpType.LINEAR, in_shapes=in_shapes, out_shape=out_shape, params=params,
                        flops=round(2 * params * fraction), layer=layer, attrs=attrs), src)
        if adapter:
            self.edge(adapter, node_id, "adapter")
        return node_id

    def norm(self, node_id: str, src: str, layer: int | None) -> str:
        d, is_rms = self.c.d_model, self.c.norm == "RMSNorm"
        return self.add(OpNode(
            id=node_id, op=OpType.RMSNORM if is_rms else OpType.LAYERNORM, in_shapes=(self.hidden,), out_shape=self.hidden,
            params=d if is_rms else 2 * d, flops=(4 if is_rms else 7) * d, layer=layer,
            attrs={"dim": d, "eps": self.c.norm_eps},
        ), src)

    def residual(self, node_id: str, stream: str, branch: str, layer: int, point: str) -> str:
        node_id = self.add(OpNode(
            id=node_id, op=OpType.ADD, in_shapes=(self.hidden, self.hidden), out_shape=self.hidden,
            flops=self.c.d_model, layer=layer, attrs={"merge_point": point, "sd_prob": self.c.sd_prob, "dropout": self.c.dropout},
        ), stream, kind="residual")
        self.edge(branch, node_id, "data")
        return node_id

    def glu_mlp(self, prefix: str, src: str, hidden: int, layer: int, fraction: float = 1.0) -> str:
        d = self.c.d_model
        gate = self.linear(f"{prefix}.gate_proj", src, d, hidden, layer, "gate_proj", fraction)
        up = self.linear(f"{prefix}.up_proj", src, d, hidden, layer, "up_proj", fraction)
        hidden_shape = shape("B", "T", hidden)
        act = self.add(OpNode(
            id=f"{prefix}.act", op=OpType.GLU, in_shapes=(hidden_shape, hidden_shape), out_shape=hidden_shape,
            flops=round(5 * hidden * fraction), layer=layer,
            attrs={"activation": self.c.activation, "hidden": hidden} | ({"expected_token_fraction": fraction} if fraction != 1.0 else {}),
        ), gate, up)
        return self.linear(f"{prefix}.down_proj", act, hidden, d, layer, "down_proj", fraction)

    def moe_mlp(self, prefix: str, src: str, layer: int) -> str:
        moe, d = self.c.moe, self.c.d_model
        assert moe is not None
        router = self.add(OpNode(
            id=f"{prefix}.gate", op=OpType.ROUTER, in_shapes=(self.hidden,), out_shape=shape("B", "T", moe.num_experts),
            params=moe.num_experts * d, flops=2 * moe.num_experts * d, layer=layer,
            attrs={"num_experts": moe.num_experts, "top_k": moe.top_k, "norm_topk_prob": moe.norm_topk_prob,
                   "aux_loss": moe.aux_loss, "aux_loss_weight": moe.aux_loss_weight},
        ), src)
        fraction = moe.top_k / moe.num_experts
        outputs = [self.glu_mlp(f"{prefix}.experts.{e}", src, moe.expert_hidden, layer, fraction) for e in range(moe.num_experts)]
        outputs += [self.glu_mlp(f"{prefix}.shared_experts.{s}", src, moe.expert_hidden, layer) for s in range(moe.num_shared_experts)]
        combine = self.add(OpNode(
            id=f"{prefix}.combine", op=OpType.MOE_COMBINE,
            in_shapes=(shape("B", "T", moe.num_experts), self.hidden), out_shape=self.hidden,
            flops=2 * (moe.top_k + moe.num_shared_experts) * d, layer=layer,
            attrs={"merge_point": "moe_experts -> mlp_output", "op": "gate", "top_k": moe.top_k,
                   "num_experts": moe.num_experts, "num_shared_experts": moe.num_shared_experts},
        ), *outputs)
        self.edge(router, combine, "routing")
        return combine

    def build(self) -> nx.DiGraph:
        c = self.c
        d, hd = c.d_model, c.head_dim
        self.add(OpNode(id=INPUT_ID, op=OpType.INPUT, out_shape=shape("B", "T"), attrs={"dtype": "int64"}))
        stream = self.add(OpNode(
            id="model.embed_tokens", op=OpType.EMBEDDING, in_shapes=(shape("B", "T"),), out_shape=self.hidden,
            params=c.vocab_size * d, attrs={"num_embeddings": c.vocab_size, "dim": d},
        ), INPUT_ID)
        rope = None
        if c.positional_encoding == "RoPE":
            rope = self.add(OpNode(
                id="model.rotary_emb", op=OpType.ROPE, in_shapes=(shape("B", "T"),), out_shape=shape("T", hd),
                attrs={"theta": c.rope_theta, "head_dim": hd, "scaling": c.rope_scaling.kind, "factor": c.rope_scaling.factor,
                       "max_position_embeddings": c.max_position_embeddings},
            ), INPUT_ID)
        else:
            pos = self.add(OpNode(
                id="model.embed_positions", op=OpType.POSITION_EMBEDDING, in_shapes=(shape("B", "T"),), out_shape=self.hidden,
                params=c.max_position_embeddings * d, attrs={"num_embeddings": c.max_position_embeddings, "dim": d},
            ), INPUT_ID)
            stream = self.add(OpNode(
                id="model.embed_add", op=OpType.ADD, in_shapes=(self.hidden, self.hidden), out_shape=self.hidden, flops=d,
                attrs={"merge_point": "embedding_output"},
            ), stream, pos)

        aux_sources = []
        for i in range(c.n_layers):
            p = f"model.layers.{i}"
            normed = self.norm(f"{p}.input_layernorm", stream, i)
            q = self.linear(f"{p}.self_attn.q_proj", normed, d, c.n_heads * hd, i, "q_proj")
            k = self.linear(f"{p}.self_attn.k_proj", normed, d, c.n_kv_heads * hd, i, "k_proj")
            v = self.linear(f"{p}.self_attn.v_proj", normed, d, c.n_kv_heads * hd, i, "v_proj")
            qkv_in = (q, k, v) + ((rope,) if rope else ())
            attn = self.add(OpNode(
                id=f"{p}.self_attn.attention", op=OpType.ATTENTION,
                in_shapes=tuple(node(self.g, s).out_shape for s in qkv_in), out_shape=shape("B", "T", c.n_heads * hd),
                flops=4 * c.seq_len * c.n_heads * hd, layer=i,
                attrs={"n_heads": c.n_heads, "n_kv_heads": c.n_kv_heads, "head_dim": hd, "causal": True,
                       "dropout": c.dropout, "backend": c.attention_backend, "flops_context": c.seq_len},
            ), *qkv_in)
            o = self.linear(f"{p}.self_attn.o_proj", attn, c.n_heads * hd, d, i, "o_proj")
            stream = self.residual(f"{p}.attn_residual", stream, o, i, "attention_output -> mlp_input")
            normed = self.norm(f"{p}.post_attention_layernorm", stream, i)
            if c.moe is None:
                mlp_out = self.glu_mlp(f"{p}.mlp", normed, c.mlp_hidden, i)
            else:
                mlp_out = self.moe_mlp(f"{p}.mlp", normed, i)
                if c.moe.aux_loss:
                    aux_sources.append(f"{p}.mlp.gate")
            stream = self.residual(f"{p}.mlp_residual", stream, mlp_out, i, "mlp_output -> layer_output")

        normed = self.norm("model.norm", stream, None)
        tied = c.tie_word_embeddings
        logits = self.add(OpNode(
            id="lm_head", op=OpType.LM_HEAD, in_shapes=(self.hidden,), out_shape=shape("B", "T", c.vocab_size),
            params=0 if tied else c.vocab_size * d, flops=2 * d * c.vocab_size,
            attrs={"in_features": d, "out_features": c.vocab_size, "tied": tied, "weight_elements": c.vocab_size * d},
            tied_to="model.embed_tokens" if tied else None,
        ), normed)
        outputs = [logits]
        if aux_sources:
            assert c.moe is not None
            aux = self.add(OpNode(
                id="aux_loss", op=OpType.AUX_LOSS, in_shapes=tuple(shape("B", "T", c.moe.num_experts) for _ in aux_sources),
                out_shape=shape(), attrs={"weight": c.moe.aux_loss_weight, "layers": len(aux_sources)},
            ), *aux_sources, kind="aux")
            outputs.append(aux)
        self.add(OpNode(id=OUTPUT_ID, op=OpType.OUTPUT, in_shapes=tuple(node(self.g, s).out_shape for s in outputs),
                        out_shape=shape("B", "T", c.vocab_size)), *outputs)
        return self.g


def build_graph(resolved: ResolvedSpec) -> nx.DiGraph:
    """The module graph of a resolved spec; `graph.graph['resolved']` keeps the spec it came from."""
    graph = _GraphBuilder(resolved.model).build()
    graph.graph["name"] = resolved.name
    graph.graph["variant"] = resolved.variant
    graph.graph["resolved"] = resolved
    return graph


def graph_to_json(graph: nx.DiGraph) -> dict[str, Any]:
    """Node-link JSON of the graph (without the resolved spec object)."""
    out_nodes = []
    for op_node in nodes(graph):
        data = {k: v for k, v in op_node.__dict__.items()}
        data["op"] = str(op_node.op)
        data["in_shapes"] = list(op_node.in_shapes)
        out_nodes.append(data)
    edges = [{"source": u, "target": v, **data} for u, v, data in graph.edges(data=True)]
    return {"directed": True, "name": graph.graph.get("name"), "variant": graph.graph.get("variant"),
            "nodes": out_nodes, "edges": edges}

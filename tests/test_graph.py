"""Module graph: one node per op, hand-counted parameters and FLOPs, invariants and checks."""

from __future__ import annotations

import networkx as nx
import pytest

from minimind_spec import build_graph, load_spec, resolve
from minimind_spec.graph import EdgeKind, OpNode, OpType, check_graph, graph_costs, node, nodes
from minimind_spec.graph.ir import LinearAttrs

from .conftest import SPEC

V, D, L, H = 6400, 512, 8, 1536  # the card: vocab, d_model, layers, MLP hidden (mlp_ratio 3 x 512)


def graph_of(path, variant=None):
    return build_graph(resolve(load_spec(path), variant))


def costs_of(path, variant=None):
    resolved = resolve(load_spec(path), variant)
    return graph_costs(build_graph(resolved), resolved.model)


@pytest.fixture(scope="module")
def card_graph():
    return graph_of(SPEC)


@pytest.fixture(scope="module")
def card_costs():
    return costs_of(SPEC)


def test_card_parameters_by_hand(card_costs):
    costs = card_costs
    per_layer = 4 * D * D + 3 * D * H + 2 * D  # attention + SwiGLU + two RMSNorms
    base = V * D + L * per_layer + D  # tied lm_head adds nothing
    lora = L * (4 * 8 * (D + D) + 2 * 8 * (D + H) + 8 * (H + D))
    assert costs.total_params == base + lora == 31_203_840
    assert costs.lora_params == lora == 655_360
    assert costs.trainable_params == lora and costs.frozen_params == base


def test_card_flops_by_hand(card_costs):
    T = 1024
    linear = 2 * (4 * D * D + 3 * D * H)
    attention = 4 * T * D
    norms_adds_act = 2 * 4 * D + 2 * D + 5 * H
    lora = 2 * (4 * 8 * (D + D) + 2 * 8 * (D + H) + 8 * (H + D))
    expected = L * (linear + attention + norms_adds_act + lora) + 4 * D + 2 * D * V
    assert card_costs.flops_per_token == expected


def test_kv_cache_bytes_by_hand(card_costs):
    assert card_costs.kv_cache_bytes_per_token == 2 * L * 8 * 64 * 2  # k and v, bf16


def test_one_node_per_op_with_hf_names(card_graph):
    ids = set(card_graph.nodes)
    for i in range(L):
        for name in ("input_layernorm", "self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
                     "self_attn.attention", "attn_residual", "post_attention_layernorm", "mlp.gate_proj", "mlp.up_proj",
                     "mlp.act", "mlp.down_proj", "mlp_residual"):
            assert f"model.layers.{i}.{name}" in ids
    assert {"input_ids", "model.embed_tokens", "model.rotary_emb", "model.norm", "lm_head", "output"} <= ids


def test_nodes_carry_symbolic_shapes(card_graph):
    assert node(card_graph, "model.embed_tokens").out_shape == "(B, T, 512)"
    assert node(card_graph, "lm_head").out_shape == "(B, T, 6400)"
    assert node(card_graph, "model.layers.0.mlp.up_proj").out_shape == "(B, T, 1536)"
    assert node(card_graph, "model.rotary_emb").out_shape == "(T, 64)"


def test_lora_adapters_attach_to_their_projections(card_graph):
    adapters = [n for n in nodes(card_graph) if n.op == OpType.LORA]
    assert len(adapters) == 7 * L
    for adapter in adapters:
        target = adapter.attrs.target
        assert adapter.id == f"{target}.lora"
        assert card_graph.edges[adapter.id, target]["kind"] == EdgeKind.ADAPTER


def test_invariants_hold_for_every_shipped_variant():
    for variant in (None, "MoE", "Flash Attention"):
        graph = graph_of(SPEC, variant)
        assert check_graph(graph) == []
        assert nx.is_directed_acyclic_graph(graph)
        assert [n for n, d in graph.in_degree() if d == 0] == ["input_ids"]
        assert [n for n, d in graph.out_degree() if d == 0] == ["output"]


def test_moe_graph_by_hand():
    graph = graph_of(SPEC, "MoE")
    router = node(graph, "model.layers.0.mlp.gate")
    assert router.op == OpType.ROUTER and router.params == 8 * D
    assert node(graph, "model.layers.0.mlp.combine").op == OpType.MOE_COMBINE
    assert all(f"model.layers.0.mlp.experts.{e}.down_proj" in graph for e in range(8))
    assert set(graph.predecessors("aux_loss")) == {f"model.layers.{i}.mlp.gate" for i in range(L)}
    expert = 3 * D * H
    per_layer = 4 * D * D + 8 * D + 8 * expert + 2 * D
    costs = costs_of(SPEC, "MoE")
    assert costs.total_params - costs.lora_params == V * D + L * per_layer + D
    # expected FLOPs of one expert projection: top_k / num_experts of its dense cost
    assert node(graph, "model.layers.0.mlp.experts.0.up_proj").flops == 2 * D * H * 2 // 8


def test_gqa_untied_layernorm_absolute(write_spec):
    path = write_spec(
        backbone={"positional_encoding": "Absolute", "norm": "LayerNorm"},
        hyperparams={"n_kv_heads": 2, "tie_word_embeddings": False},
    )
    graph = graph_of(path)
    d, hd, vocab, seq, hidden = 64, 16, 128, 32, 192
    assert node(graph, "model.layers.0.self_attn.k_proj").params == d * 2 * hd
    assert node(graph, "lm_head").params == vocab * d and node(graph, "lm_head").tied_to is None
    assert node(graph, "model.layers.0.input_layernorm").op == OpType.LAYERNORM
    assert "model.rotary_emb" not in graph
    expected = vocab * d + seq * d + 2 * (2 * d * d + 2 * d * 2 * hd + 3 * d * hidden + 2 * 2 * d) + 2 * d + vocab * d
    assert costs_of(path).total_params == expected
    assert check_graph(graph) == []


def test_node_count_grows_linearly_with_layers(write_spec):
    counts = [graph_of(write_spec(hyperparams={"n_layers": n}, name=f"l{n}.json")).number_of_nodes() for n in (8, 64, 512)]
    per_layer = (counts[1] - counts[0]) / 56
    assert per_layer == (counts[2] - counts[1]) / 448 == 13


def test_check_graph_catches_a_cycle_and_a_shape_mismatch(card_graph):
    broken = card_graph.copy()
    broken.add_edge("model.norm", "model.embed_tokens", shape="(B, T, 512)", kind=EdgeKind.DATA)
    assert any("cycle" in p.message for p in check_graph(broken))
    bad = card_graph.copy()
    old = node(bad, "model.layers.0.self_attn.o_proj")
    bad.nodes[old.id]["node"] = OpNode(**{**old.__dict__, "out_shape": "(B, T, 256)"})
    for u, v, data in bad.out_edges(old.id, data=True):
        data["shape"] = "(B, T, 256)"
    messages = [p.message for p in check_graph(bad)]
    assert any("merge point joins shapes" in m for m in messages)


def test_check_graph_catches_a_second_output(card_graph):
    bad = card_graph.copy()
    bad.add_node("stray", node=OpNode(id="stray", op=OpType.LINEAR, out_shape="(B, T, 512)", in_shapes=("(B, T, 512)",),
                                      attrs=LinearAttrs(512, 512, "q_proj")))
    bad.add_edge("model.norm", "stray", shape="(B, T, 512)", kind=EdgeKind.DATA)
    assert any("exactly one output" in p.message for p in check_graph(bad))

"""Semantic diff: spec fields with provenance, graph changes grouped across layers, costs, exit codes."""

from __future__ import annotations

import json

from typer.testing import CliRunner

from minimind_spec.cli import app
from minimind_spec.diff import diff_specs, format_text, pattern

from .conftest import SPEC, TINY
from .mermaid_parser import needs_mermaid, parse_mermaid

runner = CliRunner()
D, LAYERS = TINY["hyperparams"]["d_model"], TINY["hyperparams"]["n_layers"]


def test_pattern_replaces_layer_and_expert_indices() -> None:
    assert pattern("model.layers.13.mlp.experts.7.up_proj.lora") == "model.layers.*.mlp.experts.*.up_proj.lora"
    assert pattern("model.layers.2.self_attn.q_proj") == "model.layers.*.self_attn.q_proj"
    assert pattern("model.norm") == "model.norm"


def test_a_spec_against_itself_is_identical(write_spec) -> None:
    path = write_spec()
    result = diff_specs(path, path)
    assert result.identical and not result.fields and not result.nodes and all(c.delta == 0 for c in result.costs)
    cli = runner.invoke(app, ["diff", str(path), str(path)])
    assert cli.exit_code == 0 and "identical" in cli.output


def test_a_default_set_explicitly_shows_as_such(write_spec) -> None:
    a = write_spec(name="a.json")
    b = write_spec(name="b.json", hyperparams={**TINY["hyperparams"], "rope_theta": 1_000_000.0})
    result = diff_specs(a, b)
    assert [(f.path, f.old, f.new, f.old_source, f.new_source) for f in result.fields] == \
        [("/hyperparams/rope_theta", 1_000_000.0, 1_000_000.0, "default", "spec")]
    assert not result.nodes and result.identical  # the same model: writing a default out is not a change
    text = format_text(result)
    assert "identical" in text and "rope_theta: 1000000" not in text
    c = write_spec(name="c.json", hyperparams={**TINY["hyperparams"], "rope_theta": 1_000_000.0, "n_layers": 3})
    text = format_text(diff_specs(a, c))
    assert "spec fields: 1 changed" in text and "/hyperparams/n_layers: 2 (spec) -> 3 (spec)" in text
    assert "same value, only its source differs (spec <-> default): /hyperparams/rope_theta" in text


def test_norm_change_is_grouped_across_layers_with_its_cost(write_spec) -> None:
    a = write_spec(name="a.json")
    b = write_spec(name="b.json", backbone={**TINY["backbone"], "norm": "LayerNorm"})
    result = diff_specs(a, b)
    assert [(f.path, f.old, f.new) for f in result.fields] == [("/backbone/norm", "RMSNorm", "LayerNorm")]
    groups = {(c.pattern, c.change): c for c in result.nodes}
    assert set(groups) == {("model.layers.*.input_layernorm", "changed"), ("model.layers.*.post_attention_layernorm", "changed"),
                           ("model.norm", "changed")}
    layer_norms = groups[("model.layers.*.input_layernorm", "changed")]
    assert layer_norms.count == LAYERS and layer_norms.detail.startswith("rmsnorm -> layernorm")
    total = next(c for c in result.costs if c.name == "total params")
    assert total.delta == (2 * LAYERS + 1) * D  # LayerNorm adds a bias of d_model to each of the 2 per layer + final norm
    text = format_text(result)
    assert f"~ model.layers.*.input_layernorm ({LAYERS} nodes): rmsnorm -> layernorm; params {D} -> {2 * D}" in text


def test_variant_switch_adds_experts_and_router(write_spec) -> None:
    path = write_spec()
    result = diff_specs(path, path, None, "MoE")
    added = {c.pattern for c in result.nodes if c.change == "added"}
    removed = {c.pattern for c in result.nodes if c.change == "removed"}
    assert {"model.layers.*.mlp.gate", "model.layers.*.mlp.combine", "model.layers.*.mlp.experts.*.up_proj"} <= added
    assert "model.layers.*.mlp.up_proj" in removed
    experts = next(c for c in result.nodes if c.pattern == "model.layers.*.mlp.experts.*.up_proj")
    assert experts.count == LAYERS * 8  # 8 experts by default, in every layer
    assert result.b.variant == "MoE" and not result.identical


def test_json_output_and_exit_codes(write_spec, tmp_path) -> None:
    a = write_spec(name="a.json")
    b = write_spec(name="b.json", hyperparams={**TINY["hyperparams"], "n_heads": 8})
    cli = runner.invoke(app, ["diff", str(a), str(b), "--json"])
    assert cli.exit_code == 1
    data = json.loads(cli.stdout)
    assert data["identical"] is False
    assert data["fields"] == [{"path": "/hyperparams/n_heads", "old": 4, "new": 8, "old_source": "spec", "new_source": "spec",
                               "value_changed": True}]
    assert {"model.layers.*.self_attn.attention"} <= {n["pattern"] for n in data["nodes"]}
    assert {c["name"] for c in data["costs"]} >= {"total params", "trainable params", "FLOPs / token", "KV cache / token", "activations"}
    broken = tmp_path / "broken.json"
    broken.write_text("{", encoding="utf-8")
    bad = runner.invoke(app, ["diff", str(a), str(broken)])
    assert bad.exit_code == 2 and "JSON syntax error" in bad.output
    assert runner.invoke(app, ["diff", str(a), str(a), "--variant-b", "Sparse"]).exit_code == 2


@needs_mermaid
def test_mermaid_diff_highlights_the_changed_nodes(write_spec) -> None:
    a = write_spec(name="a.json")
    b = write_spec(name="b.json", backbone={**TINY["backbone"], "positional_encoding": "Absolute"})
    cli = runner.invoke(app, ["diff", str(a), str(b), "--format", "mermaid"])
    assert cli.exit_code == 1
    text = cli.stdout
    changed = next(line for line in text.splitlines() if line.strip().startswith("class ") and line.endswith(" changed"))
    marked = set(changed.split()[1].split(","))
    # the new position embedding and its add, and the attention that lost its RoPE input
    assert marked == {"n_model_embed_positions", "n_model_embed_add", "n_model_layers_0_self_attn_attention"}
    assert "model.rotary_emb" in text and "removed (only in the old spec)" in text
    assert parse_mermaid({"diff": text})["diff"]["ok"]


def test_a_change_in_one_layer_keeps_its_concrete_id() -> None:
    text = format_text(diff_specs(SPEC, SPEC.parent / "ablations" / "absolute_pe.json"))
    assert "edge model.embed_tokens -> model.layers.0.attn_residual [residual]" in text
    assert "layers.*.attn_residual" not in text


def test_nested_values_print_as_json_never_a_python_repr(write_spec) -> None:
    a = write_spec(name="a.json")
    modules = [{"name": f"block {i}", "type": "Linear Projection", "params": 1000 * i, "notes": "x" * 30} for i in range(3)]
    b = write_spec(name="b.json", modules=modules)
    text = format_text(diff_specs(a, b))
    line = next(line for line in text.splitlines() if line.startswith("  /modules"))
    assert len(line) < 120 and "{'" not in text  # long lists go one element per line, as JSON
    assert '{"name": "block 1", "type": "Linear Projection", "params": 1000' in text

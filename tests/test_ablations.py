"""The six ablations of the card's section E: each extends the base, compiles, and diffs as described.

Expected numbers are worked out by hand from the base spec's dimensions (d_model 512,
mlp_ratio 3, 8 layers, LoRA on all seven projections), not copied from the tool's output.
"""

from __future__ import annotations

import json
import re

import pytest
from typer.testing import CliRunner

from minimind_spec.cli import app
from minimind_spec.diff import SpecDiff, diff_specs
from minimind_spec.graph import build_graph
from minimind_spec.graph import graph_costs
from minimind_spec.loader import load_spec
from minimind_spec.resolve import resolve

from .conftest import CARD, ROOT, SPEC, needs_card

ABLATIONS = ROOT / "spec" / "ablations"
NAMES = ["lora_rank4", "layernorm", "absolute_pe", "moe_no_aux_loss", "dpo_beta_0.5", "no_reasoning_masking"]
D, HIDDEN, LAYERS, SEQ_LEN = 512, 3 * 512, 8, 1024
runner = CliRunner()


def lora_params(rank: int) -> int:
    """LoRA adds rank * (in + out) per adapted projection: q, k, v, o (512 -> 512) and gate, up (512 -> 1536), down (1536 -> 512)."""
    return LAYERS * rank * (4 * (D + D) + 3 * (D + HIDDEN))


def diff(name: str) -> SpecDiff:
    return diff_specs(SPEC, ABLATIONS / f"{name}.json")


def cost(result: SpecDiff, name: str) -> tuple[int, int]:
    c = next(c for c in result.costs if c.name == name)
    return c.old, c.new


def field_paths(result: SpecDiff) -> list[str]:
    return [f.path for f in result.fields]


def test_the_six_ablations_ship_and_extend_the_base() -> None:
    assert sorted(p.stem for p in ABLATIONS.glob("*.json")) == sorted(NAMES)
    for name in NAMES:
        raw = json.loads((ABLATIONS / f"{name}.json").read_text(encoding="utf-8"))
        assert raw["extends"] == "../minimind.json"
        spec = load_spec(ABLATIONS / f"{name}.json")
        assert spec.ablation is not None and spec.ablation.name == name
        assert [p.name for p in spec.origin.chain] == [f"{name}.json", "minimind.json"]


@needs_card
def test_expected_effects_are_the_cards_words() -> None:
    bullets = re.findall(r"^- \*\*(.+?)\*\*: (.+)$", CARD.read_text(encoding="utf-8").split("### E)")[1], re.MULTILINE)
    assert len(bullets) == 6
    effects = {load_spec(ABLATIONS / f"{n}.json").ablation.expected_effect.lower() for n in NAMES}
    for title, effect in bullets:
        assert any(e.startswith(f"{title.lower()}: {effect.lower()}") for e in effects), title


def test_lora_rank4_halves_the_lora_parameters() -> None:
    result = diff("lora_rank4")
    assert [(f.path, f.old, f.new) for f in result.fields] == [("/techniques/lora/rank", 8, 4)]
    assert cost(result, "LoRA params") == (lora_params(8), lora_params(4)) == (655_360, 327_680)
    old, new = cost(result, "trainable params")
    assert (old, new) == (lora_params(8), lora_params(4)) and new * 2 == old
    assert cost(result, "frozen params")[0] == cost(result, "frozen params")[1]
    assert {c.pattern for c in result.nodes} == {f"model.layers.*.{p}.lora" for p in
                                                  ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
                                                   "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj")}
    assert all(c.change == "changed" and c.count == LAYERS and "rank 8 -> 4" in c.detail for c in result.nodes)


def test_layernorm_swaps_every_norm_and_adds_biases() -> None:
    result = diff("layernorm")
    assert [(f.path, f.old, f.new) for f in result.fields] == [("/backbone/norm", "RMSNorm", "LayerNorm")]
    assert sorted((c.pattern, c.count) for c in result.nodes) == [
        ("model.layers.*.input_layernorm", LAYERS), ("model.layers.*.post_attention_layernorm", LAYERS), ("model.norm", 1)]
    assert all(c.detail.startswith("rmsnorm -> layernorm") for c in result.nodes)
    old, new = cost(result, "total params")
    assert new - old == (2 * LAYERS + 1) * D


def test_absolute_pe_replaces_rope_with_a_position_table() -> None:
    result = diff("absolute_pe")
    assert field_paths(result) == ["/backbone/positional_encoding", "/tricks"]
    tricks = result.fields[1]
    assert set(tricks.old) - set(tricks.new) == {"rope-scaling"} and not set(tricks.new) - set(tricks.old)
    changes = {(c.pattern, c.change) for c in result.nodes}
    assert {("model.rotary_emb", "removed"), ("model.embed_positions", "added"), ("model.embed_add", "added")} <= changes
    old, new = cost(result, "total params")
    assert new - old == SEQ_LEN * D  # one learned vector per position up to seq_len
    assert cost(result, "KV cache / token")[0] == cost(result, "KV cache / token")[1]


def test_moe_without_aux_loss_is_compared_against_the_moe_variant() -> None:
    result = diff("moe_no_aux_loss")
    assert result.a.variant == result.b.variant == "MoE" and result.notes
    assert field_paths(result) == ["/backbone/build_variant", "/moe/aux_loss", "/tricks"]
    assert [(r.key, r.old, r.new) for r in result.resolved] == [("model.moe.aux_loss", True, False)]
    groups = {(c.pattern, c.change): c for c in result.nodes}
    assert ("aux_loss", "removed") in groups
    assert groups[("model.layers.*.mlp.gate", "changed")].count == LAYERS
    assert "aux_loss true -> false" in groups[("model.layers.*.mlp.gate", "changed")].detail
    assert not any(c.change == "added" for c in result.nodes)
    assert all(c.delta == 0 for c in result.costs)  # the loss has no parameters and no per-token FLOPs here


@pytest.mark.parametrize(("name", "path", "old", "new"), [
    ("dpo_beta_0.5", "/techniques/dpo/beta", 0.1, 0.5),
    ("no_reasoning_masking", "/techniques/distill/reasoning_token_masking", None, False),
])
def test_training_only_ablations_leave_the_graph_alone(name: str, path: str, old, new) -> None:
    result = diff(name)
    assert (result.fields[0].path, result.fields[0].old, result.fields[0].new) == (path, old, new)
    assert not result.nodes and not result.edges
    assert all(c.delta == 0 for c in result.costs)
    assert not result.identical
    if name == "no_reasoning_masking":
        assert field_paths(result) == [path, "/tricks"]
        assert [(r.key, r.old, r.new) for r in result.resolved] == [("training.distill.reasoning_token_masking", True, False)]
    else:
        assert field_paths(result) == [path] and not result.resolved


@pytest.mark.parametrize("name", NAMES)
def test_every_ablation_diff_exits_1_and_states_its_effect(name: str) -> None:
    cli = runner.invoke(app, ["diff", str(SPEC), str(ABLATIONS / f"{name}.json")])
    assert cli.exit_code == 1, cli.output
    assert f"ablation (B) {name}: expected effect: " in cli.stdout


@pytest.mark.parametrize("name", NAMES)
def test_every_ablation_compiles_with_the_graphs_parameter_count(name: str) -> None:
    pytest.importorskip("torch")
    from minimind_spec.engine import compile_model

    resolved = resolve(load_spec(ABLATIONS / f"{name}.json"))
    costs = graph_costs(build_graph(resolved), resolved.model)
    model = compile_model(resolved, device="meta")
    params = list(model.parameters())
    assert sum(p.numel() for p in params) == costs.total_params
    assert sum(p.numel() for p in params if p.requires_grad) == costs.trainable_params

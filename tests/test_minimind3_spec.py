"""`spec/minimind3.json` describes MiniMind-3's default model: every value is checked against the
defaults of MiniMind's `MiniMindConfig` (model/model_minimind.py), written out here by hand
from that code; it builds to MiniMind's published sizes (64M dense, 198M MoE with 64M active),
renders with its QK-norm visible, and diffs against the card's spec by what really changes."""

from __future__ import annotations

import math

from typer.testing import CliRunner

from minimind_spec import build_graph, load_spec, resolve
from minimind_spec.cli import app
from minimind_spec.diff import diff_specs
from minimind_spec.graph import graph_costs

from .conftest import ROOT, SPEC

MINIMIND3 = ROOT / "spec" / "minimind3.json"

# MiniMindConfig's defaults (hidden_size 768, num_hidden_layers 8), as its __init__ sets them
HIDDEN = 768
MINIMIND_CONFIG = {
    "d_model": HIDDEN, "n_layers": 8, "vocab_size": 6400, "n_heads": 8, "n_kv_heads": 4, "head_dim": HIDDEN // 8,
    "mlp_hidden": math.ceil(HIDDEN * math.pi / 64) * 64, "max_position_embeddings": 32768, "norm_eps": 1e-6,
    "rope_theta": 1e6, "tie_word_embeddings": True, "dropout": 0.0, "qk_norm": True, "activation": "SiLU",
}
MINIMIND_MOE = {"num_experts": 4, "top_k": 1, "expert_hidden": math.ceil(HIDDEN * math.pi / 64) * 64,
                "norm_topk_prob": True, "aux_loss_weight": 5e-4, "num_shared_experts": 0}


def test_every_value_is_minimind3_s():
    assert MINIMIND_CONFIG["mlp_hidden"] == 2432  # the figure, from the formula
    dense = resolve(load_spec(MINIMIND3))
    assert {key: getattr(dense.model, key) for key in MINIMIND_CONFIG} == MINIMIND_CONFIG
    assert dense.model.rope_scaling.kind == "none" and dense.model.moe is None
    moe = resolve(load_spec(MINIMIND3), "MoE").model.moe
    assert moe is not None and {key: getattr(moe, key) for key in MINIMIND_MOE} == MINIMIND_MOE and moe.aux_loss


def test_it_builds_to_minimind3_s_published_sizes():
    dense = graph_costs(build_graph(resolve(load_spec(MINIMIND3))), resolve(load_spec(MINIMIND3)).model)
    assert round(dense.total_params / 1e6) == 64  # "minimind-3: 64M"
    moe_resolved = resolve(load_spec(MINIMIND3), "MoE")
    moe = graph_costs(build_graph(moe_resolved), moe_resolved.model)
    assert round(moe.total_params / 1e6) == 198  # "minimind-3-moe: 198M-A64M"
    expert = 3 * HIDDEN * 2432
    active = moe.total_params - 8 * 3 * expert  # one expert of four runs per token
    assert round(active / 1e6) == 64
    done = CliRunner().invoke(app, ["build", str(MINIMIND3), "--strict"])
    assert done.exit_code == 0, done.output  # its declared numbers are right (dense build)


def test_it_renders_with_qk_norm_and_diffs_against_the_card_by_what_changes():
    rendered = CliRunner().invoke(app, ["render", str(MINIMIND3), "--format", "mermaid"])
    assert rendered.exit_code == 0 and "self_attn.q_norm" in rendered.output and "QK-norm: RMSNorm per head over 96" in rendered.output
    result = diff_specs(SPEC, MINIMIND3)
    changed = {f.path for f in result.fields}
    assert {"/hyperparams/qk_norm", "/hyperparams/head_dim", "/hyperparams/n_kv_heads", "/hyperparams/mlp_hidden"} <= changed
    added = [n for n in result.nodes if "q_norm" in n.pattern or "k_norm" in n.pattern]
    assert len(added) == 2
    costs = {c.name: c for c in result.costs}
    assert costs["KV cache / token"].new < costs["KV cache / token"].old  # 4 KV heads of 96 against 8 of 64
    assert costs["total params"].new == 63_912_192
    text = CliRunner().invoke(app, ["diff", str(SPEC), str(MINIMIND3)]).output
    for name in ("qk_norm", "head_dim", "n_kv_heads", "mlp_hidden", "KV cache / token"):
        assert name in text

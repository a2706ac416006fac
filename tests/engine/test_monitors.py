"""The watches that make the card's risks visible while training (MoE load imbalance, DPO
divergence, collapsing likelihoods, a policy that does not move) on hand-made metric sequences,
and an MoE run's per-layer expert load in its metrics."""

from __future__ import annotations

import json
import math

import pytest
import torch
from typer.testing import CliRunner

from minimind_spec.cli import app
from minimind_spec.engine.train.monitors import DPOWatch, ExpertLoadWatch, expert_load
from minimind_spec.metrics import MetricsRow

from .conftest import args, metrics

def _row(loss=1.0, **values):
    return MetricsRow(step=1, loss=loss, lr=1e-3, tokens=0, tokens_per_s=None, grad_norm=None, values=values)


BALANCED = [[10, 10, 10, 10], [10, 10, 10, 10]]
STARVED = [[10, 10, 10, 10], [38, 1, 1, 0]]  # layer 1, expert 3 gets nothing


def test_expert_load_watch_warns_once_per_episode():
    watch = ExpertLoadWatch(window=4)
    assert all(watch.update(step, _row(expert_tokens=BALANCED)) == [] for step in range(1, 5))
    said = [watch.update(step, _row(expert_tokens=STARVED)) for step in range(5, 11)]
    # over the last 4 steps expert 3 of layer 1 gets 30, 20, 10, then 0 of its fair 40: 75%, 50%, 25% (the floor), 0%
    assert said[:3] == [[], [], []]
    assert len(said[3]) == 1 and "step 8" in said[3][0] and "layer 1" in said[3][0] and "expert 3" in said[3][0]
    assert "0%" in said[3][0] and said[4:] == [[], []]  # still starved: not repeated
    assert all(watch.update(step, _row(expert_tokens=BALANCED)) == [] for step in range(11, 15))
    assert [watch.update(step, _row(expert_tokens=STARVED)) for step in range(15, 18)] == [[], [], []]
    assert len(watch.update(18, _row(expert_tokens=STARVED))) == 1  # a new episode warns again


def test_expert_load_by_hand():
    counts = torch.tensor([[3, 1], [2, 2]])
    got = expert_load(counts)
    assert got["expert_tokens"] == [[3, 1], [2, 2]]
    assert got["expert_load_cv_per_layer"] == [pytest.approx(0.5), 0.0]  # std 1 / mean 2, then 0
    assert got["expert_load_cv"] == pytest.approx(0.25)


def _dpo_row(loss, margin, chosen):
    return _row(loss, **{"rewards/margins": margin, "logps/chosen": chosen})


def test_dpo_watch():
    watch = DPOWatch(window=5)
    assert watch.update(1, _dpo_row(0.5, 25.0, -10.0))[0].startswith("step 1: the reward margin is 25")
    assert watch.update(2, _dpo_row(0.5, 30.0, -10.0)) == []  # still diverging: said once

    watch = DPOWatch(window=5)
    said = [watch.update(step, _dpo_row(0.6, 0.1 * step, -10.0 - step)) for step in range(1, 7)]
    assert said[:4] == [[]] * 4 and "both likelihoods are collapsing" in said[4][0] and said[5] == []

    watch = DPOWatch(window=5)
    said = [watch.update(step, _dpo_row(math.log(2), 0.0, -10.0)) for step in range(1, 6)]
    assert said[:4] == [[]] * 4 and "not moving" in said[4][0]

    watch = DPOWatch(window=5)
    assert all(watch.update(step, _dpo_row(0.6 - 0.01 * step, 0.1 * step, -10.0)) == [] for step in range(1, 12))


def test_an_moe_run_logs_each_layers_expert_load(workspace, tmp_path):
    spec = json.loads((workspace / "tiny.json").read_text())
    spec["moe"] = {"num_experts": 4, "top_k": 2, "aux_loss": True}
    (tmp_path / "moe.json").write_text(json.dumps(spec))
    command = args(workspace, tmp_path / "run", "--stage", "pretrain", "--max-steps", "3", "--variant", "MoE",
                   "--micro-batch", "2")
    command[1] = str(tmp_path / "moe.json")
    result = CliRunner().invoke(app, command)
    assert result.exit_code == 0, result.output
    for row in metrics(tmp_path / "run" / "pretrain" / "metrics.jsonl"):
        assert len(row["expert_tokens"]) == 2 and len(row["expert_load_cv_per_layer"]) == 2  # 2 MoE layers
        assert all(sum(layer) == 4 * 64 * 2 for layer in row["expert_tokens"])  # the whole step: batch 4 x 64 tokens x top-2
        assert row["aux_loss"] > 0


def test_a_flapping_condition_warns_at_most_once_per_window():
    watch = DPOWatch(window=5)
    margins = {1: 25.0, 2: 1.0, 3: 25.0, 4: 1.0, 5: 25.0, 6: 1.0, 7: 1.0, 8: 25.0}
    said = {step: watch.update(step, _dpo_row(0.5, margin, -10.0)) for step, margin in margins.items()}
    assert [step for step, warnings in said.items() if warnings] == [1, 8]

"""GRPO's pure math (`builders.techniques.grpo`): group advantages, the clipped and the CISPO loss with the k3
KL, checked against values computed here with plain Python floats, and the masks that keep prompt and
padding tokens out of the gradient."""

from __future__ import annotations

import math
from typing import Any

import pytest
import torch

from builders.techniques import group_advantages, grpo_loss_sum, k3_kl

POLICY = [[-1.0, -0.5, -2.0], [-0.3, -1.2, -0.7]]
OLD = [[-1.1, -0.5, -2.0], [-0.3, -0.9, -0.9]]
REFERENCE = [[-0.9, -0.6, -1.5], [-0.4, -1.1, -0.7]]
ADVANTAGES = [0.8, -1.3]
MASK = [[True, True, False], [False, True, True]]  # (0, 2) and (1, 0): a prompt or padding position each
BETA = 0.1


def _tensors():
    return (torch.tensor(POLICY, dtype=torch.float64, requires_grad=True), torch.tensor(OLD, dtype=torch.float64),
            torch.tensor(REFERENCE, dtype=torch.float64), torch.tensor(ADVANTAGES, dtype=torch.float64), torch.tensor(MASK))


def _kl(policy: float, reference: float) -> float:
    d = reference - policy
    return math.exp(d) - d - 1


def _positions():
    return [(i, t) for i in range(2) for t in range(3) if MASK[i][t]]


def test_advantages_are_centred_and_scaled_within_each_group():
    rewards = torch.tensor([1.0, 0.0, 0.5, 0.5, 2.0, 2.0, 2.0, 2.0])
    advantages = group_advantages(rewards, 4, 1e-4)
    first = [1.0, 0.0, 0.5, 0.5]
    mean = sum(first) / 4
    std = math.sqrt(sum((r - mean) ** 2 for r in first) / 4)  # population std
    expected = [(r - mean) / (std + 1e-4) for r in first] + [0.0] * 4
    assert advantages.tolist() == pytest.approx(expected, rel=1e-6)
    assert advantages.view(2, 4).sum(dim=1).tolist() == pytest.approx([0.0, 0.0], abs=1e-6)


def test_a_group_of_equal_rewards_gets_exactly_zero_advantage():
    rewards = torch.tensor([0.1, 0.1, 0.1, 0.7, 0.2, 0.7])  # 0.1 x 3 / 3 is not 0.1 in floating point
    advantages = group_advantages(rewards, 3, 1e-4)
    assert advantages[:3].tolist() == [0.0, 0.0, 0.0]
    assert advantages[3:].abs().min() > 0
    with pytest.raises(ValueError, match="groups of 4"):
        group_advantages(rewards, 4, 1e-4)


def test_k3_is_the_unbiased_non_negative_kl_estimator():
    policy, reference = torch.tensor([-1.0, -2.0, -0.5]), torch.tensor([-1.0, -1.0, -3.0])
    assert k3_kl(policy, reference).tolist() == pytest.approx([_kl(p, r) for p, r in zip(policy.tolist(), reference.tolist())])
    assert k3_kl(policy, reference).min() >= 0 and float(k3_kl(policy, policy).abs().max()) == 0.0


def test_the_clipped_loss_equals_the_hand_computed_sum():
    policy, old, reference, advantages, mask = _tensors()
    terms = grpo_loss_sum(policy, old, reference, advantages, mask, beta=BETA, loss_type="grpo", clip_eps=0.2)
    total, clipped = 0.0, 0
    for i, t in _positions():
        ratio = math.exp(POLICY[i][t] - OLD[i][t])
        a = ADVANTAGES[i]
        bounded = min(max(ratio, 0.8), 1.2)
        total += -min(ratio * a, bounded * a) + BETA * _kl(POLICY[i][t], REFERENCE[i][t])
        clipped += (ratio < 0.8 and a < 0) or (ratio > 1.2 and a > 0)
    assert float(terms.loss_sum.detach()) == pytest.approx(total, rel=1e-12)
    assert float(terms.count) == 4 and float(terms.clipped) == clipped == 1  # (1, 1): ratio 0.74 with a negative advantage
    assert float(terms.kl_sum) == pytest.approx(sum(_kl(POLICY[i][t], REFERENCE[i][t]) for i, t in _positions()))


def test_the_cispo_loss_equals_the_hand_computed_sum():
    policy, old, reference, advantages, mask = _tensors()
    terms = grpo_loss_sum(policy, old, reference, advantages, mask, beta=BETA, loss_type="cispo", cispo_max_weight=1.05)
    total, gradient = 0.0, {}
    for i, t in _positions():
        weight = min(math.exp(POLICY[i][t] - OLD[i][t]), 1.05)  # detached: a constant
        total += -weight * ADVANTAGES[i] * POLICY[i][t] + BETA * _kl(POLICY[i][t], REFERENCE[i][t])
        gradient[i, t] = -weight * ADVANTAGES[i] + BETA * (1 - math.exp(REFERENCE[i][t] - POLICY[i][t]))
    assert float(terms.loss_sum.detach()) == pytest.approx(total, rel=1e-12)
    assert float(terms.clipped) == 2  # (0, 0) and (1, 2): ratios exp(0.1) and exp(0.2), above 1.05
    terms.loss_sum.backward()
    assert policy.grad is not None
    for (i, t), value in gradient.items():
        assert float(policy.grad[i, t]) == pytest.approx(value, rel=1e-12)


@pytest.mark.parametrize("loss_type", ["grpo", "cispo"])
def test_prompt_and_padding_positions_get_no_gradient_whatever_their_values(loss_type):
    policy, old, reference, advantages, mask = _tensors()
    reference_loss = float(grpo_loss_sum(policy, old, reference, advantages, mask, beta=BETA, loss_type=loss_type).loss_sum.detach())
    garbage = torch.tensor(POLICY, dtype=torch.float64)
    garbage[0, 2], garbage[1, 0] = float("nan"), float("-inf")  # what a masked position may hold
    garbage.requires_grad_(True)
    old_garbage, ref_garbage = old.clone(), reference.clone()
    old_garbage[0, 2], ref_garbage[1, 0] = float("inf"), float("nan")
    terms = grpo_loss_sum(garbage, old_garbage, ref_garbage, advantages, mask, beta=BETA, loss_type=loss_type)
    assert float(terms.loss_sum.detach()) == pytest.approx(reference_loss, rel=1e-12)
    terms.loss_sum.backward()
    assert garbage.grad is not None
    assert garbage.grad[0, 2] == 0 and garbage.grad[1, 0] == 0 and torch.isfinite(garbage.grad).all()


@pytest.mark.parametrize("loss_type", ["grpo", "cispo"])
def test_zero_advantage_at_the_reference_gives_exactly_zero_gradient(loss_type):
    policy = torch.tensor(POLICY, dtype=torch.float64, requires_grad=True)
    terms = grpo_loss_sum(policy, policy.detach(), policy.detach().clone(), torch.zeros(2, dtype=torch.float64),
                          torch.tensor(MASK), beta=BETA, loss_type=loss_type)
    terms.loss_sum.backward()
    assert policy.grad is not None and float(policy.grad.abs().max()) == 0.0


def test_on_policy_the_surrogates_give_the_policy_gradient():
    """With old = policy (one update per sampled batch) both losses' gradient is -A per completion token."""
    for loss_type in ("grpo", "cispo"):
        policy = torch.tensor(POLICY, dtype=torch.float64, requires_grad=True)
        terms = grpo_loss_sum(policy, policy.detach(), policy.detach(), torch.tensor(ADVANTAGES, dtype=torch.float64),
                              torch.tensor(MASK), beta=BETA, loss_type=loss_type)
        terms.loss_sum.backward()
        assert policy.grad is not None
        expected = [-ADVANTAGES[i] if MASK[i][t] else 0.0 for i in range(2) for t in range(3)]
        assert policy.grad.flatten().tolist() == pytest.approx(expected, rel=1e-12)


def test_bad_arguments_are_refused():
    policy, old, reference, advantages, mask = _tensors()
    unknown: Any = "ppo"
    with pytest.raises(ValueError, match="loss_type"):
        grpo_loss_sum(policy, old, reference, advantages, mask, beta=BETA, loss_type=unknown)
    with pytest.raises(ValueError, match="beta"):
        grpo_loss_sum(policy, old, reference, advantages, mask, beta=-1.0)

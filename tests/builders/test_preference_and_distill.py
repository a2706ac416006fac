"""The DPO and distillation objectives (`builders.techniques.dpo`, `.distill`) against values
computed by hand (losses, rewards, gradients) and against `torch.nn.functional.kl_div`."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from builders import distill_loss, dpo_loss
from builders.techniques import IGNORE_INDEX, causal_lm_loss, divergence_per_token

from .helpers import trl_dpo_loss

# one pair: policy chosen/rejected -10/-12, reference -11/-11: log-ratios +1 and -1, h = 2
PAIR = (torch.tensor([-10.0]), torch.tensor([-12.0]), torch.tensor([-11.0]), torch.tensor([-11.0]))


@pytest.mark.parametrize("loss_type, expected", [
    ("sigmoid", math.log(1 + math.exp(-0.2))),  # -log sigmoid(0.1 * 2)
    ("hinge", 0.8),  # max(0, 1 - 0.1 * 2)
    ("ipo", 9.0),  # (2 - 1 / (2 * 0.1))^2
])
def test_dpo_loss_by_hand(loss_type, expected):
    losses, chosen, rejected = dpo_loss(*PAIR, beta=0.1, loss_type=loss_type)
    assert losses.item() == pytest.approx(expected, rel=1e-6)
    assert chosen.item() == pytest.approx(0.1) and rejected.item() == pytest.approx(-0.1)


def test_dpo_loss_gradient_and_rewards_are_detached():
    policy_chosen = torch.tensor([-10.0, -3.0], requires_grad=True)
    policy_rejected = torch.tensor([-12.0, -2.0], requires_grad=True)
    losses, chosen, rejected = dpo_loss(policy_chosen, policy_rejected, torch.tensor([-11.0, -3.0]),
                                        torch.tensor([-11.0, -3.0]), beta=0.5)
    losses.sum().backward()
    # d/dx -log sigmoid(beta h) = -beta (1 - sigmoid(beta h)) for the chosen side, the opposite for the rejected
    h = torch.tensor([2.0, -1.0])
    expected = -0.5 * (1 - torch.sigmoid(0.5 * h))
    assert torch.allclose(policy_chosen.grad, expected) and torch.allclose(policy_rejected.grad, -expected)
    assert not chosen.requires_grad and not rejected.requires_grad
    with pytest.raises(ValueError, match="loss_type"):
        dpo_loss(*PAIR, beta=0.1, loss_type="kto")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="beta"):
        dpo_loss(*PAIR, beta=0.0)


@pytest.fixture
def logits_and_labels():
    generator = torch.Generator().manual_seed(7)
    student = torch.randn(2, 6, 11, generator=generator)
    teacher = torch.randn(2, 6, 11, generator=generator) * 2
    labels = torch.randint(0, 11, (2, 6), generator=generator)
    labels[0, :3] = IGNORE_INDEX  # prompt
    return student, teacher, labels


@pytest.mark.parametrize("temperature", [1.0, 2.0])
def test_kl_term_matches_kl_div(logits_and_labels, temperature):
    student, teacher, _ = logits_and_labels
    log_q = F.log_softmax(student / temperature, -1)
    log_p = F.log_softmax(teacher / temperature, -1)
    forward = F.kl_div(log_q, log_p, log_target=True, reduction="none").sum(-1) * temperature**2
    reverse = F.kl_div(log_p, log_q, log_target=True, reduction="none").sum(-1) * temperature**2
    assert torch.allclose(divergence_per_token(student, teacher, temperature, "KL"), forward, atol=1e-6)
    assert torch.allclose(divergence_per_token(student, teacher, temperature, "reverse_KL"), reverse, atol=1e-6)
    assert torch.allclose(divergence_per_token(student, teacher, temperature, "MSE"), (student - teacher).pow(2).mean(-1))


def test_distill_loss_by_hand_with_reasoning_weights(logits_and_labels):
    student, teacher, labels = logits_and_labels
    weights = torch.ones(2, 6)
    weights[1, 1:4] = 0.5  # a <think> span: tokens 1-3, predicted at positions 0-2
    loss, parts = distill_loss(student, teacher, labels, temperature=2.0, alpha=0.3, token_weights=weights)
    total = weighted = ce_sum = soft_sum = 0.0
    for b in range(2):
        for t in range(5):  # position t predicts labels[t + 1]
            target = int(labels[b, t + 1])
            if target == IGNORE_INDEX:
                continue
            ce = -F.log_softmax(student[b, t], -1)[target]
            p = F.softmax(teacher[b, t] / 2.0, -1)
            kl = (p * (p.log() - F.log_softmax(student[b, t] / 2.0, -1))).sum() * 4.0
            w = float(weights[b, t + 1])  # weights sit on the tokens, like labels: the predicted token's
            weighted += w * (0.3 * ce + 0.7 * kl)
            ce_sum += w * ce
            soft_sum += w * kl
            total += w
    assert loss.item() == pytest.approx(float(weighted / total), rel=1e-5)
    assert parts["ce"].item() == pytest.approx(float(ce_sum / total), rel=1e-5)
    assert parts["soft"].item() == pytest.approx(float(soft_sum / total), rel=1e-5)


def test_alpha_one_is_the_causal_lm_loss_and_a_student_equal_to_its_teacher_has_no_soft_loss(logits_and_labels):
    student, teacher, labels = logits_and_labels
    loss, _ = distill_loss(student, teacher, labels, temperature=2.0, alpha=1.0)
    assert loss.item() == pytest.approx(causal_lm_loss(student, labels).item(), rel=1e-6)
    weights = torch.rand(labels.shape, generator=torch.Generator().manual_seed(1)) + 0.1
    weighted, _ = distill_loss(student, teacher, labels, temperature=2.0, alpha=1.0, token_weights=weights)
    assert weighted.item() == pytest.approx(causal_lm_loss(student, labels, token_weights=weights).item(), rel=1e-6)
    _, parts = distill_loss(student, student.clone(), labels, temperature=2.0, alpha=0.5)
    assert abs(parts["soft"].item()) < 1e-6
    with pytest.raises(ValueError, match="share the tokenizer"):
        distill_loss(student, teacher[..., :10], labels, temperature=2.0, alpha=0.5)


def test_dpo_loss_matches_trl():
    """trl computes the DPO loss inside DPOTrainer._compute_loss; run it on a stand-in trainer whose
    model returns given per-token log-probs (0 where not a completion token, as trl's model does),
    with precomputed reference log-probs, and compare the three loss types."""
    pairs, length = 3, 6
    generator = torch.Generator().manual_seed(0)
    completion = torch.ones(2 * pairs, length, dtype=torch.long)
    completion[:, :2] = 0  # the prompt
    completion[1, 5] = 0  # padding
    per_token = -torch.rand(2 * pairs, length - 1, generator=generator) * 3 * completion[:, 1:]
    ref_chosen, ref_rejected = -torch.rand(pairs, generator=generator) * 10, -torch.rand(pairs, generator=generator) * 10
    logps = per_token.sum(1)  # (2 pairs,) chosen rows first, as trl batches them
    tokens = completion[:, 1:].sum(1).float()
    for loss_type in ("sigmoid", "hinge", "ipo"):
        theirs = trl_dpo_loss(per_token, completion, ref_chosen, ref_rejected, [loss_type], [1.0])
        policy, chosen_ref, rejected_ref = logps, ref_chosen, ref_rejected
        if loss_type == "ipo":  # per-token means, of the policy and of the reference
            policy, chosen_ref, rejected_ref = logps / tokens, ref_chosen / tokens[:pairs], ref_rejected / tokens[pairs:]
        ours, _, _ = dpo_loss(policy[:pairs], policy[pairs:], chosen_ref, rejected_ref, beta=0.1, loss_type=loss_type)
        assert ours.mean().item() == pytest.approx(theirs, rel=1e-6), loss_type

"""Direct Preference Optimization (Rafailov et al., 2023) as a pure function of sequence log-probs.

With the policy's and the frozen reference's log-probabilities of the chosen and the rejected
response (each summed over the response tokens only; prompt and padding masked), the implicit
rewards are r = beta * (log pi(y|x) - log pi_ref(y|x)), and h = (chosen - rejected) log-ratio
difference. Loss variants:
- "sigmoid": -log sigmoid(beta * h), the DPO loss;
- "hinge":   max(0, 1 - beta * h) (the SLiC hinge);
- "ipo":     (h - 1 / (2 beta))^2 (Azar et al., 2023); IPO is defined on length-normalised
             log-probs, so callers pass per-token means for it (`sequence_log_probs(average=True)`).
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F

DPOLossType = Literal["sigmoid", "hinge", "ipo"]
DPO_LOSS_TYPES: tuple[str, ...] = ("sigmoid", "hinge", "ipo")


def dpo_loss(policy_chosen_logps: torch.Tensor, policy_rejected_logps: torch.Tensor, ref_chosen_logps: torch.Tensor,
             ref_rejected_logps: torch.Tensor, beta: float, loss_type: DPOLossType = "sigmoid",
             ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-pair losses (B,) and the chosen and rejected rewards (B,), the rewards detached."""
    if loss_type not in DPO_LOSS_TYPES:
        raise ValueError(f"loss_type {loss_type!r}: one of {', '.join(DPO_LOSS_TYPES)}")
    if beta <= 0:
        raise ValueError(f"beta must be positive, got {beta}")
    chosen_ratio = policy_chosen_logps - ref_chosen_logps  # (B,)
    rejected_ratio = policy_rejected_logps - ref_rejected_logps  # (B,)
    h = chosen_ratio - rejected_ratio  # (B,)
    if loss_type == "sigmoid":
        losses = -F.logsigmoid(beta * h)
    elif loss_type == "hinge":
        losses = torch.relu(1 - beta * h)
    else:
        losses = (h - 1 / (2 * beta)) ** 2
    return losses, beta * chosen_ratio.detach(), beta * rejected_ratio.detach()

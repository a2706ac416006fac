"""Group Relative Policy Optimization (Shao et al., 2024, DeepSeekMath) as pure functions of log-probs.

The GRPO stage samples a group of completions per prompt, scores each with verifiable rewards,
and trains on the completion tokens only; these functions take the tensors it gathers:

- `group_advantages`: A_i = (r_i - mean of its group) / (std of its group + eps), the population
  std as MiniMind computes it. A group whose rewards are all equal gets A = 0 exactly (not
  (r - mean) rounded), so it contributes no policy gradient.
- `grpo_loss_sum`: per completion token t of completion i, with the ratio
  rho = exp(log pi(o_t) - log pi_old(o_t)) and the sampling policy's log-probs as pi_old,
  - "grpo": -min(rho A_i, clip(rho, 1 - eps, 1 + eps) A_i), PPO's clipped surrogate;
  - "cispo": -sg(min(rho, w_max)) A_i log pi(o_t), CISPO (MiniMax-M1, arXiv:2506.13585, eq. 4:
    the importance-sampling weight is clipped and detached, so every token keeps a gradient;
    MiniMax bounds it above only, as MiniMind's train_grpo.py does with `--epsilon_high` 5.0);
  plus beta x k3(pi || pi_ref) = beta x (exp(d) - d - 1) with d = log pi_ref(o_t) - log pi(o_t)
  (Schulman's unbiased, non-negative estimator of KL(pi || pi_ref)).
  The loss is SUMMED over the completion tokens (prompt and padding masked: their inputs are
  replaced before any arithmetic, so they get exactly zero gradient whatever their values)
  and returned with its count, the completion tokens: the training loop divides the step's sum
  by the step's count, a token-level mean over the whole step (as DAPO and trl's "dapo" loss do;
  MiniMind's per-sequence mean weighs a short completion's tokens more).

With one optimizer step per generation batch, pi_old equals the policy (rho = 1 in value) and
the gradient of either surrogate is A_i grad log pi(o_t): the policy gradient.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch

GRPOLossType = Literal["grpo", "cispo"]
GRPO_LOSS_TYPES: tuple[str, ...] = ("grpo", "cispo")


def group_advantages(rewards: torch.Tensor, group_size: int, eps: float) -> torch.Tensor:
    """Group-normalised advantages (N,) of rewards (N,) whose consecutive runs of `group_size` are one group."""
    if rewards.numel() % group_size:
        raise ValueError(f"{rewards.numel()} rewards do not split into groups of {group_size}")
    grouped = rewards.float().view(-1, group_size)  # (G, n)
    mean = grouped.mean(dim=1, keepdim=True)  # (G, 1)
    std = grouped.std(dim=1, unbiased=False, keepdim=True)  # (G, 1)
    equal = grouped.amax(dim=1, keepdim=True) == grouped.amin(dim=1, keepdim=True)  # (G, 1)
    advantages = torch.where(equal, torch.zeros_like(grouped), (grouped - mean) / (std + eps))  # (G, n)
    return advantages.view(-1)  # (N,)


def k3_kl(log_probs: torch.Tensor, ref_log_probs: torch.Tensor) -> torch.Tensor:
    # log_probs, ref_log_probs: (N, T) -> (N, T) exp(d) - d - 1 with d = ref - policy, >= 0
    d = ref_log_probs - log_probs
    return torch.exp(d) - d - 1


@dataclass(frozen=True)
class GRPOTerms:
    loss_sum: torch.Tensor  # () summed over completion tokens, differentiable
    count: torch.Tensor  # () completion tokens
    kl_sum: torch.Tensor  # () summed k3 KL over completion tokens, detached
    clipped: torch.Tensor  # () completion tokens whose ratio (or CISPO weight) was clipped, detached


def grpo_loss_sum(log_probs: torch.Tensor, old_log_probs: torch.Tensor, ref_log_probs: torch.Tensor,
                  advantages: torch.Tensor, mask: torch.Tensor, *, beta: float, loss_type: GRPOLossType = "grpo",
                  clip_eps: float = 0.2, cispo_max_weight: float = 5.0) -> GRPOTerms:
    """The GRPO (or CISPO) loss summed over the completion tokens, and its count (module docstring).
    log_probs: (N, T) the policy's log-prob of each sampled token (differentiable); old_log_probs and
    ref_log_probs: (N, T) the sampling policy's and the reference's; advantages: (N,); mask: (N, T) True on
    completion tokens."""
    if loss_type not in GRPO_LOSS_TYPES:
        raise ValueError(f"loss_type {loss_type!r}: one of {', '.join(GRPO_LOSS_TYPES)}")
    if beta < 0:
        raise ValueError(f"beta must be >= 0, got {beta}")
    mask = mask.bool()  # (N, T)
    zero = torch.zeros((), dtype=log_probs.dtype, device=log_probs.device)
    log_probs = torch.where(mask, log_probs, zero)  # (N, T) masked inputs replaced: no gradient, no inf or NaN
    old_log_probs = torch.where(mask, old_log_probs.detach(), zero)  # (N, T)
    ref_log_probs = torch.where(mask, ref_log_probs.detach(), zero)  # (N, T)
    A = advantages.detach().to(log_probs.dtype)[:, None]  # (N, 1)
    ratio = torch.exp(log_probs - old_log_probs)  # (N, T)
    if loss_type == "grpo":
        clipped_ratio = ratio.clamp(1 - clip_eps, 1 + clip_eps)  # (N, T)
        per_token = -torch.minimum(ratio * A, clipped_ratio * A)  # (N, T)
        clipped = ((ratio < 1 - clip_eps) & (A < 0)) | ((ratio > 1 + clip_eps) & (A > 0))  # (N, T)
    else:
        weight = ratio.clamp(max=cispo_max_weight).detach()  # (N, T)
        per_token = -weight * A * log_probs  # (N, T)
        clipped = ratio > cispo_max_weight  # (N, T)
    kl = k3_kl(log_probs, ref_log_probs)  # (N, T), 0 where masked
    if beta:
        per_token = per_token + beta * kl
    loss_sum = torch.where(mask, per_token, zero).sum()
    return GRPOTerms(loss_sum, mask.sum().to(log_probs.dtype), torch.where(mask, kl, zero).sum().detach(),
                     (clipped & mask).sum().to(log_probs.dtype))

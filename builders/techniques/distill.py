"""Logit distillation (Hinton et al., 2015) as a pure function of student and teacher logits.

Per trained token t (labels aligned with the inputs, as in `causal_lm`; position t predicts
labels[t + 1]):
    l_t = alpha * CE(student_t, label) + (1 - alpha) * D_t
with D_t, by `kind`:
- "KL":         T^2 * KL(softmax(teacher_t / T) || softmax(student_t / T))  (forward KL)
- "reverse_KL": T^2 * KL(softmax(student_t / T) || softmax(teacher_t / T))
- "MSE":        mean over the vocabulary of (student_t - teacher_t)^2 on raw logits
The T^2 factor keeps the soft term's gradient scale independent of T. `distill_loss_sum` gives
sum_t w_t l_t over the trained tokens and its count sum_t w_t (training divides the sum of a
whole step by the step's count); `distill_loss` is their ratio, the weighted mean. The
`token_weights` (B, T), aligned with the inputs like the labels (e.g. 0.5 on the tokens of
`<think>` spans), weight both terms of the token they sit on; with none every trained token
counts 1.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F

from .causal_lm import IGNORE_INDEX, shift_labels, trained_weights

DistillKind = Literal["KL", "reverse_KL", "MSE"]
DISTILL_KINDS: tuple[str, ...] = ("KL", "reverse_KL", "MSE")


def divergence_per_token(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float,
                         kind: DistillKind = "KL") -> torch.Tensor:
    # student_logits, teacher_logits: (B, T, V) -> (B, T) the soft term D_t (T^2 included for the KL kinds)
    student, teacher = student_logits.float(), teacher_logits.float()
    if kind == "MSE":
        return (student - teacher).pow(2).mean(dim=-1)
    log_q = F.log_softmax(student / temperature, dim=-1)  # (B, T, V) student
    log_p = F.log_softmax(teacher / temperature, dim=-1)  # (B, T, V) teacher
    if kind == "KL":
        kl = (log_p.exp() * (log_p - log_q)).sum(dim=-1)
    elif kind == "reverse_KL":
        kl = (log_q.exp() * (log_q - log_p)).sum(dim=-1)
    else:
        raise ValueError(f"kind {kind!r}: one of {', '.join(DISTILL_KINDS)}")
    return kl * temperature**2


def distill_loss_sum(student_logits: torch.Tensor, teacher_logits: torch.Tensor, labels: torch.Tensor, temperature: float,
                     alpha: float, token_weights: torch.Tensor | None = None, kind: DistillKind = "KL",
                     ) -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
    """(the weighted sum of the per-token loss over trained tokens, the sum of the weights, and the
    parts' weighted sums {"ce", "soft"}, detached)."""
    if student_logits.shape != teacher_logits.shape:
        raise ValueError(f"student logits {tuple(student_logits.shape)} and teacher logits {tuple(teacher_logits.shape)} "
                         "differ: teacher and student must share the tokenizer")
    if temperature <= 0 or not 0.0 <= alpha <= 1.0:
        raise ValueError(f"temperature must be > 0 and alpha in [0, 1], got {temperature} and {alpha}")
    targets = shift_labels(labels)  # (B, T)
    ce = F.cross_entropy(student_logits.float().reshape(-1, student_logits.shape[-1]), targets.reshape(-1),
                         ignore_index=IGNORE_INDEX, reduction="none").view(targets.shape)  # (B, T)
    soft = divergence_per_token(student_logits, teacher_logits, temperature, kind)  # (B, T)
    # token_weights are aligned with the inputs, like labels: the weight of the token predicted at t is token_weights[t + 1]
    weights = trained_weights(labels, token_weights)  # (B, T)
    total = (weights * (alpha * ce + (1 - alpha) * soft)).sum()
    parts = {"ce": (weights * ce).sum().detach(), "soft": (weights * soft).sum().detach()}
    return total, weights.sum(), parts


def distill_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, labels: torch.Tensor, temperature: float,
                 alpha: float, token_weights: torch.Tensor | None = None, kind: DistillKind = "KL",
                 ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The weighted mean loss over trained tokens, and its parts {"ce", "soft"} (weighted means, detached)."""
    total, count, parts = distill_loss_sum(student_logits, teacher_logits, labels, temperature, alpha, token_weights, kind)
    count = count.clamp(min=1e-12)
    return total / count, {name: value / count for name, value in parts.items()}

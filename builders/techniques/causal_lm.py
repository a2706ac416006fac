"""The causal language-modelling objective as pure functions on tensors.

Labels are aligned with the input ids (as in Hugging Face): position t predicts `labels[:, t + 1]`,
and a label of `IGNORE_INDEX` (-100) is not trained on (prompt, padding, a packed row's
boundary). The model's `forward(labels=...)` calls `causal_lm_loss` for convenience;
training code calls these directly, with its own masks and weights.

- `causal_lm_loss`: mean cross-entropy over the trained positions, with optional label
  smoothing and per-token weights (a weighted mean: sum(w * loss) / sum(w), so a weight is
  relative to the other tokens of the batch, e.g. reasoning tokens at 0.5).
- `token_log_probs` / `sequence_log_probs`: log p(label) per position and summed (or
  averaged) per sequence over the trained positions, as preference objectives need.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

IGNORE_INDEX = -100


def shift_labels(labels: torch.Tensor) -> torch.Tensor:
    # labels: (B, T) aligned with the inputs -> (B, T) targets: position t holds labels[:, t + 1], the last IGNORE_INDEX
    return F.pad(labels[:, 1:], (0, 1), value=IGNORE_INDEX)


def _per_token_loss(logits: torch.Tensor, targets: torch.Tensor, label_smoothing: float) -> torch.Tensor:
    # logits: (B, T, V), targets: (B, T) -> (B, T) cross-entropy, 0 where the target is ignored
    # Reshape, not slice: the (B*T, V) view needs no copy, and its gradient no zero-filled buffer.
    # .float() is a no-op in fp32 and upcasts bf16 logits, so the softmax runs at full precision.
    flat = logits.float().reshape(-1, logits.shape[-1])  # (B*T, V)
    losses = F.cross_entropy(flat, targets.reshape(-1).to(logits.device), ignore_index=IGNORE_INDEX,
                             label_smoothing=label_smoothing, reduction="none")  # (B*T,)
    return losses.view(targets.shape)


def causal_lm_loss(logits: torch.Tensor, labels: torch.Tensor, *, label_smoothing: float = 0.0,
                   token_weights: torch.Tensor | None = None) -> torch.Tensor:
    """Mean next-token cross-entropy over the positions whose label is not IGNORE_INDEX.

    logits: (B, T, V); labels: (B, T) aligned with the inputs; token_weights: (B, T) aligned
    with the labels (the weight of predicting `labels[:, t]`; negative weights count as 0), or
    None for equal weights. A batch with no trained position gives 0, not NaN."""
    targets = shift_labels(labels)  # (B, T)
    if token_weights is None:
        flat = logits.float().reshape(-1, logits.shape[-1])  # (B*T, V)
        total = F.cross_entropy(flat, targets.reshape(-1).to(logits.device), ignore_index=IGNORE_INDEX,
                                label_smoothing=label_smoothing, reduction="sum")
        return total / (targets != IGNORE_INDEX).sum().clamp(min=1)
    losses = _per_token_loss(logits, targets, label_smoothing)  # (B, T)
    weights = shift_labels(token_weights.to(losses.dtype)).clamp(min=0.0) * (targets != IGNORE_INDEX)  # (B, T)
    return (losses * weights).sum() / weights.sum().clamp(min=torch.finfo(losses.dtype).tiny)


def token_log_probs(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(log p(next label) (B, T), 0 at ignored positions; mask (B, T), True where trained)."""
    targets = shift_labels(labels)  # (B, T)
    return -_per_token_loss(logits, targets, 0.0), targets != IGNORE_INDEX


def sequence_log_probs(logits: torch.Tensor, labels: torch.Tensor, average: bool = False) -> torch.Tensor:
    """Per-sequence log-probability of the labelled tokens: (B,), summed (or averaged when `average`)."""
    log_probs, mask = token_log_probs(logits, labels)  # (B, T)
    total = log_probs.sum(dim=-1)  # (B,)
    return total / mask.sum(dim=-1).clamp(min=1) if average else total

"""The causal language-modelling objective as pure functions on tensors.

Labels are aligned with the input ids (as in Hugging Face): position t predicts `labels[:, t + 1]`,
and a label of `IGNORE_INDEX` (-100) is not trained on (prompt, padding, a packed row's
boundary). The model's `forward(labels=...)` calls `causal_lm_loss` for convenience;
training code calls these directly, with its own masks and weights.

- `causal_lm_loss_sum`: the summed cross-entropy over the trained positions (optionally
  label-smoothed and per-token weighted: sum(w * loss)) and the count it is normalised by
  (sum(w): the trained positions when unweighted). Training sums over every micro-batch and
  process of a step and divides once by the step's total count, so the gradient does not
  depend on how the batch is split.
- `causal_lm_loss`: the same as a mean, sum / count (a batch with nothing trained gives 0).
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


def trained_weights(labels: torch.Tensor, token_weights: torch.Tensor | None = None) -> torch.Tensor:
    # labels: (B, T), token_weights: (B, T) aligned with the labels or None -> (B, T) float32 weight of
    # the prediction made at each position (0 where the next label is ignored; negative weights count as 0)
    trained = (shift_labels(labels) != IGNORE_INDEX).float()  # (B, T)
    if token_weights is None:
        return trained
    return shift_labels(token_weights.float()).clamp(min=0.0) * trained


def causal_lm_loss_sum(logits: torch.Tensor, labels: torch.Tensor, *, label_smoothing: float = 0.0,
                       token_weights: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(summed next-token cross-entropy over the positions whose label is not IGNORE_INDEX, the
    count it is normalised by). logits: (B, T, V); labels: (B, T) aligned with the inputs;
    token_weights: (B, T) aligned with the labels (the weight of predicting `labels[:, t]`), or
    None for equal weights: the sum is then sum(w * loss) and the count sum(w)."""
    targets = shift_labels(labels)  # (B, T)
    if token_weights is None:
        flat = logits.float().reshape(-1, logits.shape[-1])  # (B*T, V)
        total = F.cross_entropy(flat, targets.reshape(-1).to(logits.device), ignore_index=IGNORE_INDEX,
                                label_smoothing=label_smoothing, reduction="sum")
        return total, (targets != IGNORE_INDEX).sum().float()
    losses = _per_token_loss(logits, targets, label_smoothing)  # (B, T)
    weights = trained_weights(labels, token_weights.to(losses.device))  # (B, T)
    return (losses * weights).sum(), weights.sum()


def causal_lm_loss(logits: torch.Tensor, labels: torch.Tensor, *, label_smoothing: float = 0.0,
                   token_weights: torch.Tensor | None = None) -> torch.Tensor:
    """Mean next-token cross-entropy over the positions whose label is not IGNORE_INDEX (the
    weighted mean with `token_weights`; see `causal_lm_loss_sum`). A batch with no trained
    position gives 0, not NaN."""
    total, count = causal_lm_loss_sum(logits, labels, label_smoothing=label_smoothing, token_weights=token_weights)
    return total / count.clamp(min=torch.finfo(torch.float32).tiny if token_weights is not None else 1.0)


def token_log_probs(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(log p(next label) (B, T), 0 at ignored positions; mask (B, T), True where trained)."""
    targets = shift_labels(labels)  # (B, T)
    return -_per_token_loss(logits, targets, 0.0), targets != IGNORE_INDEX


def sequence_log_probs(logits: torch.Tensor, labels: torch.Tensor, average: bool = False) -> torch.Tensor:
    """Per-sequence log-probability of the labelled tokens: (B,), summed (or averaged when `average`)."""
    log_probs, mask = token_log_probs(logits, labels)  # (B, T)
    total = log_probs.sum(dim=-1)  # (B,)
    return total / mask.sum(dim=-1).clamp(min=1) if average else total

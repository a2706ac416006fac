"""Training objectives as pure functions on tensors (no modules, no optimizer state).

They take model outputs (logits, masks, weights) and return losses or log-probabilities; the
`*_sum` forms return a loss sum and the count it is normalised by, which training divides
only once per step (over all micro-batches and processes). A training stage picks its
objective without the training loop changing:
`causal_lm` (pretraining, SFT), `dpo` (preference pairs), `distill` (teacher logits), `grpo`
(sampled groups of completions and their rewards).
"""

from .causal_lm import (IGNORE_INDEX, causal_lm_loss, causal_lm_loss_sum, sequence_log_probs, shift_labels, token_log_probs,
                        trained_weights)
from .distill import DISTILL_KINDS, distill_loss, distill_loss_sum, divergence_per_token
from .dpo import DPO_LOSS_TYPES, dpo_loss
from .grpo import GRPO_LOSS_TYPES, GRPOTerms, group_advantages, grpo_loss_sum, k3_kl

__all__ = ["DISTILL_KINDS", "DPO_LOSS_TYPES", "GRPO_LOSS_TYPES", "GRPOTerms", "IGNORE_INDEX", "causal_lm_loss",
           "causal_lm_loss_sum", "distill_loss", "distill_loss_sum", "divergence_per_token", "dpo_loss", "group_advantages",
           "grpo_loss_sum", "k3_kl", "sequence_log_probs", "shift_labels", "token_log_probs", "trained_weights"]

"""Training objectives as pure functions on tensors (no modules, no optimizer state).

They take model outputs (logits, masks, weights) and return losses or log-probabilities,
so a training stage picks its objective without the training loop changing:
`causal_lm` (pretraining, SFT), `dpo` (preference pairs), `distill` (teacher logits).
"""

from .causal_lm import IGNORE_INDEX, causal_lm_loss, sequence_log_probs, shift_labels, token_log_probs
from .distill import DISTILL_KINDS, divergence_per_token, distill_loss
from .dpo import DPO_LOSS_TYPES, dpo_loss

__all__ = ["DISTILL_KINDS", "DPO_LOSS_TYPES", "IGNORE_INDEX", "causal_lm_loss", "distill_loss", "divergence_per_token",
           "dpo_loss", "sequence_log_probs", "shift_labels", "token_log_probs"]

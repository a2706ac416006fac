"""Training objectives as pure functions on tensors (no modules, no optimizer state).

They take model outputs (logits, masks, weights) and return losses or log-probabilities,
so a training stage picks its objective without the training loop changing.
"""

from .causal_lm import IGNORE_INDEX, causal_lm_loss, sequence_log_probs, shift_labels, token_log_probs

__all__ = ["IGNORE_INDEX", "causal_lm_loss", "sequence_log_probs", "shift_labels", "token_log_probs"]

"""Training objectives as pure functions on tensors (no modules, no optimizer state).

A stage runner of the engine computes the model outputs it needs and calls one of these;
the training loop never changes when an objective is added.
"""

from .causal_lm import IGNORE_INDEX, causal_lm_loss, sequence_log_probs, shift_labels, token_log_probs

__all__ = ["IGNORE_INDEX", "causal_lm_loss", "sequence_log_probs", "shift_labels", "token_log_probs"]

"""What each stage optimises, as typed settings the plan carries and the engine runs.

Torch-free: the plan decides these from the resolved training config (one constructor per
kind in the stage registry, `stages.py`); the engine's stage factories turn them into the pure
objectives of `builders.techniques`. `describe()` is the line `train --plan` prints.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal


@dataclass(frozen=True)
class CausalLMObjective:
    """Next-token cross-entropy on the labelled tokens (every token, or the assistant spans)."""

    labels: Literal["every token", "assistant spans"]
    label_smoothing: float

    def describe(self) -> str:
        where = ("every token" if self.labels == "every token"
                 else "the assistant spans (ChatML), prompts and padding masked")
        smoothing = f", label smoothing {self.label_smoothing:g}" if self.label_smoothing else ""
        return f"causal LM: next-token cross-entropy on {where}{smoothing}"


@dataclass(frozen=True)
class DistillObjective:
    """alpha x CE(labels) + (1 - alpha) x T^2 x divergence(teacher_T || student_T) per response token."""

    kind: Literal["logit", "hidden"]
    alpha: float
    temperature: float
    divergence: Literal["KL", "reverse_KL", "MSE"]
    reasoning_weight: float | None  # weight of <think> tokens in both terms; None: every token weighs 1

    def describe(self) -> str:
        weight = (f"; reasoning tokens weighted {self.reasoning_weight:g}" if self.reasoning_weight is not None
                  else "; every token weighted 1")
        return (f"{self.alpha:g} x CE(labels) + {1 - self.alpha:g} x T^2 x {self.divergence}(teacher_T || student_T), "
                f"T = {self.temperature:g}, {self.kind} distillation{weight}")


@dataclass(frozen=True)
class PreferenceObjective:
    """DPO on the response tokens' log-probs against a frozen reference."""

    beta: float
    loss: Literal["sigmoid", "hinge", "ipo"]

    def describe(self) -> str:
        return f"DPO ({self.loss}), beta {self.beta:g}, log-probs of the response tokens only"


ObjectiveSettings = CausalLMObjective | DistillObjective | PreferenceObjective

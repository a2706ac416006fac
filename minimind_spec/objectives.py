"""What each stage optimises, as typed settings the plan carries and the engine runs.

Torch-free: the plan decides these from the resolved training config (one constructor per
kind in the stage registry, `stages.py`); the engine's stage factories turn them into the pure
objectives of `builders.techniques`. `describe()` is the line `train --plan` prints.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from .rewards import RewardRule, describe_rewards


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
    rpo_alpha: float = 0.0  # weight of the chosen response's per-token NLL (RPO); 0: none
    length_normalized: bool = False  # per-token mean log-probs (IPO always)
    stop_on_collapse: bool = False  # the DPO watch ends the stage instead of only warning

    @property
    def averaged(self) -> bool:
        """Sequence log-probs are per-token means (IPO is defined on them; `length_normalized` asks for them)."""
        return self.loss == "ipo" or self.length_normalized

    def describe(self) -> str:
        logps = "per-token mean log-probs" if self.averaged else "summed log-probs"
        rpo = f" + {self.rpo_alpha:g} x NLL(chosen) per token (RPO)" if self.rpo_alpha else ""
        stop = "; stops the stage if the likelihoods collapse" if self.stop_on_collapse else ""
        return f"DPO ({self.loss}), beta {self.beta:g}{rpo}, {logps} of the response tokens only{stop}"


@dataclass(frozen=True)
class GRPOObjective:
    """GRPO with verifiable rewards: `num_generations` sampled completions per prompt, rewards normalised
    within each group into advantages, a clipped policy-gradient loss (or CISPO's) per completion token plus
    beta x the k3 KL to the frozen reference, summed over completion tokens."""

    num_generations: int
    max_new_tokens: int
    temperature: float
    top_p: float
    top_k: int
    thinking: bool  # the generation prompt opens a <think> block
    beta: float
    loss: Literal["grpo", "cispo"]
    clip_eps: float
    cispo_max_weight: float
    std_eps: float
    rewards: tuple[RewardRule, ...]

    def describe(self) -> str:
        sampling = f"temperature {self.temperature:g}" + (f", top-p {self.top_p:g}" if self.top_p < 1 else "") + (
            f", top-k {self.top_k}" if self.top_k else "")
        policy = (f"clipped ratio x advantage (eps {self.clip_eps:g})" if self.loss == "grpo"
                  else f"CISPO: detached importance weight (capped at {self.cispo_max_weight:g}) x advantage x log-prob")
        kl = f" + {self.beta:g} x KL(policy || reference) (k3)" if self.beta else ", no KL term"
        return (f"GRPO: {self.num_generations} completions per prompt (at most {self.max_new_tokens} tokens, {sampling}"
                f"{', thinking' if self.thinking else ''}), advantages (r - group mean) / (group std + {self.std_eps:g}); "
                f"{policy}{kl} per completion token; rewards {describe_rewards(self.rewards)}")


ObjectiveSettings = CausalLMObjective | DistillObjective | PreferenceObjective | GRPOObjective

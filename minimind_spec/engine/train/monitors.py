"""Watches on a stage's per-step metrics that make the card's key risks visible while training:
MoE load imbalance, DPO divergence or a policy that does not move, and GRPO drift or a lack of
learning signal. Each `update(step, row)`
reads the step's `MetricsRow` and returns warnings (a line each, naming the step and what was
seen); the loop prints them and stores them in the row. A stage factory builds its watches. A watch warns when its condition starts
holding, not again while it keeps holding, nor within `window` steps of its last warning of
the same kind (noisy per-batch metrics would otherwise make it flap).
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass, field

import numpy as np
import torch

from ...metrics import MetricsRow

FAIR_SHARE_FLOOR = 0.25  # an expert under 1/4 of its fair share of the routed tokens is starved


def expert_load(expert_counts: torch.Tensor) -> dict[str, object]:
    """Per MoE layer, the tokens routed to each expert (a whole step's, all micro-batches and processes)
    and their coefficient of variation; the mean CV over layers."""
    counts = expert_counts.detach().double().cpu()  # (MoE layers, E)
    cv = counts.std(dim=-1, unbiased=False) / counts.mean(dim=-1).clamp(min=1e-9)  # (MoE layers,)
    return {"expert_load_cv": float(cv.mean()), "expert_load_cv_per_layer": [round(float(v), 4) for v in cv],
            "expert_tokens": counts.to(torch.int64).tolist()}


@dataclass
class ExpertLoadWatch:
    """Warns when, over the last `window` steps, an expert of some layer received under
    FAIR_SHARE_FLOOR of its fair share (total routed tokens / experts)."""

    window: int = 20
    _recent: deque = field(default_factory=deque)
    _starved: set[int] = field(default_factory=set)  # layers currently warned about
    _last: dict[int, int] = field(default_factory=dict)  # layer -> step of its last warning

    def update(self, step: int, row: MetricsRow) -> list[str]:
        counts = row.get("expert_tokens")
        if counts is None:
            return []
        self._recent.append(np.asarray(counts, dtype=np.float64))
        if len(self._recent) > self.window:
            self._recent.popleft()
        if len(self._recent) < self.window:
            return []
        total = np.sum(self._recent, axis=0)  # (layers, E)
        warnings = []
        for layer, tokens in enumerate(total):
            fair = tokens.sum() / len(tokens)
            share = tokens.min() / fair if fair > 0 else 1.0
            if share < FAIR_SHARE_FLOOR and layer not in self._starved:
                self._starved.add(layer)
                if step - self._last.get(layer, -self.window) < self.window:
                    continue
                self._last[layer] = step
                warnings.append(f"step {step}: MoE layer {layer}: expert {int(tokens.argmin())} received {share:.0%} of its fair "
                                f"share of tokens over the last {self.window} steps (load imbalance; is the aux loss on?)")
            elif share >= FAIR_SHARE_FLOOR:
                self._starved.discard(layer)
        return warnings


@dataclass
class DPOWatch:
    """Warns when the reward margin diverges, when the chosen log-prob falls while the margin
    grows (both likelihoods collapsing), or when the loss sits at ln 2 (the policy is not moving).
    With `stop_on_collapse`, divergence or collapse also sets `stop_reason`, and the loop ends the
    stage there (saving its model) instead of training on."""

    window: int = 20
    margin_limit: float = 20.0  # |margin| beyond this (in reward units) counts as diverging
    flat_tolerance: float = 1e-3
    collapse_fall: float = 1.0  # nats of summed chosen log-prob the fitted trend must lose over the window
    stop_on_collapse: bool = False
    stop_reason: str | None = None  # set once a stopping condition held (with stop_on_collapse)
    _margins: deque = field(default_factory=deque)
    _chosen: deque = field(default_factory=deque)
    _losses: deque = field(default_factory=deque)
    _active: set[str] = field(default_factory=set)
    _last: dict[str, int] = field(default_factory=dict)  # kind -> step of its last warning
    _step: int = 0

    def _once(self, key: str, holds: bool, message: str) -> list[str]:
        if holds and key not in self._active:
            self._active.add(key)
            if self._step - self._last.get(key, -self.window) < self.window:
                return []
            self._last[key] = self._step
            return [message]
        if not holds:
            self._active.discard(key)
        return []

    def update(self, step: int, row: MetricsRow) -> list[str]:
        self._step = step
        if row.get("rewards/margins") is None or row.get("logps/chosen") is None:
            return []
        margin, chosen = float(row.get("rewards/margins")), float(row.get("logps/chosen"))
        dpo_loss = row.get("dpo_loss")  # the preference term alone (the row's loss includes an RPO term)
        for queue, value in ((self._margins, margin), (self._chosen, chosen),
                             (self._losses, row.loss if dpo_loss is None else float(dpo_loss))):
            queue.append(value)
            if len(queue) > self.window:
                queue.popleft()
        warnings = self._once("diverging", not math.isfinite(margin) or abs(margin) > self.margin_limit,
                              f"step {step}: the reward margin is {margin:.3g}, beyond +-{self.margin_limit:g}: "
                              "DPO is diverging (lower the lr or raise beta)")
        if len(self._margins) == self.window:
            x = np.arange(self.window, dtype=np.float64)
            margin_slope = np.polyfit(x, np.asarray(self._margins), 1)[0]
            chosen_slope = np.polyfit(x, np.asarray(self._chosen), 1)[0]
            fall = -chosen_slope * (self.window - 1)  # the trend's fall over the window (batches differ: endpoints are noise)
            warnings += self._once("collapsing", margin_slope > 0 and fall > self.collapse_fall,
                                   f"step {step}: the chosen log-prob fell by {fall:.2f} (fitted trend) over the "
                                   f"last {self.window} steps while the margin grew: both likelihoods are collapsing")
            flat = all(abs(v - math.log(2)) < self.flat_tolerance for v in self._losses)
            warnings += self._once("flat", flat, f"step {step}: the loss has stayed at ln 2 for {self.window} steps: "
                                                 "the policy is not moving away from the reference (check the lr)")
        stopping = [w for w in warnings if "diverging" in w or "collapsing" in w]
        if self.stop_on_collapse and self.stop_reason is None and stopping:
            self.stop_reason = stopping[0]
        return warnings


@dataclass
class GRPOWatch:
    """Warns when the per-token KL to the reference grows past `kl_limit` (the policy is drifting: lower the
    lr or raise beta), and when every group of completions has had equal rewards for `window` steps in a row
    (advantages all 0: no learning signal)."""

    window: int = 20
    kl_limit: float = 1.0
    _drifting: bool = False
    _equal_steps: int = 0

    def update(self, step: int, row: MetricsRow) -> list[str]:
        kl, equal = row.get("kl"), row.get("frac_reward_zero_std")
        if kl is None or equal is None:
            return []
        warnings = []
        drifting = not math.isfinite(float(kl)) or float(kl) > self.kl_limit
        if drifting and not self._drifting:
            warnings.append(f"step {step}: the KL to the reference is {float(kl):.3g} per completion token, beyond "
                            f"{self.kl_limit:g}: the policy is drifting (lower the lr or raise techniques.grpo.beta)")
        self._drifting = drifting
        self._equal_steps = self._equal_steps + 1 if float(equal) >= 1.0 else 0
        if self._equal_steps == self.window:
            warnings.append(f"step {step}: every group's completions have had equal rewards for {self.window} steps: no "
                            "learning signal (prompts too hard or too easy for the model; check the reward rules, raise "
                            "temperature or num_generations)")
        return warnings

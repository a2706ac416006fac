"""Watches on a stage's per-step metrics that make the card's key risks visible while training:
MoE load imbalance, and DPO divergence or a policy that does not move. Each `update(step, row)`
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
    grows (both likelihoods collapsing), or when the loss sits at ln 2 (the policy is not moving)."""

    window: int = 20
    margin_limit: float = 20.0  # |margin| beyond this (in reward units) counts as diverging
    flat_tolerance: float = 1e-3
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
        for queue, value in ((self._margins, margin), (self._chosen, chosen), (self._losses, row.loss)):
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
            warnings += self._once("collapsing", margin_slope > 0 and chosen_slope < 0 and
                                   self._chosen[-1] < self._chosen[0] - 1.0,
                                   f"step {step}: the chosen log-prob fell by {self._chosen[0] - self._chosen[-1]:.2f} over the "
                                   f"last {self.window} steps while the margin grew: both likelihoods are collapsing")
            flat = all(abs(v - math.log(2)) < self.flat_tolerance for v in self._losses)
            warnings += self._once("flat", flat, f"step {step}: the loss has stayed at ln 2 for {self.window} steps: "
                                                 "the policy is not moving away from the reference (check the lr)")
        return warnings

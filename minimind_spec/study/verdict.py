"""From measurements to verdicts: an effect counts only when it exceeds the noise.

A metric is measured once per seed on each side (base and ablation), each time with its
standard error where the measurement has one (a share of held-out problems, a mean over
held-out tokens, a median step time). The noise a difference must exceed is the larger of the
seed spread (the range over seeds, on either side) and twice the combined standard error.
Metrics that do not vary (a parameter count, bytes saved for backward) are exact: any
difference counts. A verdict is then:

- confirmed: the difference exceeds the noise in the direction the claim predicts;
- contradicted: it exceeds the noise the other way;
- not observed: it does not exceed the noise, or there is nothing to measure it with
  (one seed and no standard error).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from enum import StrEnum
from statistics import fmean


class Verdict(StrEnum):
    CONFIRMED = "confirmed"
    NOT_OBSERVED = "not observed"
    CONTRADICTED = "contradicted"


@dataclass(frozen=True)
class Measure:
    """One metric of one side, over seeds."""

    values: tuple[float, ...]  # one per seed
    errors: tuple[float | None, ...]  # the standard error of each value, when it has one
    exact: bool = False  # a value that does not vary with the seed or the sample

    @property
    def mean(self) -> float:
        return fmean(self.values)

    @property
    def spread(self) -> float:
        """max - min over seeds (0 for one seed)."""
        return max(self.values) - min(self.values)

    @property
    def error(self) -> float | None:
        known = [e for e in self.errors if e is not None]
        return fmean(known) / math.sqrt(len(known)) if known else None  # the standard error of the mean over seeds


@dataclass(frozen=True)
class Comparison:
    base: Measure
    ablation: Measure
    expected: int  # +1 / -1: the direction the claim predicts for ablation - base
    verdict: Verdict
    noise: float | None  # what the difference had to exceed (None: nothing to measure it with)

    @property
    def difference(self) -> float:
        return self.ablation.mean - self.base.mean


def noise_of(base: Measure, ablation: Measure) -> float | None:
    """The larger of the seed spread and twice the combined standard error; 0 for exact metrics;
    None when one seed gives no spread and the metric has no standard error, or either is not finite."""
    if base.exact and ablation.exact:
        return 0.0
    seeds = min(len(base.values), len(ablation.values))
    spread = max(base.spread, ablation.spread) if seeds > 1 else None
    errors = [e for e in (base.error, ablation.error) if e is not None]
    sampling = 2 * math.sqrt(sum(e * e for e in errors)) if len(errors) == 2 else None
    known = [n for n in (spread, sampling) if n is not None]
    return max(known) if known and all(math.isfinite(n) for n in known) else None  # NaN: nothing to judge by


def compare(base: Measure, ablation: Measure, expected: int) -> Comparison:
    noise = noise_of(base, ablation)
    difference = ablation.mean - base.mean
    if noise is None or not math.isfinite(difference) or abs(difference) <= noise:
        verdict = Verdict.NOT_OBSERVED
    else:
        verdict = Verdict.CONFIRMED if (difference > 0) == (expected > 0) else Verdict.CONTRADICTED
    return Comparison(base, ablation, expected, verdict, noise)


def overall(verdicts: list[Verdict]) -> str:
    """One line for an ablation's claims: each verdict with its count."""
    if not verdicts:
        return "no claims to test"
    counts = [(v, verdicts.count(v)) for v in Verdict if verdicts.count(v)]
    if len(counts) == 1:
        return f"{counts[0][0]} ({counts[0][1]} of {len(verdicts)} claims)"
    return ", ".join(f"{n} {v}" for v, n in counts)

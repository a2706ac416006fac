"""Verdicts: a difference counts only beyond the seed spread and twice the combined standard error."""

from __future__ import annotations

import math

import pytest

from minimind_spec.study.verdict import Measure, Verdict, compare, noise_of, overall


def test_one_seed_uses_twice_the_combined_standard_error() -> None:
    base, ablation = Measure((0.50,), (0.03,)), Measure((0.40,), (0.04,))
    assert noise_of(base, ablation) == pytest.approx(2 * math.sqrt(0.03**2 + 0.04**2))  # 0.1
    assert compare(base, ablation, expected=-1).verdict == Verdict.NOT_OBSERVED  # |-0.10| is not beyond 0.10
    assert compare(base, Measure((0.38,), (0.04,)), expected=-1).verdict == Verdict.CONFIRMED
    assert compare(base, Measure((0.38,), (0.04,)), expected=+1).verdict == Verdict.CONTRADICTED


def test_seed_spread_dominates_when_larger() -> None:
    base = Measure((1.0, 1.4, 1.2), (0.01, 0.01, 0.01))  # range 0.4
    ablation = Measure((1.5, 1.6, 1.55), (0.01, 0.01, 0.01))
    assert noise_of(base, ablation) == pytest.approx(0.4)
    assert compare(base, ablation, +1).verdict == Verdict.NOT_OBSERVED  # +0.35 is inside the base's range of 0.4
    further = Measure((1.7, 1.75, 1.8), (0.01, 0.01, 0.01))
    assert compare(base, further, +1).verdict == Verdict.CONFIRMED  # +0.55


def test_one_seed_without_an_error_is_never_a_verdict() -> None:
    base, ablation = Measure((3.0,), (None,)), Measure((9.0,), (None,))
    assert noise_of(base, ablation) is None
    assert compare(base, ablation, +1).verdict == Verdict.NOT_OBSERVED


def test_exact_quantities_count_any_difference() -> None:
    base, ablation = Measure((8.46,), (None,), exact=True), Measure((4.23,), (None,), exact=True)
    result = compare(base, ablation, -1)
    assert result.noise == 0 and result.verdict == Verdict.CONFIRMED and result.difference == pytest.approx(-4.23)
    assert compare(base, Measure((8.46,), (None,), exact=True), -1).verdict == Verdict.NOT_OBSERVED


def test_standard_error_of_the_mean_over_seeds() -> None:
    # three seeds, each with error 0.03: the mean's error is 0.03 / sqrt(3)
    assert Measure((1.0, 1.0, 1.0), (0.03, 0.03, 0.03)).error == pytest.approx(0.03 / math.sqrt(3))


def test_overall_counts_each_verdict() -> None:
    assert overall([Verdict.CONFIRMED, Verdict.CONFIRMED]) == "confirmed (2 of 2 claims)"
    assert overall([Verdict.CONFIRMED, Verdict.NOT_OBSERVED, Verdict.CONFIRMED]) == "2 confirmed, 1 not observed"
    assert overall([]) == "no claims to test"


def test_a_noise_that_is_not_a_number_is_no_evidence() -> None:
    base, ablation = Measure((1.0,), (float("nan"),)), Measure((5.0,), (0.1,))
    assert noise_of(base, ablation) is None
    assert compare(base, ablation, +1).verdict == Verdict.NOT_OBSERVED


def test_report_json_has_no_nan(tmp_path) -> None:  # noqa: ANN001
    import json

    from minimind_spec.study.report import _finite

    data = _finite({"a": float("nan"), "b": [1.0, float("inf")], "c": {"d": 2}})
    assert data == {"a": None, "b": [1.0, None], "c": {"d": 2}}
    json.dumps(data, allow_nan=False)

"""The noise-aware verdict (core/verdicts.py): outcomes, direction, the one line."""

from __future__ import annotations

import pytest

from pytest_madengine.core.verdicts import HistoryPoint, Outcome, judge_history, summarize

# Ten earlier sessions around 100 with about 1 % spread between them.
STEADY = [99.0, 101.0, 100.5, 99.5, 100.0, 98.8, 101.2, 100.2, 99.8, 100.1]


def test_within_the_noise_is_no_change():
    verdict = judge_history([100.4, 99.1, 100.9, 99.7, 100.2], STEADY)
    assert verdict.outcome is Outcome.NO_CHANGE
    assert verdict.low < 0 < verdict.high


def test_a_clear_ten_percent_fall_of_a_throughput_is_a_regression_in_one_line():
    verdict = judge_history([90.2, 89.5, 90.8, 90.0, 89.9], STEADY, tolerance=0.05)
    assert verdict.outcome is Outcome.REGRESSION and verdict.fails
    assert verdict.high < 0 and abs(verdict.change + 0.10) < 0.01
    assert "\n" not in verdict.line
    assert verdict.line.startswith("regression: -10.0% (99% CI ")
    assert "the median of 10 earlier sessions (tolerance 5%)" in verdict.line


def test_for_a_latency_a_rise_is_the_regression_and_a_fall_the_improvement():
    slower = [110.0, 109.5, 110.4, 110.1, 109.8]
    faster = [90.0, 89.5, 90.4, 90.1, 89.8]
    assert judge_history(slower, STEADY, higher_is_better=False).outcome is Outcome.REGRESSION
    assert judge_history(faster, STEADY, higher_is_better=False).outcome is Outcome.IMPROVEMENT
    assert judge_history(faster, STEADY).outcome is Outcome.REGRESSION


def test_a_clear_change_smaller_than_the_tolerance_is_no_change():
    verdict = judge_history([97.0, 97.1, 96.9, 97.0, 97.05], STEADY, tolerance=0.05)
    assert verdict.high < 0  # clear, but it does not matter at 5 %
    assert verdict.outcome is Outcome.NO_CHANGE


def test_a_big_change_inside_wide_noise_is_not_called():
    noisy = [80.0, 125.0, 95.0, 118.0, 85.0, 110.0, 90.0, 120.0, 100.0, 105.0]
    verdict = judge_history([93.0, 88.0, 97.0, 91.0, 95.0], noisy)
    assert verdict.change < -0.05 and verdict.high > 0
    assert verdict.outcome is Outcome.NO_CHANGE


def test_history_samples_widen_the_interval_when_sessions_are_noisy_inside():
    medians_only = judge_history([92.0] * 5, STEADY)
    noisy_runs = [HistoryPoint(m, (m * 0.8, m, m * 1.2)) for m in STEADY]
    with_samples = judge_history([92.0] * 5, noisy_runs)
    assert with_samples.high - with_samples.low > medians_only.high - medians_only.low
    assert with_samples.outcome is Outcome.NO_CHANGE
    assert medians_only.outcome is Outcome.REGRESSION


def test_too_little_history_says_so_and_does_not_fail():
    verdict = judge_history([50.0], STEADY[:3])
    assert verdict.outcome is Outcome.NOT_ENOUGH_HISTORY and not verdict.fails
    assert verdict.line == "not enough history: 3 earlier sessions (verdicts need 5+)"


def test_values_must_be_positive():
    with pytest.raises(ValueError, match="positive"):
        judge_history([0.0], STEADY)
    with pytest.raises(ValueError, match="at least one"):
        judge_history([], STEADY)


def test_summarize_gives_the_median_and_the_spread():
    median, cv = summarize([1.0, 2.0, 3.0])
    assert median == 2.0 and cv == pytest.approx(0.5)
    assert summarize([7.0]) == (7.0, None)

"""Noise-aware verdicts: is this session's result really different from its history?

A single run judged against a single baseline row with a fixed tolerance flags noise:
with a run-to-run spread (CV) of 3 %, the difference of two single runs spreads by about
4.2 %, so a 5 % rule calls roughly one unchanged model in eight a regression. Here a
result is the median of its repetitions, and it is judged against the median of the
medians of earlier comparable sessions, with an interval that accounts for the spread
actually measured.

The statistic, and why (docs/verdicts.md says the same for users):

- Work on log values: performance noise is multiplicative (lognormal), and the change is
  a ratio, `current / history - 1`, so that +10 % and -10 % mean the same everywhere.
- The change is the ratio of the current median to the median of the history's session
  medians. Medians, because a stray repetition (a neighbour's burst, a clock dip) must
  not move the verdict.
- Its confidence interval is a normal interval on the log ratio, `z * sqrt(se_current**2
  + se_history**2)`. The noise of one session's median is measured twice, and the larger
  is used: by the spread of the earlier session medians (which sees session-to-session
  drift, clocks and thermals, that repetitions within one container cannot show), and by
  the within-session spread of the repetitions (the current ones, pooled with the
  history's where they are known) scaled to a median of the current repeat count
  (1.2533 sigma / sqrt(n), the standard error of a median). The history's own centre
  has the error of a median of its points.
- A regression needs both: the interval lies wholly on the worse side of no change (it is
  statistically clear), and the change itself is at least the tolerance (it matters). An
  improvement is the mirror. Anything else is no change.

Why not a bootstrap interval of the ratio of medians: with 5 repetitions the bootstrap
distribution of a median takes only a handful of values, its interval comes out too
narrow, and resampling the current repetitions cannot see the drift between sessions at
all; the interval above is deterministic (no seed) and measured against
`bench/verdicts.py`. Why not Mann-Whitney: it compares the repetitions, not the medians
that are recorded, and the history is mostly medians without their samples.

`statistics.NormalDist` gives the quantile; no numpy.
"""

from __future__ import annotations

import enum
import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass

DEFAULT_CONFIDENCE = 0.99
DEFAULT_MIN_HISTORY = 5  # fewer earlier sessions than this: not enough history
# sqrt(pi / 2): the standard error of a median is this times sigma / sqrt(n).
MEDIAN_EFFICIENCY = 1.2533


class Outcome(enum.Enum):
    REGRESSION = "regression"
    IMPROVEMENT = "improvement"
    NO_CHANGE = "no change"
    NOT_ENOUGH_HISTORY = "not enough history"


@dataclass(frozen=True)
class ResultKey:
    """What makes two results comparable: the same model, args, Dockerfile, GPU
    architecture and metric (a multiple_results row's model is `<model>_<row model>`).
    The results history files results under it and --mad-compare looks them up by it."""

    model: str
    args: str
    docker_file: str
    gpu_architecture: str
    metric: str


@dataclass(frozen=True)
class HistoryPoint:
    """One earlier comparable session's result: its median, and its samples where known."""

    median: float
    samples: tuple[float, ...] = ()


@dataclass(frozen=True)
class Verdict:
    """The outcome, the change (current / history - 1) and its interval, the history used."""

    outcome: Outcome
    current: float  # the median of the current samples
    history_median: float | None  # the median of the history's medians
    history_used: int
    change: float | None = None
    low: float | None = None  # the interval of `change`
    high: float | None = None
    confidence: float = DEFAULT_CONFIDENCE
    tolerance: float = 0.05

    @property
    def fails(self) -> bool:
        return self.outcome is Outcome.REGRESSION

    @property
    def line(self) -> str:
        """One line for a failure message, a terminal note or a report cell."""
        sessions = f"{self.history_used} earlier session{'s' if self.history_used != 1 else ''}"
        if self.change is None or self.history_median is None:
            return f"{self.outcome.value}: {sessions} (verdicts need {DEFAULT_MIN_HISTORY}+)"
        return (
            f"{self.outcome.value}: {_percent(self.change)}"
            f" ({self.confidence * 100:g}% CI {_percent(self.low)} .. {_percent(self.high)})"
            f", median {_number(self.current)} against {_number(self.history_median)},"
            f" the median of {sessions} (tolerance {self.tolerance * 100:g}%)"
        )


def _percent(value: float | None) -> str:
    return "?" if value is None else f"{value * 100:+.1f}%"


def _number(value: float) -> str:
    return f"{value:.4g}"


def summarize(samples: Sequence[float]) -> tuple[float, float | None]:
    """The median of repetitions and their coefficient of variation (None for one)."""
    median = statistics.median(samples)
    if len(samples) < 2 or median == 0:
        return median, None
    return median, statistics.stdev(samples) / abs(statistics.fmean(samples))


def median_interval(
    samples: Sequence[float], confidence: float = 0.95
) -> tuple[float, float] | None:
    """A normal-theory interval of the median of repetitions (on logs), None below 2."""
    if len(samples) < 2 or any(value <= 0 for value in samples):
        return None
    logs = [math.log(value) for value in samples]
    half = _z(confidence) * MEDIAN_EFFICIENCY * statistics.stdev(logs) / math.sqrt(len(samples))
    centre = math.log(statistics.median(samples))
    return math.exp(centre - half), math.exp(centre + half)


def _z(confidence: float) -> float:
    return statistics.NormalDist().inv_cdf(0.5 + confidence / 2)


def _pooled_log_sigma(groups: Sequence[Sequence[float]]) -> float | None:
    """The within-session spread (log sigma) pooled over groups of 2+ repetitions."""
    squares, freedom = 0.0, 0
    for group in groups:
        if len(group) >= 2:
            squares += statistics.variance([math.log(v) for v in group]) * (len(group) - 1)
            freedom += len(group) - 1
    return math.sqrt(squares / freedom) if freedom else None


def _log_standard_error(current: Sequence[float], history: Sequence[HistoryPoint]) -> float:
    """The standard error of log(current median) - log(history median)."""
    log_medians = [math.log(point.median) for point in history]
    between = statistics.stdev(log_medians) if len(log_medians) >= 2 else 0.0
    within = _pooled_log_sigma([current, *(point.samples for point in history)])
    within_of_median = (
        0.0 if within is None else MEDIAN_EFFICIENCY * within / math.sqrt(len(current))
    )
    se_current = max(between, within_of_median)
    se_history = MEDIAN_EFFICIENCY * between / math.sqrt(len(history))
    return math.hypot(se_current, se_history)


def judge_history(
    current: Sequence[float],
    history: Sequence[HistoryPoint | float],
    *,
    tolerance: float = 0.05,
    higher_is_better: bool = True,
    confidence: float = DEFAULT_CONFIDENCE,
    min_history: int = DEFAULT_MIN_HISTORY,
) -> Verdict:
    """Judges the current repetitions against earlier comparable sessions.

    `history` holds one point per earlier session (a bare number is a median without
    samples). Values must be positive: a verdict is about ratios.
    """
    if not current:
        raise ValueError("a verdict needs at least one current sample")
    points = [p if isinstance(p, HistoryPoint) else HistoryPoint(float(p)) for p in history]
    values = [*current, *(p.median for p in points), *(v for p in points for v in p.samples)]
    if any(not value > 0 for value in values):
        raise ValueError("verdicts compare ratios: every value must be a positive number")
    current_median = statistics.median(current)
    base = dict(current=current_median, confidence=confidence, tolerance=tolerance)
    if len(points) < max(min_history, 2):
        return Verdict(Outcome.NOT_ENOUGH_HISTORY, history_median=None,
                       history_used=len(points), **base)  # fmt: skip
    history_median = statistics.median(p.median for p in points)
    log_change = math.log(current_median / history_median)
    half = _z(confidence) * _log_standard_error(current, points)
    bounds = (log_change, log_change - half, log_change + half)
    change, low, high = (math.exp(bound) - 1 for bound in bounds)
    # On the worse side: a fall for throughput, a rise for a latency.
    worse, worse_low = (-change, -high) if higher_is_better else (change, low)
    better, better_low = (change, low) if higher_is_better else (-change, -high)
    if worse_low > 0 and worse >= tolerance:
        outcome = Outcome.REGRESSION
    elif better_low > 0 and better >= tolerance:
        outcome = Outcome.IMPROVEMENT
    else:
        outcome = Outcome.NO_CHANGE
    return Verdict(outcome, history_median=history_median, history_used=len(points),
                   change=change, low=low, high=high, **base)  # fmt: skip

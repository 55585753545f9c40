"""How often the noise-aware verdict cries wolf, and how often it catches a regression.

Feeds the real verdict code (pytest_madengine/core/verdicts.py) synthetic series:
lognormal noise of CV 1 %, 3 % and 5 %; a step (a fall of the throughput) of 0, 5 % and
10 %; 1,000 trials each, every trial a fresh history of sessions (each the median of its
repeats, samples kept) and a current session of the same repeats. Beside it, the
single-run rule it replaces: one run against one baseline run, a regression when it
falls by more than the tolerance. Seeded: the same figures every time.

Prints one table: the rate each rule flags a regression (a false alarm where the step is
0, a detection otherwise). Target: at CV 3 %, 5 repeats, 10 history points, false alarms
<= 1 % and detection >= 95 % of a 10 % regression; exits 1 when it is missed.

    python bench/verdicts.py [--trials 1000] [--history 10] [--repeat 5] [--tolerance 0.05]
"""

from __future__ import annotations

import argparse
import math
import random
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from pytest_madengine.core.verdicts import HistoryPoint, Outcome, judge_history

CVS = (0.01, 0.03, 0.05)
STEPS = (0.0, 0.05, 0.10)
TRUE_VALUE = 1000.0


def noisy(rng: random.Random, cv: float, count: int, scale: float = 1.0) -> list[float]:
    """`count` lognormal samples of mean-ish TRUE_VALUE * scale with this CV."""
    sigma = math.sqrt(math.log(1 + cv * cv))
    return [TRUE_VALUE * scale * rng.lognormvariate(0.0, sigma) for _ in range(count)]


def rates(args: argparse.Namespace, cv: float, step: float) -> tuple[float, float]:
    """(verdict's flag rate, single-run rule's flag rate) over the trials."""
    rng = random.Random(f"{cv}/{step}")
    verdict_flags = single_flags = 0
    for _ in range(args.trials):
        history = []
        for _ in range(args.history):
            samples = noisy(rng, cv, args.repeat)
            history.append(HistoryPoint(statistics.median(samples), tuple(samples)))
        current = noisy(rng, cv, args.repeat, scale=1 - step)
        verdict = judge_history(current, history, tolerance=args.tolerance)
        verdict_flags += verdict.outcome is Outcome.REGRESSION
        baseline_run, current_run = noisy(rng, cv, 1)[0], noisy(rng, cv, 1, 1 - step)[0]
        single_flags += (baseline_run - current_run) / baseline_run > args.tolerance
    return verdict_flags / args.trials, single_flags / args.trials


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=1000)
    parser.add_argument("--history", type=int, default=10, help="earlier sessions")
    parser.add_argument("--repeat", type=int, default=5, help="repeats per session")
    parser.add_argument("--tolerance", type=float, default=0.05)
    args = parser.parse_args()
    print(f"{args.trials} trials each; history {args.history} sessions; repeat {args.repeat};"
          f" tolerance {args.tolerance:.0%}")  # fmt: skip
    print(f"{'CV':>4} {'step':>5} | {'verdict flags':>13} | {'single-run 5% rule':>18}")
    figures = {}
    for cv in CVS:
        for step in STEPS:
            figures[cv, step] = rates(args, cv, step)
            verdict_rate, single_rate = figures[cv, step]
            kind = "false alarms" if step == 0 else "detected"
            print(f"{cv:>4.0%} {step:>5.0%} | {verdict_rate:>13.1%} | {single_rate:>18.1%}"
                  f"   ({kind})")  # fmt: skip
    false_alarms, detection = figures[0.03, 0.0][0], figures[0.03, 0.10][0]
    met = false_alarms <= 0.01 and detection >= 0.95
    print(
        f"target at CV 3%: false alarms {false_alarms:.1%} (<= 1%), detection of -10%"
        f" {detection:.1%} (>= 95%): {'met' if met else 'MISSED'}"
    )
    return 0 if met else 1


if __name__ == "__main__":
    sys.exit(main())

"""Repeated measurements (--mad-repeat, --mad-warmup) on the real Docker engine."""

from __future__ import annotations

import json

import pytest

from tests.conftest import entry
from tests.e2e.test_run import junit_properties, read_perf, run, scripts, unique_tree

pytestmark = [pytest.mark.docker]

# Each run in the one container prints the next value of its list: the warm-up's 1000
# must not count, the repetitions' median is 20.
COUNTING = """#!/bin/sh
count=$(cat /tmp/runs 2>/dev/null || echo 0)
count=$((count + 1))
echo "$count" > /tmp/runs
set -- 1000 10 30 20
shift $((count - 1))
echo "performance: $1 fps"
"""


def test_repeats_record_the_median_and_keep_every_sample(pytester: pytest.Pytester) -> None:
    unique_tree(pytester, [entry("counted", scripts="scripts/dummy/counted.sh")],
                scripts(counted=COUNTING))  # fmt: skip
    result = run(pytester, "--mad-tags", "counted", "--mad-repeat", "3", "--mad-warmup", "1",
                 "--junitxml", "r.xml", "--mad-summary", "s.json")  # fmt: skip
    result.assert_outcomes(passed=1)
    perf = read_perf(pytester.path / "perf.csv")
    assert [(row["model"], row["performance"]) for row in perf] == [("counted", "20")]
    assert "samples" not in perf[0]  # perf.csv keeps madengine's columns
    (super_row,) = read_perf(pytester.path / "perf_super.csv")
    assert (super_row["performance"], super_row["samples"]) == ("20", "10 30 20")
    assert super_row["cv"] == "50.00%" and ".." in super_row["ci95"]
    properties = junit_properties(pytester.path / "r.xml")["counted"]
    assert (properties["performance"], properties["samples"]) == ("20", "10 30 20")
    (summary,) = json.loads((pytester.path / "s.json").read_text())["results"]
    assert summary["samples"] == [10, 30, 20] and summary["cv"] == "50.00%"


def test_a_repetition_without_its_performance_line_fails_in_one_line(
    pytester: pytest.Pytester,
) -> None:
    script = COUNTING.replace(
        'echo "performance: $1 fps"', '[ "$1" = 30 ] || echo "performance: $1 fps"'
    )
    unique_tree(pytester, [entry("gappy", scripts="scripts/dummy/gappy.sh", warmup=1, repeat=3)],
                scripts(gappy=script))  # fmt: skip
    result = run(pytester, "--mad-tags", "gappy")
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(["*repetition 2 of 3: no performance line in the log*"])

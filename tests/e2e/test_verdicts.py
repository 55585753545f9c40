"""Repeated measurements (--mad-repeat, --mad-warmup) on the real Docker engine."""

from __future__ import annotations

import csv
import fnmatch
import json
import math
import random
import statistics
from pathlib import Path

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


# Prints the repetition's value from the values file the test writes before each session.
NOISY = """#!/bin/sh
count=$(cat /tmp/runs 2>/dev/null || echo 0)
count=$((count + 1))
echo "$count" > /tmp/runs
value=$(sed -n "${count}p" "$(dirname "$0")/values")
awk -v v="$value" -v s="${SLOWDOWN:-1}" 'BEGIN { printf "performance: %.4f fps\\n", v * s }'
"""
VALUE_OF = '#!/bin/sh\necho "performance: {} fps"\n'
SPREAD = 0.03  # the model's run-to-run spread (lognormal sigma, about its CV)
REPEAT = 5


def noisy_values(tree: Path, session: int) -> list[float]:
    """This session's repetitions: lognormal around 100 with a 3 % spread. Seeded by the
    session's number, so that the test is the same on every run and machine (the same
    noise a clock-seeded draw gives, without a one-in-hundreds flaky run)."""
    draw = random.Random(f"noisy-{session}")
    values = [draw.lognormvariate(math.log(100.0), SPREAD) for _ in range(REPEAT)]
    (tree / "scripts" / "dummy" / "values").write_text("".join(f"{v:.4f}\n" for v in values))
    return values


def test_noisy_results_pass_ten_sessions_against_their_history_and_a_slower_build_fails(
    pytester: pytest.Pytester,
) -> None:
    """--mad-compare perf.csv, the session's own perf.csv: each session judges its result
    against the rows of the sessions before it (never its own), and appends its row."""
    tree = unique_tree(pytester, [entry("noisy", scripts="scripts/dummy/noisy.sh")],
                       scripts(noisy=NOISY))  # fmt: skip
    drawn = []
    for session in range(10):
        drawn += noisy_values(tree, session)
        result = run(pytester, "--mad-tags", "noisy", "--mad-repeat", str(REPEAT),
                     "--mad-compare", "perf.csv", "--junitxml", "r.xml")  # fmt: skip
        result.assert_outcomes(passed=1)
        verdict = junit_properties(pytester.path / "r.xml")["noisy"]["verdict"]
        if session < 5:
            assert verdict.startswith(f"not enough history: {session} earlier session"), verdict
        else:
            assert verdict.startswith("no change: "), verdict
            assert f"the median of {session} earlier sessions" in verdict
    assert 0.02 < statistics.stdev(drawn) / statistics.fmean(drawn) < 0.04  # noisy indeed
    assert len(read_perf(pytester.path / "perf.csv")) == 10

    # The same model, built 10 % slower: one line says by how much, against what.
    dockerfile = tree / "docker" / "dummy.ubuntu.amd.Dockerfile"
    dockerfile.write_text(dockerfile.read_text() + "ENV SLOWDOWN=0.9\n")
    noisy_values(tree, 10)
    result = run(pytester, "--mad-tags", "noisy", "--mad-repeat", str(REPEAT),
                 "--mad-compare", "perf.csv", "--mad-summary", "s.json",
                 "--mad-html", "r.html")  # fmt: skip
    result.assert_outcomes(failed=1)
    (reason,) = [line for line in result.stdout.lines if line.startswith("regression:")]
    assert fnmatch.fnmatch(
        reason, "regression: -1*% (99% CI -*% .. -*%), median * against *,"
        " the median of 10 earlier sessions (tolerance 5%); history: perf.csv"
    ), reason  # fmt: skip
    result.stdout.fnmatch_lines(["*model*status*series*verdict*",
                                 "noisy*FAILURE*fps*|*regression: -1*"])  # fmt: skip
    (summary,) = json.loads((pytester.path / "s.json").read_text())["results"]
    assert summary["verdict"]["outcome"] == "regression"
    assert len(summary["verdict"]["history"]) == 10
    rows = read_perf(pytester.path / "perf.csv")
    assert [row["status"] for row in rows] == ["SUCCESS"] * 10 + ["FAILURE"]
    assert read_perf(pytester.path / "perf_super.csv")[-1]["verdict"].startswith("regression:")
    page = (pytester.path / "r.html").read_text()
    assert "Verdicts against the history" in page and 'class="current"' in page


def test_under_xdist_each_worker_judges_against_the_history_as_the_session_began(
    pytester: pytest.Pytester,
) -> None:
    """Workers read the perf.csv as far as the controller did: the rows the session
    appends meanwhile (the other worker's result) are never history."""
    unique_tree(
        pytester,
        [entry("steady", scripts="scripts/dummy/steady.sh"),
         entry("slow", scripts="scripts/dummy/slow.sh")],
        scripts(steady=VALUE_OF.format(100), slow=VALUE_OF.format(100)),
    )  # fmt: skip
    run(pytester, "--mad-tags", "steady,slow").assert_outcomes(passed=2)
    perf = pytester.path / "perf.csv"
    first = read_perf(perf)
    with perf.open("a", newline="") as handle:  # five earlier sessions around 100
        writer = csv.DictWriter(handle, list(first[0]))
        for value in ("99", "101", "100.5", "99.5", "100"):
            writer.writerows({**row, "performance": value} for row in first)
    (pytester.path / "scripts" / "dummy" / "slow.sh").write_text(VALUE_OF.format(80))
    result = run(pytester, "-n", "2", "--mad-tags", "steady,slow", "--mad-compare", "perf.csv",
                 "--junitxml", "r.xml")  # fmt: skip
    result.assert_outcomes(passed=1, failed=1)
    verdicts = {name: props["verdict"]
                for name, props in junit_properties(pytester.path / "r.xml").items()}  # fmt: skip
    assert verdicts["steady"].startswith("no change: +0.0%"), verdicts
    assert verdicts["slow"].startswith("regression: -20.0%"), verdicts
    assert all("the median of 6 earlier sessions" in line for line in verdicts.values())
    assert len(read_perf(perf)) == 14

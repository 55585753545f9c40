"""Bad input to the `madengine` command and its reports, as a hostile user gives it:
one line naming the option or file, exit 4 for a usage error before anything runs,
never a traceback, and memory and page size bounded whatever the input.

Cases of issue 20 (items 4, 9 and 11).
"""

from __future__ import annotations

import os
import re
import shlex
import sys
from pathlib import Path

import pytest

from pytest_madengine.core.option_table import MADENGINE_UNSUPPORTED
from pytest_madengine.errors import MadError
from pytest_madengine.reporting import html
from tests.conftest import entry, write_tree
from tests.unit.test_report import perf_csv

# An address space the command's imports fit in: an input read without bounds fails
# here at once instead of taking the machine's memory (/dev/zero took 12 GB in 15 s).
MEMORY_CAP_KB = 2_000_000
USAGE = 4


def madengine(pytester: pytest.Pytester, *args: str, timeout: float = 120) -> pytest.RunResult:
    command = shlex.join([sys.executable, "-m", "pytest_madengine", *args])
    return pytester.run("sh", "-c", f"ulimit -v {MEMORY_CAP_KB}; exec {command}", timeout=timeout)


def said(result: pytest.RunResult) -> str:
    return result.stdout.str() + result.stderr.str()


def one_line(result: pytest.RunResult, code: int, line: str) -> None:
    """Exit `code` and `line` (fnmatch) said on stderr, without a traceback."""
    assert result.ret == code, said(result)
    result.stderr.fnmatch_lines([line])
    assert "Traceback" not in said(result)


@pytest.fixture
def inputs(pytester: pytest.Pytester) -> Path:
    """A FIFO nobody writes, a directory, a perf.csv, a JUnit file that is not UTF-8."""
    os.mkfifo(pytester.path / "fifo")
    (pytester.path / "adir").mkdir()
    perf_csv(pytester.path / "ok.csv", [{"model": "a", "performance": "1", "metric": "fps",
                                         "status": "SUCCESS"}])  # fmt: skip
    (pytester.path / "b.xml").write_bytes(b'<testsuites><testsuite name="\xff\xfe"/></testsuites>')
    return pytester.path


@pytest.mark.parametrize(
    ("args", "line"),
    [
        (["html", "/dev/zero"], "madengine: /dev/zero: a line longer than 1 MiB"),
        (["html", "fifo"], "madengine: fifo: empty, where a perf.csv was expected"),
        (["html", "adir"], "madengine: adir: is a directory"),
        (["html", "ok.csv", "--baseline", "/dev/zero"],
         "madengine: --baseline /dev/zero: a line longer than 1 MiB"),
        (["html", "ok.csv", "--baseline", "fifo"],
         "madengine: --baseline fifo: missing column(s) *"),
        (["html", "ok.csv", "--baseline", "nope.csv"],
         "madengine: --baseline nope.csv: no such file"),
        (["csv-merge", "/dev/zero", "-o", "m.csv"],
         "madengine: /dev/zero: a line longer than 1 MiB"),
        (["csv-merge", "ok.csv", "fifo", "-o", "m.csv"],
         "madengine: fifo: empty, where a CSV with a header was expected"),
        (["csv-merge", "adir", "-o", "m.csv"], "madengine: adir: is a directory"),
        (["junit-merge", "/dev/zero", "-o", "m.xml"], "madengine: /dev/zero: larger than 256 MiB"),
        (["junit-merge", "fifo", "-o", "m.xml"], "madengine: fifo: not a JUnit XML file (*)"),
        (["junit-merge", "adir", "-o", "m.xml"], "madengine: adir: is a directory"),
        (["junit-merge", "b.xml", "-o", "m.xml"],
         "madengine: b.xml: not a JUnit XML file (Invalid bytes in character encoding*)"),
    ],
)  # fmt: skip
def test_report_inputs_are_read_bounded_and_told_in_one_line(
    pytester: pytest.Pytester, inputs: Path, args: list[str], line: str
) -> None:
    result = madengine(pytester, "report", *args, timeout=60)  # a wait for ever fails here
    one_line(result, 1, line)
    assert not (inputs / "m.csv").exists() and not (inputs / "m.xml").exists()


@pytest.mark.parametrize(
    ("args", "line"),
    [
        (["html", "ok.csv", "-o", "adir/"], "madengine: --output adir: is a directory"),
        (["html", "ok.csv", "-o", "/proc/r.html"],
         "madengine: --output /proc/r.html: not writable*"),
        (["csv-merge", "ok.csv", "-o", "/proc/x.csv"],
         "madengine: --output /proc/x.csv: not writable*"),
        (["junit-merge", "ok.csv", "-o", "adir"], "madengine: --output adir: is a directory"),
        (["to-email", "--output", "/proc/r.html"],
         "madengine: --output /proc/r.html: not writable*"),
    ],
)  # fmt: skip
def test_report_outputs_that_cannot_be_written_are_usage_errors_up_front(
    pytester: pytest.Pytester, inputs: Path, args: list[str], line: str
) -> None:
    one_line(madengine(pytester, "report", *args), USAGE, line)


def history(path: Path, models: int, hosts: int, runs: int) -> Path:
    """`runs` results of each model on each host; run r of every series is worth r."""
    rows = [
        {"model": f"m{model}", "machine_name": f"h{host}", "performance": str(run),
         "metric": "fps", "status": "SUCCESS", "build_number": str(run)}
        for run in range(1, runs + 1) for model in range(models) for host in range(hosts)
    ]  # fmt: skip
    return perf_csv(path, rows)


def test_a_long_history_is_drawn_within_bounds_and_the_page_says_so(tmp_path: Path) -> None:
    path = history(tmp_path / "perf.csv", models=3, hosts=2, runs=300)
    limits = html.ReportLimits(points_per_chart=40, hosts_per_chart=1, charts=2, table_rows=4)
    page = html.render_report([path], limits=limits)
    charts = re.findall(r"<svg.*?</svg>", page, re.S)
    assert len(charts) == 2  # of 3 models
    assert [chart.count("<circle") for chart in charts] == [40, 40]  # of 300 runs each
    # Run order kept: the first point stands for runs 1-7 (values 1..7): their median.
    assert "h0, run 7: 4 fps (median of runs 1-7, min 1, max 7)" in charts[0]
    assert "up to 8 runs a point: median, bar min to max" in charts[0]
    assert page.count("<tr class=") == 4  # of 6 model and host pairs
    for note in ("Charts draw at most 40 points each: in 2 series with more runs",
                 "Charts of 1 more model(s) are not drawn (at most 2).",
                 "2 more host series are not drawn (at most 1 hosts a chart).",
                 "The table shows 4 of 6 model and host pairs"):  # fmt: skip
        assert note in page
    assert ">300</td>" in page  # the table still counts every run


def test_input_past_the_row_cap_is_refused_in_one_line(tmp_path: Path) -> None:
    path = history(tmp_path / "perf.csv", models=1, hosts=1, runs=120_000)  # chunks of 50 000
    with pytest.raises(MadError, match=r"perf.csv: more than 100000 result rows in all"):
        html.render_report([path], limits=html.ReportLimits(max_rows=100_000))


# `madengine run` and `build`: paths the run session would refuse, and pass-through
# options that the command's own options set.


@pytest.fixture
def tree(pytester: pytest.Pytester) -> Path:
    write_tree(pytester.path, [entry("alpha"), entry("beta")])
    (pytester.path / "afile").write_text("")
    (pytester.path / "tools.json").write_text("{not json")
    return pytester.path


@pytest.mark.parametrize(
    ("args", "line"),
    [
        (["-o", "adir"], "madengine: --output adir: is a directory"),
        (["-s", "/proc/s.json"], "madengine: --summary-output /proc/s.json: not writable*"),
        (["--force-mirror-local", "afile"],
         "madengine: --force-mirror-local afile: exists and is not a directory"),
        (["--tools-config", "tools.json"], "madengine: tools.json:1:2: invalid JSON*"),
        (["-o", "p1.csv", "--", "--mad-perf-csv", "p2.csv"],
         "madengine: --mad-perf-csv after --: the command sets it; give --output instead"),
        (["--", "--mad-tags=beta"],
         "madengine: --mad-tags after --: the command sets it; give --tags instead"),
    ],
)  # fmt: skip
def test_run_refuses_bad_paths_and_duplicate_options_before_it_builds(
    pytester: pytest.Pytester, tree: Path, args: list[str], line: str
) -> None:
    (tree / "adir").mkdir()
    result = madengine(pytester, "run", "-t", "alpha", *args)
    one_line(result, USAGE, line)
    assert "Build results" not in said(result)  # no build phase ran first


def test_build_refuses_a_pass_through_option_it_sets(pytester: pytest.Pytester, tree: Path):
    result = madengine(pytester, "build", "-t", "alpha", "--", "--mad-registry", "elsewhere:5000")
    one_line(result, USAGE, "madengine: --mad-registry after --: * give --registry instead")


# madengine's options that we refuse: each given with madengine's own argument syntax
# (a value, a repeated list, a flag), so that what the user sees is our reason in one
# line and exit 4 before anything runs, not the parser's "No such option".
REFUSED_AS_GIVEN = {
    "--target-archs": ["build", "--target-archs", "gfx942", "-a", "gfx90a"],
    "--use-image": ["build", "--use-image", "auto"],
    "--build-on-compute": ["build", "--build-on-compute", "--registry", "localhost:5000"],
    "--sys-env-details": ["run", "--sys-env-details"],
}


@pytest.mark.parametrize("option", sorted(MADENGINE_UNSUPPORTED))
def test_a_refused_madengine_option_is_one_line_naming_it_and_why(
    pytester: pytest.Pytester, tree: Path, option: str
) -> None:
    command, *args = REFUSED_AS_GIVEN[option]
    result = madengine(pytester, command, "-t", "alpha", *args)
    reason = MADENGINE_UNSUPPORTED[option]
    one_line(result, USAGE, f"madengine: {command} {option} is not supported: {reason}")
    assert len(result.stderr.lines) == 1, said(result)
    assert "Build results" not in said(result)  # refused before any session


@pytest.mark.parametrize(
    ("args", "code", "line"),
    [
        (["--single_result", "e.json", "--exception-result", "e.json"], USAGE,
         "madengine: --single_result and --exception-result: give one result file at a time"),
        (["--multiple-results", "ok.csv"], USAGE,
         "madengine: --multiple-results needs --model-name (the rows' name prefix)"),
        (["--single_result", "e.json", "--perf-csv", "adir"], USAGE,
         "madengine: --perf-csv adir: is a directory"),
        (["--single_result", "/dev/zero"], 1, "madengine: --single_result /dev/zero: larger *"),
        (["--single_result", "fifo"], 1, "madengine: fifo: empty, where JSON was expected"),
        (["--failed-result", "nope.json"], 1, "madengine: --failed-result nope.json: No such*"),
        (["--single_result", "list.json"], 1,
         "madengine: --single_result list.json: expected a JSON object of perf.csv columns"),
        (["--multiple-results", "b.xml", "--model-name", "m"], 1,
         "madengine: --multiple-results b.xml: not UTF-8 text*"),
        (["--multiple-results", "e.json", "--model-name", "m"], 1,
         "madengine: --multiple-results e.json: missing column(s) metric, model, performance*"),
        (["--multiple-results", "ok.csv", "--model-name", "m", "--common-info", "list.json"], 1,
         "madengine: --common-info list.json: expected a JSON object of perf.csv columns"),
    ],
)  # fmt: skip
def test_update_perf_inputs_are_told_in_one_line_and_perf_csv_is_left_alone(
    pytester: pytest.Pytester, inputs: Path, args: list[str], code: int, line: str
) -> None:
    (inputs / "e.json").write_text('{"model": "m", "performance": 1}')
    (inputs / "list.json").write_text('[{"model": "m"}, 7]')
    perf = (inputs / "ok.csv").read_bytes()
    result = madengine(pytester, "report", "update-perf", "--perf-csv", "ok.csv", *args,
                       timeout=60)  # fmt: skip
    one_line(result, code, line)
    assert (inputs / "ok.csv").read_bytes() == perf

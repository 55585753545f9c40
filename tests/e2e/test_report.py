"""Reports people look at: the HTML report in a real headless browser, the pytest
option that writes it, and the JUnit we write checked against the CI schema."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from lxml import etree

from pytest_madengine.cli.app import invoke
from tests.browser import visit
from tests.conftest import entry
from tests.e2e.test_run import FAIL, VALUE, run, scripts, unique_tree
from tests.unit.test_report import perf_csv, row

SCHEMA = Path(__file__).resolve().parents[1] / "data" / "junit.xsd"
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def nightly_runs(directory: Path) -> list[Path]:
    """Three nights of two hosts: the report's charts, table and a regression."""
    runs = []
    for night, values in enumerate([(1510, 1490, 41.0), (1525, 1502, 40.2), (1530, 1310, 39.8)]):
        train, infer, latency = values
        runs.append(perf_csv(directory / f"perf_night{night + 1}.csv", [
            row("pyt_bert_training", "mi300x-node1", str(train), metric="samples_per_second"),
            row("pyt_bert_training", "mi300x-node2", str(infer), metric="samples_per_second"),
            row("vllm_llama_latency", "mi300x-node1", str(latency), metric="ms"),
            row("dummy_fail", "mi300x-node1", "", "FAILURE", ""),
            row("dummy_nvidia_only", "mi300x-node2", "", "SKIPPED", ""),
        ]))  # fmt: skip
    return runs


def test_the_html_report_renders_in_a_headless_browser_without_console_errors(
    tmp_path: Path, chromium: str
) -> None:
    runs = nightly_runs(tmp_path)
    baseline = perf_csv(tmp_path / "baseline.csv", [
        row("pyt_bert_training", "mi300x-node1", "1500"),
        row("vllm_llama_latency", "mi300x-node1", "40"),
    ])  # fmt: skip
    output = tmp_path / "report.html"
    code = invoke(["report", "html", *map(str, runs), "-o", str(output),
                   "--baseline", str(baseline), "--lower-is-better", "ms",
                   "--title", "Nightly MI300X"])  # fmt: skip
    assert code == 0
    page = visit(chromium, output.as_uri(), tmp_path / "profile", {
        "charts": "document.querySelectorAll('svg').length",
        "regressions": "document.querySelectorAll('tr.regression').length",
        "title": "document.title",
        "height": "document.body.scrollHeight",
    })  # fmt: skip
    assert page.problems == [] and page.messages == []
    assert page.values == {"charts": 2, "regressions": 1, "title": "Nightly MI300X",
                           "height": page.values["height"]}  # fmt: skip
    assert page.screenshot.startswith(PNG_SIGNATURE) and len(page.screenshot) > 20_000
    if os.environ.get("MAD_SCREENSHOT"):  # how docs/report.png is made
        Path(os.environ["MAD_SCREENSHOT"]).write_bytes(page.screenshot)


def test_the_browser_check_sees_console_errors_and_failed_loads(
    tmp_path: Path, chromium: str
) -> None:
    """The check above passes because the page is clean, not because it sees nothing."""
    page = tmp_path / "broken.html"
    page.write_text('<!DOCTYPE html><title>x</title><img src="missing.png">'
                    '<script>console.error("boom"); undefined_call();</script>')  # fmt: skip
    problems = visit(chromium, page.as_uri(), tmp_path / "profile").problems
    assert any("boom" in problem for problem in problems)
    assert any("undefined_call" in problem for problem in problems)
    assert any("missing.png" in problem for problem in problems)


@pytest.mark.docker
@pytest.mark.usefixtures("docker_client")
def test_a_session_writes_its_html_report_with_the_regression(pytester: pytest.Pytester) -> None:
    unique_tree(pytester, [entry("dummy", args="90", scripts="scripts/dummy/value.sh")],
                scripts(value=VALUE))  # fmt: skip
    perf_csv(pytester.path / "old.csv", [row("dummy", "", "100", metric="samples_per_second")])
    result = run(pytester, "--mad-tags", "dummy", "--mad-baseline", "old.csv",
                 "--mad-html", "out/report.html")  # fmt: skip
    result.assert_outcomes(failed=1)  # 90 against 100: a regression
    result.stdout.fnmatch_lines(["madengine: HTML report */out/report.html"])
    html = (pytester.path / "out" / "report.html").read_text()
    assert html.count('<tr class="regression">') == 1 and "-10.0%" in html


@pytest.mark.docker
@pytest.mark.usefixtures("docker_client")
def test_our_junit_validates_against_the_ci_schema(pytester: pytest.Pytester) -> None:
    schema = etree.XMLSchema(etree.parse(str(SCHEMA)))
    models = [entry("passes"), entry("fails", scripts="scripts/dummy/fail.sh"),
              entry("skipped", dockerfile="docker/none")]  # fmt: skip
    unique_tree(pytester, models, {"docker/none.ubuntu.cuda.Dockerfile":
                                   "# CONTEXT {'gpu_vendor': 'NVIDIA'}\nFROM scratch\n",
                                   **scripts(fail=FAIL)})  # fmt: skip
    run(pytester, "--mad-tags", "dummies", "--junitxml", "run.xml").assert_outcomes(
        passed=1, failed=1, skipped=1
    )
    run(pytester, "--mad-build-only", "--mad-tags", "passes", "--junitxml", "build.xml")
    merged = ["report", "junit-merge", *(str(pytester.path / name) for name in
              ("run.xml", "build.xml")), "-o", str(pytester.path / "all.xml")]  # fmt: skip
    assert invoke(merged) == 0
    for name in ("run.xml", "build.xml", "all.xml"):
        document = etree.parse(str(pytester.path / name))
        assert schema.validate(document), (name, schema.error_log.last_error)
    assert len(etree.parse(str(pytester.path / "run.xml")).findall(".//property")) > 20
    broken = etree.fromstring(b'<testsuites><testsuite name="x" tests="1"><testcase time="1"/>'
                              b"</testsuite></testsuites>")  # fmt: skip
    assert not schema.validate(broken)  # a testcase without a name is refused

"""The fleet's and the history's options (issues 23 and 24) as a hostile user writes
them: --mad-heartbeat, --mad-placement, models.json's host labels, --mad-history and
--mad-compare. A bad value is one usage line before any test; a password in a history
URL is never shown, wherever it is written."""

from __future__ import annotations

import pytest

from tests.conftest import entry, write_tree
from tests.faults.test_inputs import collect, one_collection_error


def _usage_error(result: pytest.RunResult, line: str) -> None:
    """Exit code 4 with one ERROR line, no traceback, and no test run."""
    assert result.ret == pytest.ExitCode.USAGE_ERROR, result.stdout.str() + result.stderr.str()
    errors = [text for text in result.stderr.lines if text.startswith("ERROR:")]
    assert len(errors) == 1, result.stderr.str()
    result.stderr.fnmatch_lines([line])
    assert "Traceback" not in result.stdout.str() + result.stderr.str()


@pytest.mark.parametrize(
    ("value", "said"),
    [
        # Past what a thread can wait: the heartbeat's thread died with a traceback.
        ("1e10", "ERROR: --mad-heartbeat: expected 0 (off) or seconds from 0.1 to 86400,"
                 " got '1e10'"),
        # A ping round after round, as fast as the hosts answer.
        ("1e-9", "ERROR: --mad-heartbeat: expected 0 (off) or seconds from 0.1 to 86400,"
                 " got '1e-9'"),
        ("nan", "ERROR: --mad-heartbeat: expected 0 (off) or seconds from 0.1 to 86400,"
                " got 'nan'"),
    ],
)  # fmt: skip
def test_a_heartbeat_out_of_range_is_a_usage_error(
    pytester: pytest.Pytester, value: str, said: str
) -> None:
    write_tree(pytester.path, [entry("alpha")])
    result = pytester.runpytest_subprocess("--mad-tags", "alpha", "--mad-heartbeat", value,
                                           "--mad-history", "none", timeout=120)  # fmt: skip
    _usage_error(result, said)
    assert not (pytester.path / "perf.csv").exists()


def test_a_heartbeat_out_of_range_in_the_ini_file_is_a_usage_error(
    pytester: pytest.Pytester,
) -> None:
    write_tree(pytester.path, [entry("alpha")], {"pytest.ini": "[pytest]\nmad_heartbeat = 1e12\n"})
    result = pytester.runpytest_subprocess("--mad-tags", "alpha", timeout=120)
    _usage_error(result, "ERROR: --mad-heartbeat: expected 0 (off) or seconds from 0.1 to"
                         " 86400, got '1e12'")  # fmt: skip


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        # A number: placement failed every test with a TypeError and its traceback.
        ({"host_labels": 5}, "*model 'alpha': field 'host_labels' must be a list of host"
                             " labels, got 5"),
        # A string: each of its letters was a label the host had to carry.
        ({"host_labels": "gpu"}, "*model 'alpha': field 'host_labels' must be a list of host"
                                 " labels, got 'gpu'"),
        # Found only once the test was placed (its image built), not at collection.
        ({"host_affinity": "mi300x"}, "*model 'alpha': field 'host_affinity' must be a list"
                                      " of host labels, got 'mi300x'"),
        ({"host_affinity": [1, "x"]}, "*model 'alpha': field 'host_affinity' must be a list"
                                      " of host labels, got [[]1, 'x']"),
        ({"host_affinity": ["fast", " "]}, "*model 'alpha': field 'host_affinity' must be a"
                                           " list of host labels, got [[]'fast', ' ']"),
        ({"host_affinity": 0}, "*model 'alpha': field 'host_affinity' must be a list of host"
                               " labels, got 0"),
    ],
)  # fmt: skip
def test_host_label_fields_that_are_no_lists_of_labels_are_collection_errors(
    pytester: pytest.Pytester, fields: dict, message: str
) -> None:
    write_tree(pytester.path, [{**entry("alpha"), **fields}])
    one_collection_error(collect(pytester, "--mad-tags", "all"), message)


def test_empty_host_label_fields_are_no_labels(pytester: pytest.Pytester) -> None:
    models = [{**entry("alpha"), "host_labels": [], "host_affinity": None},
              {**entry("beta"), "host_labels": None, "host_affinity": []}]  # fmt: skip
    write_tree(pytester.path, models)
    result = collect(pytester, "--mad-tags", "all", "--mad-placement", "affinity")
    result.stdout.fnmatch_lines(["*2 tests collected*"])

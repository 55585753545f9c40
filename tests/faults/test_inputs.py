"""Bad input, as a hostile user writes it: one clear line each, never a traceback.

Cases of issue 9 (the hostile run). Bad options are in tests/e2e/test_seams.py.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from pytest_madengine.core.credentials import Credentials
from pytest_madengine.core.results import bounded_lines
from tests.conftest import entry, write_tree

DEEP = "[" * 100_000 + "]" * 100_000


def collect(pytester: pytest.Pytester, *args: str) -> pytest.RunResult:
    return pytester.runpytest_subprocess("-p", "no:cacheprovider", "--collect-only", "-q", *args)


def one_collection_error(result: pytest.RunResult, line: str) -> None:
    result.stdout.fnmatch_lines([line])
    assert "Traceback" not in result.stdout.str() + result.stderr.str()


@pytest.mark.parametrize(
    ("scripts", "message"),
    [
        ("../outside/run.sh", "scripts '../outside/run.sh' leads outside the MAD tree"),
        ("../../../../etc", "scripts '../../../../etc' leads outside the MAD tree"),
        ("scripts/linked/run.sh", "scripts 'scripts/linked/run.sh' leads outside the MAD tree"),
    ],
)
def test_scripts_outside_the_tree_never_reach_a_container(
    pytester: pytest.Pytester, scripts: str, message: str
) -> None:
    outside = pytester.path / "outside"
    outside.mkdir()
    (outside / "run.sh").write_text("echo secret host file\n")
    root = write_tree(pytester.path / "mad", [entry("evil", scripts=scripts)])
    (root / "scripts" / "linked").symlink_to(outside)  # a symlink out of the tree
    result = collect(pytester, "--mad-root", "mad", "--mad-tags", "evil")
    one_collection_error(result, f"*models.json: model 'evil': {message}")


def test_a_build_context_outside_the_tree_is_refused(pytester: pytest.Pytester) -> None:
    write_tree(pytester.path / "mad", [entry("evil", dockercontext="../..")])
    result = collect(pytester, "--mad-root", "mad", "--mad-tags", "evil")
    one_collection_error(result, "*model 'evil': dockercontext '../..' leads outside the MAD tree")


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"name": "has space"}, "*model 'has space': its image name 'ci-has space_dummy*"),
        ({"name": "semi;colon"}, "*model 'semi;colon': its image name*not a valid Docker name*"),
        ({"name": "ünïcode"}, "*its image name 'ci-ünïcode_dummy*not a valid Docker name*"),
        ({"name": "x" * 300}, "*its image name 'ci-xxx*...' is not a valid Docker name*"),
        ({"n_gpus": -5}, "*model 'alpha': field 'n_gpus' must be -1 (all GPUs) or a count*"),
        ({"parametrize": [{"v": [1, 2]}]}, "*'parametrize': 'v' must be a string or a number*"),
        ({"multiple_results": "../../x.csv"}, "*'multiple_results' must be a path inside*"),
    ],
)
def test_entries_docker_or_we_cannot_use_are_collection_errors(
    pytester: pytest.Pytester, fields: dict, message: str
) -> None:
    model = {**entry("alpha"), **fields}
    write_tree(pytester.path, [model])
    one_collection_error(collect(pytester, "--mad-tags", "all"), message)


@pytest.mark.parametrize("broken", ["latin1", "deep"])
def test_unreadable_json_files_are_one_line(pytester: pytest.Pytester, broken: str) -> None:
    content = b'[{"name": "caf\xe9"}]' if broken == "latin1" else DEEP.encode()
    root = write_tree(pytester.path, [entry("alpha")])
    (root / "models.json").write_bytes(content)
    expected = "not UTF-8 text (byte 14)" if broken == "latin1" else "nested too deeply"
    one_collection_error(collect(pytester, "--mad-tags", "all"), f"*models.json*{expected}*")
    # The same file as the context, the hosts file or credential.json: a usage error.
    (root / "models.json").write_text(json.dumps([entry("alpha")]))
    (root / "bad.json").write_bytes(content)
    for option in ("--mad-context-file=bad.json", "--mad-hosts=bad.json"):
        result = pytester.runpytest_subprocess("--mad-tags", "alpha", option)
        assert result.ret == pytest.ExitCode.USAGE_ERROR
        result.stderr.fnmatch_lines([f"ERROR: *bad.json*{expected.split()[0]}*"])
    (root / "credential.json").write_bytes(content)
    result = pytester.runpytest_subprocess("--mad-tags", "alpha")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines([f"ERROR: *credential.json*{expected.split()[0]}*"])


def test_output_options_that_cannot_be_written_are_usage_errors(pytester: pytest.Pytester):
    write_tree(pytester.path, [entry("alpha")])
    (pytester.path / "afile").write_text("")
    result = pytester.runpytest_subprocess("--mad-tags", "alpha", "--mad-output", "afile")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["ERROR: --mad-output *afile: exists and is not a directory"])
    if os.geteuid() != 0:  # root writes anywhere
        (pytester.path / "ro").mkdir(mode=0o500)
        result = pytester.runpytest_subprocess("--mad-tags", "alpha", "--mad-perf-csv", "ro/p.csv")
        assert result.ret == pytest.ExitCode.USAGE_ERROR


def test_every_form_of_a_login_is_masked() -> None:
    import base64

    credentials = Credentials({"localhost:5000": {"username": "ci", "password": "pa ss/w0rd"}})
    header = "Basic " + base64.b64encode(b"ci:pa ss/w0rd").decode()
    text = (
        f"denied: {header}; raw pa ss/w0rd; quoted pa%20ss%2Fw0rd;"
        f" b64 {base64.b64encode(b'pa ss/w0rd').decode()}"
    )
    masked = credentials.redact(text)
    assert "w0rd" not in masked and "cGEgc3Mvdz" not in masked and "Y2k6cGE" not in masked
    assert masked.count("***") == 4


def test_a_huge_line_is_read_in_bounded_memory(tmp_path: Path) -> None:
    log = tmp_path / "huge.log"
    with log.open("w") as out:
        out.write("start\n")
        out.write("#" * 18_000_000 + " performance: 5 fps\n")  # one 18 MB line
        out.write("end\n")
    with log.open() as handle:
        lines = list(bounded_lines(handle, limit=1000))
    assert [len(line) <= 1000 for line in lines] == [True, True, True]
    assert lines[1].endswith("performance: 5 fps\n")  # the end of the line is kept

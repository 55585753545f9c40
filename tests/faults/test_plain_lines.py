"""What used to pass silently or hide behind noise says so in one line (issue 20,
item 11): odd parameter keys, a registry login with a misspelt key,
a baseline that cannot be compared with, a Dockerfile the engine cannot parse,
control characters of a model, a kill for memory the engine does not flag."""

from __future__ import annotations

import csv
import json
import re
import uuid

import docker
import pytest

from pytest_madengine.reporting.perf_csv import PERF_COLUMNS
from tests.conftest import entry, write_tree
from tests.e2e.test_run import VALUE, junit_properties, run, scripts, unique_tree
from tests.faults.test_inputs import collect, one_collection_error


@pytest.mark.parametrize("key", ["", "b s", "-x"])
def test_a_parameter_key_that_is_no_option_name_is_a_collection_error(
    pytester: pytest.Pytester, key: str
) -> None:
    write_tree(pytester.path, [entry("alpha", parametrize=[{key: 2}])])
    one_collection_error(
        collect(pytester, "--mad-tags", "all"),
        f"*model 'alpha': field 'parametrize': key {key!r} must be one word of letters,*",
    )


def test_a_tag_parameter_key_that_is_no_option_name_is_a_usage_error(
    pytester: pytest.Pytester,
) -> None:
    write_tree(pytester.path, [entry("alpha")])
    result = collect(pytester, "--mad-tags", "alpha:b s=2")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*--mad-tags: 'alpha:b s=2': key 'b s' must be one word*"])


@pytest.mark.docker
def test_a_registry_login_with_a_misspelt_key_names_the_entry_and_key_never_its_values(
    pytester: pytest.Pytester, registry: tuple[str, dict[str, str]]
) -> None:
    address, login = registry
    unique_tree(pytester, [entry("m0")])
    misspelt = {"username": login["username"], "passwd": login["password"],
                "repository": f"pytest-madengine-test/{uuid.uuid4().hex[:10]}"}  # fmt: skip
    (pytester.path / "credential.json").write_text(json.dumps({address: misspelt}))
    result = run(pytester, "--mad-build-only", "--mad-tags", "m0", f"--mad-registry={address}")
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(
        [f"*credential.json: credential '{address}': no 'password'; unknown key 'passwd'*"]
    )
    assert login["password"] not in result.stdout.str() + result.stderr.str()


@pytest.mark.docker
def test_a_baseline_that_cannot_be_compared_with_is_named_in_the_result(
    pytester: pytest.Pytester,
) -> None:
    baselines = {"zero": "0", "nan": "nan", "inf": "inf", "usable": "100"}
    models = [entry(name, scripts="scripts/dummy/value.sh", args="99") for name in baselines]
    unique_tree(pytester, models, scripts(value=VALUE))
    with (pytester.path / "old.csv").open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=PERF_COLUMNS)
        writer.writeheader()
        for name, value in baselines.items():
            writer.writerow({"model": name, "performance": value, "status": "SUCCESS"})
    result = run(pytester, "--mad-tags", "dummies", "--junitxml", "r.xml",
                 "--mad-baseline", "old.csv")  # fmt: skip
    result.assert_outcomes(passed=4)
    result.stdout.fnmatch_lines_random(
        [f"{name} *SUCCESS*99*baseline '{value}' is no nonzero finite number: nothing compared*"
         for name, value in baselines.items() if name != "usable"]
        + ["usable *SUCCESS*99*-1.0%*"]
    )  # fmt: skip
    notes = {name: props.get("baseline_note")
             for name, props in junit_properties(pytester.path / "r.xml").items()}  # fmt: skip
    assert notes == {
        "zero": "baseline '0' is no nonzero finite number: nothing compared",
        "nan": "baseline 'nan' is no nonzero finite number: nothing compared",
        "inf": "baseline 'inf' is no nonzero finite number: nothing compared",
        "usable": None,
    }


@pytest.mark.docker
def test_a_dockerfile_the_engine_cannot_parse_is_named_with_the_engines_words(
    pytester: pytest.Pytester,
) -> None:
    root = unique_tree(pytester, [entry("alpha")])
    dockerfile = root / "docker" / "dummy.ubuntu.amd.Dockerfile"
    dockerfile.write_text(dockerfile.read_text() + "FROMM nothing\n")
    result = run(pytester, "--mad-tags", "alpha")
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(
        ["image ci-alpha_dummy.ubuntu.amd failed to build: dockerfile parse error line 6:"
         " unknown instruction: FROMM (docker/dummy.ubuntu.amd.Dockerfile; log: *)"]
    )  # fmt: skip
    assert "http+docker://" not in result.stdout.str()


# Retitles the terminal, clears it, rings its bell and writes over a line; then fails.
ESCAPES = (
    "#!/bin/sh\nprintf 'title \\033]0;owned\\007 clear \\033[2J over\\rwritten\\n'\n"
    "printf 'binary \\001\\002\\377 end\\n'\nexit 3\n"
)


@pytest.mark.docker
@pytest.mark.parametrize("at_once", [[], ["--mad-concurrency=2"]], ids=["serial", "at-once"])
def test_control_characters_of_a_model_reach_the_terminal_written_out_and_the_log_as_they_came(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, at_once: list[str]
) -> None:
    # Under CI pytest's short summary repeats each failure's whole text: counted below
    # is what a terminal shows otherwise.
    monkeypatch.delenv("CI", raising=False)
    models = [entry(name, scripts="scripts/dummy/escapes.sh") for name in ("e0", "e1")]
    unique_tree(pytester, models, scripts(escapes=ESCAPES))
    result = run(pytester, "--mad-tags", "dummies", "--mad-gpus=2", "--mad-live-output",
                 *at_once)  # fmt: skip
    result.assert_outcomes(failed=2)
    shown = result.stdout.str()
    assert not re.search("[\x00-\x08\x0b-\x1f\x7f]", shown), "a control character reached it"
    live = [line for line in result.stdout.lines if line.startswith(("title", "[e0] title"))]
    assert live, "no live output"
    assert live[0].endswith("title \\x1b]0;owned\\x07 clear \\x1b[2J over\\x0dwritten")
    # The failure text under FAILED (the log's tail) is written out the same way.
    assert shown.count("title \\x1b]0;owned\\x07 clear \\x1b[2J over") == 4
    logs = list((pytester.path / "mad_output" / "logs").rglob("e0*.log"))
    assert b"clear \x1b[2J over\rwritten\n" in logs[0].read_bytes()


# Its child is killed for memory; the script goes on and fails, as a model would.
HOG = "#!/bin/sh\necho allocating\nhead -c 200000000 /dev/zero | tail > /dev/null\nexit 137\n"


@pytest.mark.docker
def test_a_kill_for_memory_the_engine_does_not_flag_is_named_by_the_containers_count(
    pytester: pytest.Pytester, docker_client: docker.DockerClient
) -> None:
    # Under keep-alive the model runs in an exec of a container that stays: the
    # engine's OOMKilled flag (the container's own end) never says it, as after a kill
    # by the host's OOM killer; the container's memory cgroup counts the kill in both.
    root = unique_tree(pytester, [entry("hog", scripts="scripts/dummy/hog.sh")], scripts(hog=HOG))
    result = run(pytester, "--mad-tags", "hog", "--mad-keep-alive",
                 "--mad-context", '{"docker_memory": "32m"}')  # fmt: skip
    log = next((root / "mad_output" / "logs").rglob("hog*.log")).read_text()
    kept = [
        line.split()[2] for line in log.splitlines() if line.startswith("keep-alive: container")
    ]
    for name in kept:
        docker_client.containers.get(name).remove(force=True)
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(["killed for memory (out of memory, exit code 137);*"])

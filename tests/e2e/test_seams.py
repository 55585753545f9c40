"""The seams of the core: options checked once (usage errors), a backend from an entry
point, and the hooks users implement in conftest.py (the example of docs/api.md)."""

from __future__ import annotations

import csv
import re
import textwrap
from pathlib import Path

import pytest

from tests.conftest import entry, write_tree
from tests.e2e.test_run import unique_tree

HOOKS_PAGE = Path(__file__).resolve().parents[2] / "docs" / "api.md"

# A backend that runs a model's script as a plain process on this machine: small, but a
# real backend, registered through package metadata exactly as a third party's would be.
PROCESS_BACKEND = """
import os, shutil, subprocess, tempfile, time
from pytest_madengine.backends import RunOutcome
from pytest_madengine.core.records import ImageFacts
from pytest_madengine.resources.hosts import local_host

class ProcessRun:
    def __init__(self, spec):
        self.spec = spec
        self.workspace = tempfile.mkdtemp(prefix="procbackend-")
        for source, target in spec.copies:
            os.makedirs(os.path.dirname(self.workspace + target), exist_ok=True)
            if os.path.isdir(source):
                shutil.copytree(source, self.workspace + target, dirs_exist_ok=True)
            else:
                shutil.copy(source, self.workspace + target)
        spec.log_path.parent.mkdir(parents=True, exist_ok=True)
        self.log = spec.log_path.open("wb")
        self.started = time.time()
        env = {**os.environ, **spec.env, "PROCESS_BACKEND": "yes"}
        self.process = subprocess.Popen(
            list(spec.command), cwd=self.workspace + spec.workdir, env=env,
            stdout=self.log, stderr=subprocess.STDOUT,
        )

    def wait(self):
        try:
            code = self.process.wait(timeout=self.spec.timeout_s)
            timed_out = False
        except subprocess.TimeoutExpired:
            self.process.kill()
            code, timed_out = None, True
        self.log.close()
        shutil.rmtree(self.workspace)
        return RunOutcome(code, timed_out, self.spec.log_path, self.started, time.time(),
                          "proc-host", properties={"pid": str(self.process.pid)})

    def cancel(self):
        self.process.kill()

class ProcessBackend:
    name = "process"
    def __init__(self, setup):
        self.settings = setup.settings
    def hosts(self):
        return (local_host(self.settings.local_gpus),)
    def hosts_down(self):
        return {}
    def shared_state(self):
        return {}
    def prepare(self, request, host, on_output=None):
        return ImageFacts(request.name, "sha256:none")
    def start(self, spec, host, on_output):
        return ProcessRun(spec)
    def sweep(self, session_id):
        return 0
    def close(self):
        pass

def create(setup):
    return ProcessBackend(setup)
"""


def install_backend(site: Path) -> None:
    """The module and its distribution metadata, as `pip install` would leave them."""
    site.mkdir()
    (site / "procbackend.py").write_text(PROCESS_BACKEND)
    info = site / "procbackend-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: procbackend\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(
        "[pytest_madengine.backends]\nprocess = procbackend:create\n"
    )


def test_a_backend_from_an_entry_point_runs_a_session(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    install_backend(pytester.path / "site")
    monkeypatch.setenv("PYTHONPATH", str(pytester.path / "site"))
    script = '#!/bin/sh\necho "backend $PROCESS_BACKEND"\necho "performance: 7 runs"\n'
    write_tree(pytester.path, [entry("alpha")], {"scripts/dummy/run.sh": script})
    result = pytester.runpytest_subprocess(
        "-p", "no:cacheprovider", "--mad-tags", "alpha", "--mad-deploy", "process",
        "--junitxml", "r.xml",
    )  # fmt: skip
    result.assert_outcomes(passed=1)
    rows = list(csv.DictReader((pytester.path / "perf.csv").open()))
    assert [(r["model"], r["performance"], r["deployment_type"]) for r in rows] == [
        ("alpha", "7", "process")
    ]
    junit = (pytester.path / "r.xml").read_text()
    assert 'name="host" value="proc-host"' in junit and 'name="pid"' in junit
    # The context's "deploy" chooses it too; an unknown name is a usage error.
    result = pytester.runpytest_subprocess("--mad-tags", "alpha", "--mad-deploy", "nope")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*--mad-deploy: no backend named 'nope' (installed: *process*"])


def usage_error(pytester: pytest.Pytester, *args: str) -> str:
    """The one line a bad option gives; nothing ran and perf.csv is as it was."""
    perf = pytester.path / "perf.csv"
    perf.write_text("model,status\nearlier,SUCCESS\n")
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", *args)
    assert result.ret == pytest.ExitCode.USAGE_ERROR, result.stdout.str()
    assert perf.read_text() == "model,status\nearlier,SUCCESS\n"
    assert not (pytester.path / "mad_output" / "logs").exists()
    errors = [line for line in result.stderr.lines if line.startswith("ERROR:")]
    assert len(errors) == 1, result.stderr.str()
    return errors[0]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("--mad-tolerance", "abc"), "--mad-tolerance: tolerance must be a fraction*'abc'"),
        (("--mad-timeout", "-5"), "--mad-timeout: must be at least 0, got -5"),
        (("--mad-timeout", "soon"), "--mad-timeout: expected a whole number, got 'soon'"),
        (("--mad-retries", "-1"), "--mad-retries: must be at least 0, got -1"),
        (("--mad-baseline", "missing.csv"), "--mad-baseline */missing.csv: no such file"),
        (("--mad-context", "{bad"), "--mad-context:1:2: invalid JSON*"),
        (("--mad-gpus", "3-1"), "--mad-gpus '3-1': *"),
        (("--mad-perf-csv", "."), "--mad-perf-csv *: is a directory"),
        (("--mad-tags", ""), "--mad-tags: no tag given*"),
        (("--mad-tags", "alpha:batch_size"), "--mad-tags: 'alpha:batch_size': expected key=value*"),
        (("--mad-context", '{"tools": [{"name": "nvprof9"}]}'), "*unknown tool 'nvprof9' in *"),
        (("--mad-tools-config", "none.json"), "--mad-tools-config */none.json: No such*"),
        (("--mad-context", '{"docker_gpus": "2-1"}'), "context 'docker_gpus' '2-1': range*"),
    ],
)
def test_a_bad_option_is_one_usage_line_before_any_test(
    pytester: pytest.Pytester, args: tuple[str, ...], message: str
) -> None:
    write_tree(pytester.path, [entry("alpha")])
    tags = () if "--mad-tags" in args else ("--mad-tags", "alpha")
    line = usage_error(pytester, *tags, *args)
    assert re.fullmatch(re.escape(f"ERROR: {message}").replace(r"\*", ".*"), line), line


def test_an_engine_that_does_not_answer_is_a_usage_error(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    write_tree(pytester.path, [entry("alpha")])
    monkeypatch.setenv("DOCKER_HOST", "unix:///nonexistent.sock")
    line = usage_error(pytester, "--mad-tags", "alpha")
    assert line.startswith("ERROR: no Docker Engine answers at unix:///nonexistent.sock")
    # Listing tests needs no engine.
    result = pytester.runpytest_subprocess("--mad-tags", "alpha", "--collect-only", "-q")
    assert result.ret == pytest.ExitCode.OK
    result.stdout.fnmatch_lines(["models.json::alpha"])


def docs_block(marker: str) -> str:
    """The code block that follows `<!-- marker -->` in docs/api.md."""
    text = HOOKS_PAGE.read_text()
    after = text[text.index(f"<!-- {marker} -->") :]
    return textwrap.dedent(after.split("```python\n", 1)[1].split("```", 1)[0])


@pytest.mark.parametrize("deploy", ["process", pytest.param("docker", marks=pytest.mark.docker)])
def test_the_documented_hooks_example_changes_the_spec_and_receives_records(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, request: pytest.FixtureRequest,
    deploy: str,
) -> None:  # fmt: skip
    """The conftest.py of docs/api.md, as written there, run through the process backend
    and through Docker (the spec the hook changes is what the container gets)."""
    script = '#!/bin/sh\necho "performance: ${BATCH:-1} runs"\n'
    models = [entry("alpha"), entry("beta")]
    if deploy == "process":
        install_backend(pytester.path / "site")
        monkeypatch.setenv("PYTHONPATH", str(pytester.path / "site"))
        write_tree(pytester.path, models, {"scripts/dummy/run.sh": script})
    else:
        request.getfixturevalue("docker_client")  # our base images, or skipped
        unique_tree(pytester, models, {"scripts/dummy/run.sh": script})
    pytester.makeconftest(docs_block("hooks-example"))
    result = pytester.runpytest_subprocess(
        "-p", "no:cacheprovider", "--mad-tags", "dummies", "--mad-deploy", deploy
    )
    result.assert_outcomes(passed=2)
    # The example adds BATCH=64 to every test and writes one line per record.
    lines = (pytester.path / "results.jsonl").read_text().splitlines()
    assert len(lines) == 2 and all('"performance": 64.0' in line for line in lines)

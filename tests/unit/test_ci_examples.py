"""The CI examples of examples/ci: every JUnit file the commands write is one the CI
publishes, and every option and subcommand they use exists."""

from __future__ import annotations

import fnmatch
import re
import shlex
from pathlib import Path

import typer
import yaml

from pytest_madengine.cli.app import app
from pytest_madengine.cli.translate import plugin_option_names

EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "ci"
SAMPLE = {"$GPU": "mi300x", "${GPU}": "mi300x"}


def expand(text: str) -> str:
    for variable, value in SAMPLE.items():
        text = text.replace(variable, value)
    return text


def junit_outputs(words: list[str]) -> list[str]:
    return [words[index + 1] for index, word in enumerate(words) if word == "--junitxml"]


def check_command(words: list[str]) -> None:
    """Options of ours exist; madengine subcommands exist."""
    for word in words:
        if word.startswith("--mad-"):
            assert word.split("=")[0] in plugin_option_names(), word
    if words[:1] == ["madengine"]:
        command = typer.main.get_command(app)
        for name in words[1:]:
            if name.startswith("-") or not hasattr(command, "commands"):
                break
            assert name in command.commands, words
            command = command.commands[name]


def test_gitlab_jobs_publish_the_junit_they_write() -> None:
    document = yaml.safe_load((EXAMPLES / ".gitlab-ci.yml").read_text())
    jobs = {name: job for name, job in document.items()
            if isinstance(job, dict) and "script" in job}  # fmt: skip
    assert set(jobs) == {"build-images", "benchmark", "report"}
    written = 0
    for name, job in jobs.items():
        assert job["stage"] in document["stages"]
        assert set(job.get("needs", [])) <= set(jobs)
        published = job.get("artifacts", {}).get("reports", {}).get("junit", "")
        for line in [*job.get("before_script", []), *job["script"]]:
            words = shlex.split(expand(line))
            check_command(words)
            for output in junit_outputs(words):
                written += 1
                assert fnmatch.fnmatch(output, expand(published)), (name, output, published)
    assert written == 2


def test_jenkins_stages_publish_the_junit_they_write() -> None:
    text = (EXAMPLES / "Jenkinsfile").read_text()
    published = [expand(p) for p in re.findall(r"""junit ['"]([^'"]+)['"]""", text)]
    commands = [expand(c) for c in re.findall(r"sh '([^']+)'", text)]
    outputs = [output for command in commands for output in junit_outputs(shlex.split(command))]
    for command in commands:
        check_command(shlex.split(command))
    assert sorted(outputs) == sorted(published) == ["build-report.xml", "report-mi300x.xml"]

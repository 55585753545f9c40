"""pytest hooks of pytest-madengine: options, collection, run bookkeeping, reports."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import uuid
from collections.abc import Generator
from pathlib import Path
from typing import Any

import pytest

from pytest_madengine import fixtures
from pytest_madengine.backends.docker import ENGINE_FAILURES, DockerBackend, connect
from pytest_madengine.context import build_context
from pytest_madengine.credentials import load_credentials
from pytest_madengine.errors import MadError
from pytest_madengine.gpus import inventory
from pytest_madengine.hosts import Host, HostLinks, check_hosts, load_hosts, local_host
from pytest_madengine.items import MadItem, MadTree
from pytest_madengine.manifest import BuildManifest, load_manifest
from pytest_madengine.reporting.perf_csv import PerfCsv, perf_rows
from pytest_madengine.reporting.summary import results_table, summary_document
from pytest_madengine.session import MadSession, Settings
from pytest_madengine.state import MAD_STATE, MadState
from pytest_madengine.tags import split_tags

NO_GPU_HINT = (
    "no GPU detected and none declared; declare them with --mad-gpus"
    " (a count like 4, or ids like 0,2-3) and set gpu_vendor in --mad-context"
)
SESSION_ID_KEY = "mad_session_id"
HOSTS_DOWN_KEY = "mad_hosts_down"
LINKS_KEY = "mad_host_links"
ROOT_KEY = "mad_root"
_PREVIOUS_SIGTERM = pytest.StashKey[Any]()
_LINKS = pytest.StashKey[HostLinks]()


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("madengine", "MAD model benchmarks (pytest-madengine)")
    group.addoption(
        "--mad-root",
        metavar="DIR",
        help="MAD tree to collect (ini: mad_root; default: $MODEL_DIR, else the current dir)",
    )
    group.addoption(
        "--mad-tags",
        action="append",
        default=[],
        metavar="TAGS",
        help="models to run: names, tags, 'all', 'X:key=value', 'dir/X'; repeatable and"
        " comma-separated (ini: mad_tags). Without tags the plugin collects nothing.",
    )
    group.addoption(
        "--mad-context",
        metavar="JSON",
        help="run context as JSON, over --mad-context-file (gpu_vendor, guest_os,"
        " docker_build_arg, docker_env_vars, docker_mounts, timeout_multiplier, ...)",
    )
    group.addoption(
        "--mad-context-file",
        metavar="FILE",
        help="run context from a JSON file (ini: mad_context_file)",
    )
    group.addoption(
        "--mad-gpus",
        metavar="SPEC",
        help="GPUs to use: a count (4) or ids (0,2-3); virtual when none is detected"
        " (ini: mad_gpus)",
    )
    group.addoption(
        "--mad-timeout",
        type=int,
        metavar="SECONDS",
        help="timeout of every model, over its own (0: none); times the context's"
        " timeout_multiplier",
    )
    group.addoption(
        "--mad-clean-cache", action="store_true", help="build images without Docker's layer cache"
    )
    group.addoption(
        "--mad-live-output",
        action="store_true",
        help="stream model output to the terminal as it runs (not under xdist)",
    )
    group.addoption(
        "--mad-baseline", metavar="CSV", help="perf.csv of an earlier run to compare against"
    )
    group.addoption(
        "--mad-tolerance",
        default="5%",
        metavar="PCT",
        help="allowed regression against --mad-baseline (default 5%%)",
    )
    group.addoption(
        "--mad-output",
        metavar="DIR",
        help="where logs and build logs go (ini: mad_output; default: mad_output)",
    )
    group.addoption(
        "--mad-perf-csv",
        metavar="CSV",
        help="madengine-compatible results, appended (ini: mad_perf_csv; default: perf.csv)",
    )
    group.addoption("--mad-summary", metavar="JSON", help="write a JSON summary of the session")
    group.addoption(
        "--mad-hosts",
        metavar="YAML",
        help="Docker hosts to run on (ini: mad_hosts; default: this machine's engine)",
    )
    group.addoption(
        "--mad-manifest",
        metavar="JSON",
        help="run from a madengine build_manifest.json: its images are pulled from the"
        " registry it names, not built; without --mad-tags its models run (ini: mad_manifest)",
    )
    group.addoption(
        "--mad-registry",
        metavar="HOST:PORT",
        help="pull the manifest's images from this registry instead of the one it names",
    )
    group.addoption(
        "--mad-retries",
        type=int,
        default=1,
        metavar="N",
        help="times a test is placed again after its host was lost (default 1)",
    )
    parser.addini("mad_root", "MAD tree to collect", default=None)
    parser.addini("mad_tags", "models to run, as for --mad-tags", type="args", default=[])
    parser.addini("mad_context_file", "run context JSON file", default=None)
    parser.addini("mad_gpus", "GPUs to use, as for --mad-gpus", default=None)
    parser.addini("mad_output", "directory for logs", default=None)
    parser.addini("mad_perf_csv", "perf.csv to append to", default=None)
    parser.addini("mad_hosts", "Docker hosts inventory (YAML)", default=None)
    parser.addini("mad_manifest", "build manifest to run from", default=None)


def _option(config: pytest.Config, name: str) -> str | None:
    """A command-line value, else the ini value of the same name."""
    value = config.getoption(f"mad_{name}")
    return value if value is not None else (config.getini(f"mad_{name}") or None)


def _path(config: pytest.Config, text: str) -> Path:
    path = Path(text)
    return path if path.is_absolute() else config.invocation_params.dir / path


def _settings(config: pytest.Config, tags: list[str]) -> Settings:
    root_text = _option(config, "root") or os.environ.get("MODEL_DIR")
    root = _path(config, root_text) if root_text else config.invocation_params.dir
    if _is_worker(config) and ROOT_KEY in config.workerinput:
        # The controller's: a worker's invocation dir follows the rootdir, which pytest
        # may have guessed from an option value that looked like a path.
        root = Path(config.workerinput[ROOT_KEY])
    context_file = _option(config, "context_file")
    context = build_context(
        config.getoption("mad_context"), _path(config, context_file) if context_file else None
    )
    gpus = inventory(_option(config, "gpus"), context.gpu_vendor, context.gpu_architecture)
    return Settings(root=root, tags=tuple(tags), context=context, gpus=gpus)


def _selection(config: pytest.Config) -> tuple[list[str], BuildManifest | None]:
    """The tags to run, and the build manifest if one is given (without tags, its models).
    MadError for a bad manifest."""
    tags = split_tags(config.getoption("mad_tags") or config.getini("mad_tags"))
    path = _option(config, "manifest")
    if not path:
        return tags, None
    manifest = load_manifest(_path(config, path), config.getoption("mad_registry"))
    return tags or list(manifest.model_names), manifest


def _is_worker(config: pytest.Config) -> bool:
    return hasattr(config, "workerinput")


def _live_sink(config: pytest.Config) -> Any:
    """Writes model output straight to the terminal, around pytest's capture."""

    def write(chunk: bytes) -> None:
        # Looked up here: the terminal reporter registers after our pytest_configure.
        reporter = config.pluginmanager.get_plugin("terminalreporter")
        capture = config.pluginmanager.get_plugin("capturemanager")
        if reporter is None or capture is None:
            return
        with capture.global_and_fixture_disabled():
            reporter.write(chunk.decode("utf-8", errors="replace"))
            reporter.flush()

    return write


def _raise_interrupt(signum: int, frame: Any) -> None:
    # SIGTERM takes the same road as Ctrl-C, so `finally` blocks remove our containers.
    raise KeyboardInterrupt(f"signal {signum}")


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "mad_gpus(n): GPUs a test using the mad_gpus fixture holds")
    if not (
        config.getoption("mad_tags") or config.getini("mad_tags") or _option(config, "manifest")
    ):
        return  # dormant: a plain pytest run is left alone
    try:
        tags, manifest = _selection(config)
        if not tags:
            raise MadError(f"build manifest {manifest.path if manifest else ''} lists no model")
        settings = _settings(config, tags)
        mad = MadSession(settings)
        mad.tree  # noqa: B018 - a missing root or models.json is a usage error, found now
        credentials = load_credentials(settings.root)
    except MadError as exc:
        raise pytest.UsageError(str(exc)) from None
    worker = _is_worker(config)
    session_id = config.workerinput[SESSION_ID_KEY] if worker else uuid.uuid4().hex[:12]
    links = HostLinks(config.workerinput[LINKS_KEY] if worker else None)
    config.stash[_LINKS] = links  # closed in pytest_unconfigure, whatever happens next
    hosts, down = _hosts(config, settings, worker, links)
    perf_csv = _path(config, _option(config, "perf_csv") or "perf.csv")
    summary = config.getoption("mad_summary")
    state = MadState(
        mad=mad,
        git_commit=_git_commit(settings.root),
        session_id=session_id,
        output_dir=_path(config, _option(config, "output") or "mad_output"),
        perf_csv=None if worker else PerfCsv(perf_csv),
        hosts=hosts,
        hosts_down=down,
        links=links,
        manifest=manifest,
        credentials=credentials,
        retries=max(0, config.getoption("mad_retries")),
        summary_path=_path(config, summary) if summary else None,
        live_output=_live_sink(config)
        if config.getoption("mad_live_output") and not worker
        else None,
    )
    config.stash[MAD_STATE] = state
    config.pluginmanager.register(fixtures, "madengine-fixtures")
    if not worker:
        config.pluginmanager.register(MadReporter(state), "madengine-reporter")
    with contextlib.suppress(ValueError):  # not the main thread: leave signals alone
        config.stash[_PREVIOUS_SIGTERM] = signal.signal(signal.SIGTERM, _raise_interrupt)
    if config.args_source != pytest.Config.ArgsSource.ARGS:
        # No paths given: collect the MAD tree, not testpaths or the current directory.
        config.args = [str(settings.root.resolve())]


def _hosts(
    config: pytest.Config, settings: Settings, worker: bool, links: HostLinks
) -> tuple[list, dict]:
    """The hosts to run on, and those found down at the start (checked by the controller,
    which opens the SSH tunnels its workers share)."""
    path = _option(config, "hosts")
    if not path:
        return [local_host(settings.gpus)], {}
    try:
        hosts = load_hosts(_path(config, path), settings.gpu_vendor)
    except MadError as exc:
        raise pytest.UsageError(str(exc)) from None
    if worker:
        return hosts, dict(config.workerinput[HOSTS_DOWN_KEY])
    down = check_hosts(hosts, links)
    if len(down) == len(hosts):
        reasons = "; ".join(f"{name}: {why}" for name, why in down.items())
        raise pytest.UsageError(f"--mad-hosts {path}: no host answers ({reasons})")
    return hosts, down


@pytest.hookimpl(optionalhook=True)
def pytest_configure_node(node: Any) -> None:
    """xdist: workers label containers with the controller's session id and skip the
    hosts the controller found down."""
    state = node.config.stash.get(MAD_STATE, None)
    if state is not None:
        node.workerinput[SESSION_ID_KEY] = state.session_id
        node.workerinput[HOSTS_DOWN_KEY] = state.hosts_down
        node.workerinput[LINKS_KEY] = state.links.urls
        node.workerinput[ROOT_KEY] = str(state.mad.settings.root.resolve())


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_auto_num_workers(config: pytest.Config) -> int | None:
    """`-n auto`: one worker per GPU of all hosts, since every test holds at least one."""
    try:
        tags, _ = _selection(config)
        if not tags:
            return None
        settings = _settings(config, tags)
        path = _option(config, "hosts")
        hosts = load_hosts(_path(config, path), settings.gpu_vendor) if path else None
    except MadError:
        return None  # pytest_configure reports it
    count = sum(host.gpus.count for host in hosts) if hosts else settings.gpus.count
    return count or None


@pytest.hookimpl(tryfirst=True)
def pytest_collect_directory(path: Path, parent: pytest.Collector) -> pytest.Collector | None:
    state = parent.config.stash.get(MAD_STATE, None)
    if state is None or path != state.mad.settings.root.resolve():
        return None
    tree = MadTree.from_parent(parent, path=path)
    tree.mad = state.mad
    return tree


def pytest_sessionstart(session: pytest.Session) -> None:
    state = session.config.stash.get(MAD_STATE, None)
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    if state is None or reporter is None or _is_worker(session.config):
        return
    # Said once, by the controller, even under -q.
    if not any(host.gpus.gpus for host in state.hosts):
        reporter.write_line(f"madengine: {NO_GPU_HINT}", yellow=True)
    for name, reason in state.hosts_down.items():
        reporter.write_line(
            f"madengine: host {name} does not answer, left out: {reason}", yellow=True
        )


def pytest_report_header(config: pytest.Config) -> list[str] | None:
    state = config.stash.get(MAD_STATE, None)
    if state is None:
        return None
    settings = state.mad.settings
    context = settings.effective_context
    return [
        f"madengine: root {settings.root}, tags {','.join(settings.tags)},"
        f" gpu_vendor {context.gpu_vendor}, guest_os {context.get('guest_os')}",
        f"madengine: GPUs: {settings.gpus.describe()}",
    ]


def _git_commit(root: Path) -> str:
    try:
        done = subprocess.run(
            ["git", "-C", str(root), "rev-parse", "HEAD"],
            capture_output=True, text=True, timeout=10, check=False,
        )  # fmt: skip
    except (OSError, subprocess.TimeoutExpired):
        return ""
    return done.stdout.strip() if done.returncode == 0 else ""


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Generator:
    outcome = yield
    report: pytest.TestReport = outcome.get_result()
    if not isinstance(item, MadItem):
        return
    result = getattr(item, "mad_result", None)
    finished = report.when == "call" or (report.when == "setup" and report.outcome != "passed")
    if not finished:
        return
    state = item.config.stash[MAD_STATE]
    rows = perf_rows(
        item.planned,
        state.mad.settings,
        result if report.when == "call" else None,
        machine=os.uname().nodename,
        git_commit=state.git_commit,
        build_number=os.environ.get("BUILD_NUMBER") or os.environ.get("CI_PIPELINE_ID", ""),
    )
    if report.when == "setup" and report.outcome == "failed":
        rows = [{**row, "status": "FAILURE"} for row in rows]
    elif report.when == "call" and result is None:
        rows = [{**row, "status": "FAILURE" if report.failed else "SKIPPED"} for row in rows]
    # A plain attribute survives xdist's report serialisation to the controller.
    report.mad_rows = rows  # type: ignore[attr-defined]


class MadReporter:
    """The controller's reports: perf.csv rows as they come, the table and the summary."""

    def __init__(self, state: MadState) -> None:
        self.state = state

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        rows = getattr(report, "mad_rows", None)
        if not rows or self.state.perf_csv is None:
            return
        self.state.perf_csv.append(rows)  # now, so Ctrl-C later loses no finished row
        self.state.results.append(
            {"nodeid": report.nodeid, "outcome": report.outcome, "duration": report.duration,
             "properties": dict(report.user_properties), "rows": rows}
        )  # fmt: skip

    def pytest_terminal_summary(self, terminalreporter: Any) -> None:
        if self.state.results:
            terminalreporter.section("madengine results")
            for line in results_table(self.state.results):
                terminalreporter.write_line(line)

    def pytest_sessionfinish(self, session: pytest.Session) -> None:
        state = self.state
        if state.summary_path is not None:
            state.summary_path.parent.mkdir(parents=True, exist_ok=True)
            document = summary_document(state.results, state.session_id)
            state.summary_path.write_text(json.dumps(document, indent=2) + "\n", encoding="utf-8")
        # Also after Ctrl-C, when no test has finished yet but containers may run.
        if session.testscollected:
            _sweep(state.session_id, state.hosts, state.links)


def _sweep(session_id: str, hosts: list[Host], links: HostLinks) -> None:
    """Removes, on every host, any container of the session that a killed or
    interrupted worker could not remove."""
    for host in hosts:
        # A host that is gone runs nothing of ours any more; the others are cleaned.
        with contextlib.suppress(MadError, *ENGINE_FAILURES):
            client = links.client(host) if host.docker else connect()
            try:
                DockerBackend(client, host.name).remove_session(session_id)
            finally:
                client.close()


def pytest_unconfigure(config: pytest.Config) -> None:
    links = config.stash.get(_LINKS, None)
    if links is not None:
        links.close()
    previous = config.stash.get(_PREVIOUS_SIGTERM, None)
    if previous is not None:
        with contextlib.suppress(ValueError):
            signal.signal(signal.SIGTERM, previous)

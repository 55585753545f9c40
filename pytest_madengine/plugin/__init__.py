"""pytest hooks of pytest-madengine: a thin shell over the core.

Options are parsed once, at configure (a bad one is a usage error, exit 4, before any
test); the MAD tree becomes collectors and items; each item's benchmark runs through
the core's Session into a TestRecord, which crosses xdist as a dict on the report and
is written to perf.csv, the summary and the user's hooks by the controller alone.
"""

from __future__ import annotations

import dataclasses
import gc
import json
import sys
import threading
import time
from collections.abc import Callable, Generator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pluggy
import pytest

from pytest_madengine.core import records
from pytest_madengine.core.build import pending_record
from pytest_madengine.core.compare import PerfCsvSource
from pytest_madengine.core.history_url import default_history_url
from pytest_madengine.core.options import Options, parse_options
from pytest_madengine.core.records import BuildRecord, TestRecord
from pytest_madengine.core.runner import subject_of
from pytest_madengine.core.session import MadSession, Session, backend_setup, new_session_id
from pytest_madengine.data import DataProgress, ProgressSink
from pytest_madengine.errors import MadError
from pytest_madengine.plugin import fixtures, hookspec
from pytest_madengine.plugin.collection import MadBuildItem, MadItem, MadTree
from pytest_madengine.plugin.concurrency import LiveLines, RunAhead, xdist_controller
from pytest_madengine.plugin.options import add_options, raw_options
from pytest_madengine.plugin.reporter import BUILD_ATTRIBUTE, RECORD_ATTRIBUTE, MadReporter
from pytest_madengine.plugin.state import BUILD_RECORD, RECORD, STATE, PluginState, plugin_state
from pytest_madengine.plugin.terminal import printable, to_terminal
from pytest_madengine.resources.hosts import load_hosts
from pytest_madengine.resources.interrupts import install_stop_handler, restore_handlers
from pytest_madengine.resources.processes import process_identity
from pytest_madengine.resources.scratch import new_session_dir, remove_session_dir

if TYPE_CHECKING:
    from pytest_madengine.core.history import History

NO_GPU_HINT = (
    "no GPU detected and none declared; declare them with --mad-gpus"
    " (a count like 4, or ids like 0,2-3) and set gpu_vendor in --mad-context"
)
# What the controller hands each xdist worker.
WORKER_KEY = "madengine"
PROGRESS_INTERVAL_S = 1.0
_PREVIOUS_SIGNALS = pytest.StashKey[dict[int, Any]]()
_PARSED = pytest.StashKey[Options]()  # parsed early by pytest_xdist_auto_num_workers
_OWNED_DIR = pytest.StashKey[Path]()  # the controller's session dir, removed at the end
_HISTORY = pytest.StashKey["History"]()  # the controller's results history, closed at the end

pytest_addoption = add_options


def pytest_addhooks(pluginmanager: pytest.PytestPluginManager) -> None:
    pluginmanager.add_hookspecs(hookspec)


def _worker_input(config: pytest.Config) -> dict[str, Any] | None:
    workerinput = getattr(config, "workerinput", None)
    return workerinput.get(WORKER_KEY) if workerinput is not None else None


def _options(config: pytest.Config, shared: dict[str, Any] | None) -> Options:
    """Parsed once per process (a worker parses with the controller's root: its own
    invocation dir follows a rootdir pytest may have guessed from an option value)."""
    if _PARSED in config.stash:
        return config.stash[_PARSED]
    root = Path(shared["root"]) if shared else None
    raw = raw_options(config, root)
    if shared and "context" in shared:
        # The controller's context, not the file again: it may have been a pipe
        # (`<(make-context)`), which only the controller could read.
        raw = dataclasses.replace(raw, context_json=shared["context"], context_file=None)
    if shared and shared.get("compare_upto") is not None:
        raw = dataclasses.replace(raw, compare_upto=shared["compare_upto"])
    options = parse_options(raw)
    config.stash[_PARSED] = options
    return options


def _live_sink(config: pytest.Config, redact: Callable[[str], str]) -> Any:
    """Writes model output straight to the terminal, around pytest's capture, with the
    known secrets masked and control characters written out."""

    def write(chunk: bytes) -> None:
        if config.pluginmanager.get_plugin("capturemanager") is None:
            return
        text = printable(redact(chunk.decode("utf-8", errors="replace")))
        to_terminal(config, lambda reporter: reporter.write(text))

    return write


def _data_progress(
    config: pytest.Config, from_thread: Callable[[str], None] | None = None
) -> ProgressSink:
    """Downloads of data on the terminal: a line a second at most, and one at the end.
    Lines of a thread other than the main one go to `from_thread` when given (tests
    running at once: the main thread writes them)."""
    lock = threading.Lock()
    last_shown: dict[tuple[str, str], float] = {}

    def show(event: DataProgress) -> None:
        key, now = (event.data_name, event.source), time.monotonic()
        with lock:  # called from the fetchers' threads
            if not event.finished and now - last_shown.get(key, 0.0) < PROGRESS_INTERVAL_S:
                return
            last_shown[key] = now
            line = f"madengine: {event.describe()}"
            if from_thread and threading.current_thread() is not threading.main_thread():
                from_thread(line)
                return
            to_terminal(config, lambda reporter: reporter.write_line(line))

    return show


def _spec_hook(config: pytest.Config) -> Any:
    def apply(spec: Any, test: Any) -> Any:
        return config.hook.pytest_mad_run_spec(spec=spec, test=test, config=config) or spec

    return apply


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "mad_gpus(n): GPUs a test using the mad_gpus fixture holds")
    shared = _worker_input(config)
    if shared is None and not raw_options(config).active:
        return  # dormant: a plain pytest run is left alone
    # What pytest and we imported, before the docker SDK comes (whose import would
    # otherwise set off a full collection walking all of it: about 20 ms on 2 cores).
    _freeze_startup_objects(config)
    try:
        options = _options(config, shared)
        mad = MadSession(options)
        mad.tree  # noqa: B018 - a missing root or models.json is a usage error, found now
    except MadError as exc:
        raise pytest.UsageError(str(exc)) from None
    worker = shared is not None
    if shared is not None:
        session_id, session_dir = shared["session_id"], Path(shared["session_dir"])
    else:
        session_id = new_session_id()
        session_dir = new_session_dir(session_id)
        config.stash[_OWNED_DIR] = session_dir
    runtime = None
    lines: LiveLines | None = None
    controller_only = xdist_controller(config)  # hands tests to xdist workers, runs none
    if not config.option.collectonly:
        backend_state = shared["backend"] if shared else None
        controller = shared["controller"] if shared else process_identity()
        setup = backend_setup(options, session_id, session_dir, backend_state, controller)
        live = options.live_output and not worker
        sink = _live_sink(config, options.credentials.redact) if live else None
        # Lines of tests running ahead on threads, for the main thread to write (an
        # xdist worker has no terminal: the controller tells its downloads from records).
        ahead = not worker and not controller_only
        lines = LiveLines(config, options.credentials.redact) if ahead else None
        progress = (
            _data_progress(config, lines.put if lines else None)
            if not worker and config.get_verbosity() >= 0
            else None
        )
        try:
            runtime = Session(mad, setup, spec_hook=_spec_hook(config), on_output=sink,
                              on_data_progress=progress)  # fmt: skip
        except MadError as exc:
            raise pytest.UsageError(str(exc)) from None
    on_wait = None
    if runtime is not None and not controller_only:
        on_wait = lines.drain if lines else None
        live_lines = lines if options.live_output else None
        next_only = runtime.concurrency == 1
        run_ahead = RunAhead(runtime, live_lines, next_only)
        config.pluginmanager.register(run_ahead, "madengine-run-ahead")
    state = PluginState(options, mad, session_id, session_dir, worker, runtime, on_wait)
    config.stash[STATE] = state
    config.pluginmanager.register(fixtures, "madengine-fixtures")
    if not worker:
        history = _open_history(config, options)
        put_line = lines.put if lines is not None else None
        reporter = MadReporter(state, config, history, put_line)
        config.pluginmanager.register(reporter, "madengine-reporter")
    config.stash[_PREVIOUS_SIGNALS] = install_stop_handler()
    if config.args_source != pytest.Config.ArgsSource.ARGS:
        # No paths given: collect the MAD tree, not testpaths or the current directory.
        config.args = [str(options.root)]
    _freeze_startup_objects(config)


def _open_history(config: pytest.Config, options: Options) -> History | None:
    """The controller's results history (made when missing), opened before any test: a
    URL that does not open is a usage error naming --mad-history, its password masked.
    The default (an SQLite file in the checked output directory) is opened by the
    reporter at the end instead: a session's start-up does without SQLAlchemy's import
    (0.2 s on an idle machine, seconds on a loaded one)."""
    url = options.history_url
    skipped = config.option.collectonly or options.build_only
    if url is None or skipped or url == default_history_url(options.output_dir):
        return None
    from pytest_madengine.core.history import History, HistoryError

    try:
        history = History(url)
    except HistoryError as exc:
        raise pytest.UsageError(f"--mad-history {exc}") from None
    config.stash[_HISTORY] = history
    return history


def _freeze_startup_objects(config: pytest.Config) -> None:
    """Moves what start-up made so far (modules, classes: pytest's, docker's, ours) out
    of the garbage collector's reach, in a MAD session only: it lives as long as the
    process, and every later full collection, pytest's at the end and the interpreter's
    at exit included, would walk it again (about 0.2 s of a short session on 2 cores,
    bench/peers.py). Only where the session is the process's own (its command line, or
    an xdist worker): a session run inside another program (pytester's in-process runs,
    the madengine command) would keep that program's garbage for good."""
    own = tuple(config.invocation_params.args) == tuple(sys.argv[1:])
    if own or hasattr(config, "workerinput"):
        gc.freeze()


@pytest.hookimpl(optionalhook=True)
def pytest_configure_node(node: Any) -> None:
    """xdist: each worker gets the controller's session id, directory, root, and what
    its backend found (hosts down, SSH tunnels to share)."""
    state = plugin_state(node.config)
    if state is not None:
        node.workerinput[WORKER_KEY] = {
            "session_id": state.session_id,
            "session_dir": str(state.session_dir),
            "root": str(state.options.root),
            "backend": state.runtime.backend.shared_state() if state.runtime else {},
            "controller": state.runtime.runner.controller if state.runtime else "",
            "context": json.dumps(dict(state.options.context.values)),
            "compare_upto": _compare_upto(state.options),
        }


def _compare_upto(options: Options) -> int | None:
    """How much of a --mad-compare perf.csv the controller read (see RawOptions)."""
    source = options.compare
    return source.upto if isinstance(source, PerfCsvSource) else None


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_auto_num_workers(config: pytest.Config) -> int | None:
    """`-n auto`: one worker per GPU of all hosts, since every test holds at least one
    (also with --mad-concurrency: one worker per host ran slower, as xdist sends each
    worker only a few tests ahead; see README)."""
    if not raw_options(config).active:
        return None
    try:
        options = _options(config, None)
        hosts = load_hosts(options.hosts_file, options.gpu_vendor) if options.hosts_file else None
    except MadError:
        return None  # pytest_configure reports it
    count = sum(host.gpus.count for host in hosts) if hosts else options.gpus.count
    return count or None


@pytest.hookimpl(tryfirst=True)
def pytest_collect_directory(path: Path, parent: pytest.Collector) -> pytest.Collector | None:
    state = plugin_state(parent.config)
    if state is None or path != state.options.root:
        return None
    return MadTree.from_parent(parent, path=path)


def pytest_sessionstart(session: pytest.Session) -> None:
    state = plugin_state(session.config)
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    if state is None or reporter is None or state.worker:
        return
    # Said once, by the controller, even under -q.
    backend = state.runtime.backend if state.runtime else None
    if backend is not None:
        no_gpu = not any(host.gpus.gpus for host in backend.hosts())
    else:  # --collect-only: this machine's GPUs, unless hosts run the tests
        no_gpu = state.options.hosts_file is None and not state.options.gpus.gpus
    if no_gpu:
        reporter.write_line(f"madengine: {NO_GPU_HINT}", yellow=True)
    for name, reason in (backend.hosts_down() if backend else {}).items():
        reporter.write_line(
            f"madengine: host {name} does not answer, left out: {reason}", yellow=True
        )


def pytest_report_header(config: pytest.Config) -> list[str] | None:
    state = plugin_state(config)
    if state is None:
        return None
    options = state.options
    context = options.effective_context
    return [
        f"madengine: root {options.root}, tags {','.join(options.tags)},"
        f" gpu_vendor {context.gpu_vendor}, guest_os {context.get('guest_os')},"
        f" deploy {options.deploy}",
        f"madengine: GPUs: {options.gpus.describe()}",
    ]


def _record_of(item: MadItem, report: pytest.TestReport, options: Options) -> TestRecord:
    """The item's record: the one its benchmark made, else one that says why it has none
    (skipped by a marker, a fixture that failed, an interrupt)."""
    record = item.stash.get(RECORD, None)
    if record is not None:
        return record
    subject = subject_of(item.planned, options)
    if report.skipped:
        return records.skipped(subject, _skip_reason(report))
    return records.failed(subject, f"failed in {report.when} before the benchmark ran")


def _build_record_of(item: MadBuildItem, report: pytest.TestReport) -> BuildRecord:
    """The build item's record: the one its build made, else one that says why not."""
    record = item.stash.get(BUILD_RECORD, None)
    if record is not None:
        return record
    pending = pending_record(item.target)
    if report.skipped:
        return records.build_skipped(pending, _skip_reason(report))
    return records.build_failed(pending, f"failed in {report.when} before the image was built")


def _skip_reason(report: pytest.TestReport) -> str:
    longrepr = report.longrepr
    reason = longrepr[2] if isinstance(longrepr, tuple) else "skipped"
    return str(reason).removeprefix("Skipped: ")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pluggy.Result[pytest.TestReport], None]:
    outcome = yield
    report: pytest.TestReport = outcome.get_result()
    state = plugin_state(item.config)
    if state is None or not isinstance(item, MadItem | MadBuildItem):
        return
    finished = report.when == "call" or (report.when == "setup" and report.outcome != "passed")
    if not finished:
        return
    # A plain attribute survives xdist's report serialisation to the controller.
    if isinstance(item, MadBuildItem):
        setattr(report, BUILD_ATTRIBUTE, _build_record_of(item, report).to_dict())
        _forget(item, BUILD_RECORD)
    else:
        setattr(report, RECORD_ATTRIBUTE, _record_of(item, report, state.options).to_dict())
        _forget(item, RECORD)


def _forget(item: pytest.Item, key: pytest.StashKey[Any]) -> None:
    """The item's record is in its report now; items live to the session's end."""
    if key in item.stash:
        del item.stash[key]


def pytest_sessionfinish(session: pytest.Session) -> None:
    state = plugin_state(session.config)
    if state is None or state.runtime is None:
        return
    # Also after Ctrl-C, when no test has finished yet but containers may run; the
    # controller sweeps every host for whatever its killed workers left.
    state.runtime.close(sweep=not state.worker and session.testscollected > 0)


def pytest_unconfigure(config: pytest.Config) -> None:
    state = plugin_state(config)
    if state is not None and state.runtime is not None:
        state.runtime.close()  # a second close does nothing; this one is for a crashed run
    history = config.stash.get(_HISTORY, None)
    if history is not None:
        history.close()
    owned = config.stash.get(_OWNED_DIR, None)
    if owned is not None:
        remove_session_dir(owned)
    restore_handlers(config.stash.get(_PREVIOUS_SIGNALS, {}))

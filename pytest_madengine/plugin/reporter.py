"""The controller's reports: perf.csv rows as results arrive, the table, the summary;
in a build-only session the build manifest; the HTML report at the end."""

from __future__ import annotations

import collections
import importlib
import json
import os
import threading
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from pytest_madengine.core.history_url import sqlite_file
from pytest_madengine.core.record_log import RecordLog
from pytest_madengine.core.records import BuildRecord, TestRecord
from pytest_madengine.data import DataProgress
from pytest_madengine.errors import MadError
from pytest_madengine.plugin.state import PluginState
from pytest_madengine.reporting.build_manifest import (
    build_summary,
    manifest_document,
    write_json,
)
from pytest_madengine.reporting.perf_csv import (
    PERF_SUPER_COLUMNS,
    PerfCsv,
    perf_rows,
    perf_super_path,
    perf_super_rows,
)
from pytest_madengine.reporting.summary import build_table, results_table, summary_document
from pytest_madengine.resources.health import Transition, host_table

HISTORY_SQLITE_MODULE = "pytest_madengine.core.history_sqlite"  # the stdlib sqlite3 store
HISTORY_SQL_MODULE = "pytest_madengine.core.history_sql"  # SQLAlchemy's store

if TYPE_CHECKING:
    from pytest_madengine.core.history import History

RECORD_ATTRIBUTE = "mad_record"  # on a TestReport: the record as a dict (crosses xdist)
BUILD_ATTRIBUTE = "mad_build_record"  # the same for a build item's BuildRecord


class MadReporter:
    """Only the controller writes reports, so there is one writer under xdist."""

    def __init__(
        self,
        state: PluginState,
        config: pytest.Config,
        history: History | None = None,
        put_line: Callable[[str], None] | None = None,
    ) -> None:
        self.state = state
        self.config = config
        self.history = history  # the results history, appended to at the end
        # Hosts going offline or coming back, told by the heartbeat's thread: written
        # by `put_line` (from any thread) where there is one, else at the next report.
        self._put_line = put_line
        self._transitions: collections.deque[str] = collections.deque()
        runtime = state.runtime
        if runtime is not None and runtime.heartbeat is not None:
            runtime.health.listen(self._transition)
        options = state.options
        fallback = options.output_dir / f"perf.{state.session_id}.csv"
        self.perf_csv = PerfCsv(options.perf_csv, fallback, grow=True)  # results' columns
        self.perf_super = PerfCsv(
            perf_super_path(options.perf_csv),
            options.output_dir / f"perf_super.{state.session_id}.csv",
            PERF_SUPER_COLUMNS,
            "perf_super.csv",
        )
        # (node id, record) of every test, compressed: read back at the end.
        self.records = RecordLog()
        self.data_notes: list[tuple[str, bool]] = []  # (line, whether a warning)
        self.builds: list[BuildRecord] = []
        # Lines for the terminal summary (written at sessionfinish, which runs before it).
        self.notes: list[str] = []
        self.machine = os.uname().nodename  # perf.csv's machine_name of a test without host
        self.build_number = os.environ.get("BUILD_NUMBER") or os.environ.get("CI_PIPELINE_ID", "")

    def _transition(self, change: Transition) -> None:
        if not change.health_change:
            return
        line = self.state.options.credentials.redact(change.line())
        if self._put_line is not None:
            self._put_line(f"madengine: {line}")
        else:
            self._transitions.append(line)

    def _tell_transitions(self) -> None:
        while self._transitions:
            self._say(self._transitions.popleft())

    def _hosts(self) -> list[dict[str, Any]]:
        """The hosts' rows for the reports (none without a heartbeat)."""
        runtime = self.state.runtime
        if runtime is None or runtime.heartbeat is None:
            return []
        return self.state.options.credentials.mask_all(runtime.health.report())

    def pytest_runtestloop(self, session: pytest.Session) -> None:
        """Tests are about to run: the history's store, which is opened only at the end,
        is imported meanwhile on a thread, while the tests wait for their containers
        (SQLAlchemy, for a URL other than a plain SQLite file, took 0.4 s at the end)."""
        url = self.state.options.history_url
        if self.history is None and url is not None and session.items \
                and not session.config.option.collectonly:  # fmt: skip
            plain = sqlite_file(url) is not None
            module = HISTORY_SQLITE_MODULE if plain else HISTORY_SQL_MODULE
            threading.Thread(target=importlib.import_module, args=(module,),
                             name="mad-history-import", daemon=True).start()  # fmt: skip

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        self._tell_transitions()
        build = getattr(report, BUILD_ATTRIBUTE, None)
        # Every record is masked once more as it arrives: whatever made it (a worker, a
        # backend, a user's hook), no report written from it holds a secret.
        credentials = self.state.options.credentials
        if build:
            self.builds.append(credentials.mask_all(BuildRecord.from_dict(build)))
            return
        data = getattr(report, RECORD_ATTRIBUTE, None)
        if not data:
            return
        arrived = TestRecord.from_dict(data)
        record = credentials.mask_all(arrived)
        if record is not arrived:  # a secret was masked: the dict is made again
            data = record.to_dict()
        rows = perf_rows(
            record,
            machine=self.machine,
            git_commit=self.state.options.git_commit,
            build_number=self.build_number,
        )
        problem = self.perf_csv.append(rows)  # now, so Ctrl-C later loses no finished row
        if problem:
            self._say(problem)
        problem = self.perf_super.append(perf_super_rows(record, rows))
        if problem:
            self._say(problem)
        for lost in record.retried_after:
            self._say(f"{lost}; {record.name} placed again")
        self.records.append(report.nodeid, data)  # the dict the report carried, masked
        self._tell_data(report, record)
        try:
            self.config.hook.pytest_mad_record(record=record, config=self.config)
        except Exception as exc:  # a user's hook (a database that is down) stops nothing
            self._say(f"pytest_mad_record failed for {record.name}: {type(exc).__name__}: {exc}")

    @pytest.hookimpl(trylast=True, specname="pytest_runtest_logreport")
    def pytest_runtest_logreport_forget(self, report: pytest.TestReport) -> None:
        """Drops the record's dict from the report once the readers before this one
        (this reporter, the CLI's) have it: pytest keeps every report to the end, and a
        fleet's session would keep a dict per test it no longer needs."""
        for name in (RECORD_ATTRIBUTE, BUILD_ATTRIBUTE):
            report.__dict__.pop(name, None)

    def _say(self, line: str) -> None:
        reporter = self.config.pluginmanager.get_plugin("terminalreporter")
        if reporter is not None:
            reporter.ensure_newline()
            reporter.write_line(f"madengine: {line}", yellow=True)

    def _tell_data(self, report: pytest.TestReport, record: TestRecord) -> None:
        """Notes for the end of the session: a model that ran without its data, and
        (under xdist, whose workers have no terminal) a download a worker made."""
        data = record.data
        if data is None:
            return
        if data.problem:
            self.data_notes.append((f"{record.name}: {data.problem}; it ran without its data",
                                    True))  # fmt: skip
        from_worker = getattr(report, "node", None) is not None
        if from_worker and data.fetched and data.download_s is not None:
            size = data.size_bytes or 0
            progress = DataProgress(data.name, data.provider, data.source, size, size,
                                    data.download_s, finished=True)  # fmt: skip
            self.data_notes.append((f"{progress.describe()} (by {record.name})", False))

    def pytest_terminal_summary(self, terminalreporter: Any) -> None:
        # At the end, not as results come: a line among the progress letters breaks them.
        if self.data_notes and self.config.get_verbosity() >= 0:
            terminalreporter.section("madengine data")
            for line, warn in self.data_notes:
                terminalreporter.write_line(line, yellow=warn)
        if self.records:
            terminalreporter.section("madengine results")
            for line in results_table(self.records.records()):
                terminalreporter.write_line(line)
        if self.builds:
            terminalreporter.section("madengine builds")
            for line in build_table(self.builds):
                terminalreporter.write_line(line)
        self._tell_transitions()
        # A fleet's table (--mad-hosts); the local engine's status is in the reports.
        hosts = self._hosts() if self.state.options.hosts_file is not None else []
        if hosts:
            terminalreporter.section("madengine hosts")
            for line in host_table(hosts):
                terminalreporter.write_line(line)
        for line in self.notes:
            terminalreporter.write_line(f"madengine: {line}")

    def pytest_sessionfinish(self, session: pytest.Session) -> None:
        options = self.state.options
        for table in (self.perf_csv, self.perf_super):
            table.close()  # every row is written and flushed; no test comes after
        if self.state.runtime is not None:
            self.state.runtime.health.settle()  # no test holds a host any more
        if self.config.option.collectonly:
            return
        if options.build_only and options.manifest_output is not None:
            self._write_manifest(options.manifest_output)
        path = options.summary
        if path is not None:
            if options.build_only:
                document = build_summary(self.builds, self.state.session_id)
            else:
                document = summary_document(self.records, self.state.session_id, self._hosts())
            try:  # checked at the start; a path that broke since is a note, not a traceback
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_text(json.dumps(document, indent=2) + "\n", encoding="utf-8")
            except OSError as exc:
                self.notes.append(f"--mad-summary {path}: cannot write ({exc.strerror or exc})")
        if options.html_report is not None:
            self._write_html(options.html_report)
        self._append_history()

    def _append_history(self) -> None:
        """The session's results into the history, in one transaction (also after
        Ctrl-C: what finished is kept); a database that fails then is a note."""
        url = self.state.options.history_url
        if url is None or not self.records:
            return
        from pytest_madengine.core.history import History, HistoryError, SessionStamp, results_of

        if self.history is None:  # the default history: opened now, closed by us
            try:
                self.history = History(url)
            except HistoryError as exc:
                self.notes.append(f"--mad-history {exc}; this session's results are not in it")
                return
            self.config.add_cleanup(self.history.close)
        machine = os.uname().nodename
        stamp = SessionStamp(
            self.state.session_id, datetime.now(timezone.utc), machine,
            self.state.options.git_commit,
        )  # fmt: skip
        records = self.records.records()
        results = [result for record in records for result in results_of(record, machine)]
        try:
            self.history.append(stamp, results)
        except HistoryError as exc:
            self.notes.append(f"--mad-history {exc}; this session's results are not in it")
            return
        self.notes.append(f"history {self.history.url}: {len(results)} result(s) appended")

    def _write_manifest(self, path: Path) -> None:
        """Written even when builds failed, as madengine does: the others still run."""
        plan = self.state.mad.builds
        document = manifest_document(self.builds, plan.targets, plan.listed, self.state.options)
        write_json(path, document)
        images = len(document["built_images"])
        self.notes.append(f"build manifest {path}: {images} image(s)")

    def _write_html(self, path: Path) -> None:
        # the `report` extra
        from pytest_madengine.reporting.html import verdict_rows, write_report

        options = self.state.options
        if not options.perf_csv.exists():
            self.notes.append(f"no HTML report: {options.perf_csv} has no results")
            return
        try:
            verdicts = verdict_rows(self.records.records())
            write_report(path, [options.perf_csv], options.baseline.by_model(), options.tolerance,
                         verdicts=verdicts, hosts=self._hosts())  # fmt: skip
        except MadError as exc:
            self.notes.append(f"no HTML report: {exc}")
            return
        self.notes.append(f"HTML report {path}")

"""The controller's reports: perf.csv rows as results arrive, the table, the summary."""

from __future__ import annotations

import json
import os
from typing import Any

import pytest

from pytest_madengine.core.records import TestRecord
from pytest_madengine.data import DataProgress
from pytest_madengine.plugin.state import PluginState
from pytest_madengine.reporting.perf_csv import PerfCsv, perf_rows
from pytest_madengine.reporting.summary import results_table, summary_document

RECORD_ATTRIBUTE = "mad_record"  # on a TestReport: the record as a dict (crosses xdist)


class MadReporter:
    """Only the controller writes reports, so there is one writer under xdist."""

    def __init__(self, state: PluginState, config: pytest.Config) -> None:
        self.state = state
        self.config = config
        fallback = state.options.output_dir / f"perf.{state.session_id}.csv"
        self.perf_csv = PerfCsv(state.options.perf_csv, fallback)
        self.records: list[tuple[str, TestRecord]] = []  # (node id, record)
        self.data_notes: list[tuple[str, bool]] = []  # (line, whether a warning)
        self.build_number = os.environ.get("BUILD_NUMBER") or os.environ.get("CI_PIPELINE_ID", "")

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        data = getattr(report, RECORD_ATTRIBUTE, None)
        if not data:
            return
        record = TestRecord.from_dict(data)
        rows = perf_rows(
            record,
            machine=os.uname().nodename,
            git_commit=self.state.options.git_commit,
            build_number=self.build_number,
        )
        problem = self.perf_csv.append(rows)  # now, so Ctrl-C later loses no finished row
        if problem:
            self._say(problem)
        for lost in record.retried_after:
            self._say(f"{lost}; {record.name} placed again")
        self.records.append((report.nodeid, record))
        self._tell_data(report, record)
        try:
            self.config.hook.pytest_mad_record(record=record, config=self.config)
        except Exception as exc:  # a user's hook (a database that is down) stops nothing
            self._say(f"pytest_mad_record failed for {record.name}: {type(exc).__name__}: {exc}")

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
            for line in results_table([record for _, record in self.records]):
                terminalreporter.write_line(line)

    def pytest_sessionfinish(self, session: pytest.Session) -> None:
        path = self.state.options.summary
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            document = summary_document(self.records, self.state.session_id)
            path.write_text(json.dumps(document, indent=2) + "\n", encoding="utf-8")

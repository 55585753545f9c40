"""Running a session's tests ahead of their turn, on threads, as GPU leases allow.

pytest runs items one after another, and a benchmark mostly waits for its container.
With --mad-concurrency N the plugin hands the tests to `RunsAhead` in item order before
the first item runs: up to N threads take them in that order, each placing its test
(waiting for free GPUs), running it and keeping its record. When an item's turn comes,
it waits for its own record and judges it as a serial session would, so reports,
perf.csv rows and JUnit come in item order whatever order the containers ended in.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable
from concurrent import futures
from concurrent.futures import Future
from dataclasses import dataclass

from pytest_madengine.backends import OutputSink
from pytest_madengine.core.planning import PlannedTest
from pytest_madengine.core.records import TestRecord
from pytest_madengine.errors import Stopped

WAIT_TICK_S = 0.2
MAX_LINE_BYTES = 64 * 1024

# How a test is run on a thread: (test, test id, its output sink) -> its record.
RunTest = Callable[[PlannedTest, str, OutputSink | None], TestRecord]
# The output sink of one test (so that concurrent tests' lines do not mix), or None.
SinkFor = Callable[[PlannedTest, str], OutputSink | None]


@dataclass(frozen=True)
class _Queued:
    test: PlannedTest
    test_id: str
    record: Future[TestRecord]


class RunsAhead:
    """Tests of the session run on up to `threads` threads, taken in the order given
    (what bounds the runs at once beyond that, GPUs say, is the run function's part)."""

    def __init__(self, run: RunTest, threads: int, sink_for: SinkFor | None = None) -> None:
        if threads < 1:
            raise ValueError(f"threads must be at least 1, got {threads}")
        self._run = run
        self._limit = threads
        self._sink_for = sink_for
        self._queue: deque[_Queued] = deque()
        self._records: dict[str, Future[TestRecord]] = {}
        self._threads: list[threading.Thread] = []
        self._lock = threading.Lock()
        self._stopping = False

    def submit(self, tests: Iterable[tuple[PlannedTest, str]]) -> None:
        """Queues tests (each id once) behind those already queued, and starts threads
        for them, up to `threads`."""
        with self._lock:
            if self._stopping:
                return
            for test, test_id in tests:
                if test_id in self._records:
                    continue
                record: Future[TestRecord] = Future()
                self._records[test_id] = record
                self._queue.append(_Queued(test, test_id, record))
            wanted = min(self._limit, len(self._queue) + len(self._threads))
            while len(self._threads) < wanted:
                thread = threading.Thread(
                    target=self._work, name=f"mad-run-{len(self._threads) + 1}", daemon=True
                )
                self._threads.append(thread)
                thread.start()

    def __contains__(self, test_id: object) -> bool:
        with self._lock:
            return test_id in self._records

    def result(self, test_id: str, on_wait: Callable[[], None] | None = None) -> TestRecord:
        """The test's record once it has run (what its run raised, raised here);
        `on_wait` is called about every WAIT_TICK_S meanwhile (and once at the end)."""
        with self._lock:
            # Taken once: the same id asked again (a rerun plugin) runs the test again.
            record = self._records.pop(test_id)
        if on_wait is not None:
            while not futures.wait([record], timeout=WAIT_TICK_S).done:
                on_wait()
            on_wait()
        return record.result()

    def _next(self) -> _Queued | None:
        with self._lock:
            if self._stopping or not self._queue:
                # Leaves the count under the lock, so a later submit starts another.
                if threading.current_thread() in self._threads:
                    self._threads.remove(threading.current_thread())
                return None
            return self._queue.popleft()

    def _work(self) -> None:
        while (queued := self._next()) is not None:
            queued.record.set_running_or_notify_cancel()
            sink = None
            try:
                sink = self._sink_for(queued.test, queued.test_id) if self._sink_for else None
                record = self._run(queued.test, queued.test_id, sink)
            except BaseException as exc:  # handed to the item, which raises it
                queued.record.set_exception(exc)
            else:
                queued.record.set_result(record)
            finally:
                if isinstance(sink, PrefixedLines):
                    with contextlib.suppress(Exception):  # its record is set already
                        sink.flush()

    def stop(self, join_s: float = 10.0) -> None:
        """Starts nothing more: queued tests end with Stopped. Threads still running a
        test are waited for, `join_s` at most in all (their caller ends their containers
        first; a build cannot be cut short, and its thread is left to end with the
        process)."""
        with self._lock:
            self._stopping = True
            queued, self._queue = list(self._queue), deque()
            threads = list(self._threads)
            self._threads.clear()
        for entry in queued:
            entry.record.set_running_or_notify_cancel()
            entry.record.set_exception(Stopped(f"{entry.test_id}: the session is stopping"))
        deadline = time.monotonic() + join_s
        for thread in threads:
            if thread is not threading.current_thread():
                thread.join(max(0.0, deadline - time.monotonic()))


class PrefixedLines:
    """An output sink for one of several tests running at once: whole lines only, each
    with the test's name in front, so that lines of different tests never mix."""

    def __init__(self, write_line: Callable[[str], None], prefix: str) -> None:
        self._write_line = write_line
        self._prefix = prefix
        self._partial = b""

    def __call__(self, chunk: bytes) -> None:
        *lines, self._partial = (self._partial + chunk).split(b"\n")
        # A line without end (a progress bar, a blob) is shown in pieces, not kept whole.
        while len(self._partial) > MAX_LINE_BYTES:
            lines.append(self._partial[:MAX_LINE_BYTES])
            self._partial = self._partial[MAX_LINE_BYTES:]
        for line in lines:
            self._write_line(self._prefix + line.decode("utf-8", errors="replace"))

    def flush(self) -> None:
        """The last line, when the output did not end with a newline."""
        if self._partial:
            partial, self._partial = self._partial, b""
            self._write_line(self._prefix + partial.decode("utf-8", errors="replace"))

"""Running a session's tests ahead of their turn, as GPU leases allow, without a thread
per waiting test.

pytest runs items one after another, and a benchmark mostly waits for its container.
With --mad-concurrency N the plugin hands the tests to `RunsAhead` in item order before
the first item runs. One placement loop takes them in that order and places each (it
alone waits for free GPUs: a lease given back wakes it when it can use it); a placed
test goes to a pool of worker threads that run and record it, at most N at once (a
backend's `RunHandle.wait` blocks for the container's whole run, so a running test
holds a worker). A run says when its GPUs are given back: from then on it no longer
counts against N, and the next test starts beside it while it reads its results back
and removes its container. A test whose host was lost goes back to the placement loop,
ahead of the tests behind it. When an item's turn comes, it waits for its own record and judges
it as a serial session would, so reports, perf.csv rows and JUnit come in item order
whatever order the containers ended in.
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


@dataclass(frozen=True)
class PlaceAgain:
    """What a placed test's run gives when its host was lost and a retry is left: the
    placement loop places it again, with the hosts lost so far."""

    lost: tuple[str, ...]


# A placed test's run on a worker: (its output sink, what it calls once its GPUs are
# given back, if before its end) -> its record, or PlaceAgain.
RunPlaced = Callable[[OutputSink | None, Callable[[], None]], "TestRecord | PlaceAgain"]
# How the placement loop places a test: (test, test id, hosts lost so far) -> its run;
# it blocks until the test has its GPUs (a test that will not run: a run that only
# returns its record).
PlaceTest = Callable[[PlannedTest, str, tuple[str, ...]], RunPlaced]
# How a test is run when placing is part of its run: (test, test id, its sink) -> record.
RunTest = Callable[[PlannedTest, str, OutputSink | None], TestRecord]
# The output sink of one test (so that concurrent tests' lines do not mix), or None.
SinkFor = Callable[[PlannedTest, str], OutputSink | None]
# How many tests in line `in_line` gives at most: beyond a few dozen, containers made
# ahead on one thread would not be ready before their GPUs are.
MAX_LOOKAHEAD = 64
# Workers beyond N for runs that gave their GPUs back and still read their results
# back: as many as N (a wave of tests ending together), up to this many.
MAX_WRAP_UP_WORKERS = 16


@dataclass(frozen=True)
class _Queued:
    test: PlannedTest
    test_id: str
    record: Future[TestRecord]
    lost: tuple[str, ...] = ()


def _placed_at_once(run: RunTest) -> PlaceTest:
    """Placing that is part of the run itself: every test is placed at once."""

    def place(test: PlannedTest, test_id: str, lost: tuple[str, ...]) -> RunPlaced:
        def run_placed(sink: OutputSink | None, freed: Callable[[], None]) -> TestRecord:
            return run(test, test_id, sink)

        return run_placed

    return place


class RunsAhead:
    """Tests of the session, taken in the order given, placed by one loop and run on at
    most `threads` worker threads (started as runs need them, kept while the session
    lasts). Without `place`, `run` places its test itself and the loop only hands out
    the tests in order."""

    def __init__(
        self,
        run: RunTest | None,
        threads: int,
        sink_for: SinkFor | None = None,
        place: PlaceTest | None = None,
    ) -> None:
        if threads < 1:
            raise ValueError(f"threads must be at least 1, got {threads}")
        # Placing one test ahead of a free worker is worth it when placing waits (for
        # GPUs); a test placed ahead runs after a stop too (its run ends its lease).
        self._placed_ahead = 0 if place is None else 1
        if place is None:
            if run is None:
                raise ValueError("a run or a place function is needed")
            place = _placed_at_once(run)
        self._place = place
        # The tests in line given by `in_line` so far: the first `_told` of the queue.
        self._lookahead = min(threads, MAX_LOOKAHEAD)
        self._told = 0
        self._limit = threads
        wrap_up = 0 if self._placed_ahead == 0 else min(threads, MAX_WRAP_UP_WORKERS)
        self._max_workers = threads + self._placed_ahead + wrap_up
        self._sink_for = sink_for
        self._queue: deque[_Queued] = deque()
        self._records: dict[str, Future[TestRecord]] = {}
        self._lock = threading.Lock()
        self._room = threading.Condition(self._lock)  # the placement loop waits here
        self._work = threading.Condition(self._lock)  # idle workers wait here
        self._jobs: deque[tuple[_Queued, RunPlaced]] = deque()
        self._in_flight = 0  # tests placed (or being placed) holding their GPUs
        self._running = 0  # tests on a worker holding their GPUs: at most `threads`
        self._free_workers = 0
        self._workers: list[threading.Thread] = []
        self._placer: threading.Thread | None = None
        self._stopping = False

    def submit(self, tests: Iterable[tuple[PlannedTest, str]]) -> None:
        """Queues tests (each id once) behind those already queued."""
        with self._lock:
            if self._stopping:
                return
            for test, test_id in tests:
                if test_id in self._records:
                    continue
                record: Future[TestRecord] = Future()
                self._records[test_id] = record
                self._queue.append(_Queued(test, test_id, record))
            self._start_placer()

    def _start_placer(self) -> None:
        """(Under the lock.) The placement loop, when there is work and none runs."""
        if self._placer is None and self._queue and not self._stopping:
            self._placer = threading.Thread(target=self._place_loop, name="mad-place",
                                            daemon=True)  # fmt: skip
            self._placer.start()

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

    def in_line(self) -> list[tuple[PlannedTest, str]]:
        """The tests (test, id) next in line behind the one being placed, not given
        before, up to a few dozen: while that one waits for GPUs they wait too, and
        their containers can be made meanwhile."""
        with self._lock:
            window = min(len(self._queue), self._lookahead)
            line = [(self._queue[index].test, self._queue[index].test_id)
                    for index in range(self._told, window)]  # fmt: skip
            self._told = max(self._told, window)
            return line

    def take_from_line(self, test_id: str) -> _Queued | None:
        """The test, taken out of the line to run now (its GPUs and its container are
        ready for it while the one being placed still waits for others); None when it is
        no longer in line, or the session stops. Hand it to `run_placed`, or back to
        `put_back`."""
        with self._lock:
            if self._stopping:
                return None
            for index in range(min(len(self._queue), self._told + 1)):
                if self._queue[index].test_id == test_id:
                    queued = self._queue[index]
                    del self._queue[index]
                    if index < self._told:
                        self._told -= 1
                    self._in_flight += 1
                    return queued
            return None

    def put_back(self, queued: _Queued) -> None:
        """A test taken out of line that could not run after all: first in line again."""
        with self._lock:
            self._in_flight -= 1
            if not self._stopping:
                self._queue.appendleft(queued)
                self._told += 1
                self._room.notify()
                self._start_placer()
                return
        queued.record.set_exception(Stopped(f"{queued.test_id}: the session is stopping"))

    def run_placed(self, queued: _Queued, run: RunPlaced) -> None:
        """Runs a test taken out of line, placed by the caller, on a worker."""
        if not queued.record.running():
            queued.record.set_running_or_notify_cancel()
        self._hand_over(queued, run)

    def _next_to_place(self) -> _Queued | None:
        """The next test in order; None when there is nothing to place (the loop ends; a
        later submit starts another). While every worker is busy one more test is
        placed: it waits for its GPUs meanwhile (and gets its container made on them),
        so that it starts the moment they are given back."""
        with self._lock:
            most = self._limit + self._placed_ahead
            while self._queue and not self._stopping and self._in_flight >= most:
                self._room.wait()
            if self._stopping or not self._queue:
                self._placer = None
                return None
            self._in_flight += 1
            self._told = max(0, self._told - 1)
            return self._queue.popleft()

    def _place_loop(self) -> None:
        while (queued := self._next_to_place()) is not None:
            if not queued.record.running():
                queued.record.set_running_or_notify_cancel()
            try:
                run = self._place(queued.test, queued.test_id, queued.lost)
            except BaseException as exc:  # handed to the item, which raises it
                queued.record.set_exception(exc)
                self._done()
                continue
            self._hand_over(queued, run)

    def _hand_over(self, queued: _Queued, run: RunPlaced) -> None:
        """To a free worker, or a new one (up to `threads`, the one placed ahead and
        those of runs reading their results back); else the first worker to end its
        test takes it."""
        with self._lock:
            stopped = self._stopping
            worker = None
            if not stopped:
                self._jobs.append((queued, run))
                if self._free_workers < len(self._jobs) and len(self._workers) < self._max_workers:
                    self._free_workers += 1
                    worker = threading.Thread(target=self._worker, daemon=True,
                                              name=f"mad-run-{len(self._workers) + 1}")  # fmt: skip
                    self._workers.append(worker)
                else:
                    self._work.notify()
        if stopped:  # placed as the session stopped: no worker is left to take it, and
            self._run(queued, run, _Once(self._done))  # its run ends its lease at once
        elif worker is not None:
            worker.start()

    def _done(self) -> None:
        """A test placed gave its GPUs back, or will never hold any."""
        with self._lock:
            self._in_flight -= 1
            self._room.notify()

    def _freed(self) -> None:
        """A test on a worker gave its GPUs back: another may start."""
        with self._lock:
            self._in_flight -= 1
            self._running -= 1
            self._room.notify()
            if self._jobs:  # one held back by the bound can start now
                self._work.notify()

    def _worker(self) -> None:
        while True:
            with self._lock:
                # After a stop, what was handed over runs at once (its run ends its lease).
                while not self._stopping and not (self._jobs and self._running < self._limit):
                    self._work.wait()
                if not self._jobs:  # stopping, and nothing handed over is left
                    self._workers.remove(threading.current_thread())
                    self._free_workers -= 1
                    return
                queued, run = self._jobs.popleft()
                self._free_workers -= 1
                self._running += 1
            freed = _Once(self._freed)
            try:
                self._run(queued, run, freed)
            finally:
                with self._lock:
                    self._free_workers += 1
                freed()

    def _run(self, queued: _Queued, run: RunPlaced, freed: Callable[[], None]) -> None:
        sink = None
        try:
            sink = self._sink_for(queued.test, queued.test_id) if self._sink_for else None
            record = run(sink, freed)
        except BaseException as exc:  # handed to the item, which raises it
            queued.record.set_exception(exc)
            return
        finally:
            if isinstance(sink, PrefixedLines):
                with contextlib.suppress(Exception):  # its record is set already
                    sink.flush()
        if isinstance(record, PlaceAgain):
            self._place_again(queued, record.lost)
        else:
            queued.record.set_result(record)

    def _place_again(self, queued: _Queued, lost: tuple[str, ...]) -> None:
        """Back to the placement loop, ahead of the tests behind it."""
        with self._lock:
            if not self._stopping:
                self._queue.appendleft(_Queued(queued.test, queued.test_id, queued.record, lost))
                self._told += 1  # (it was given when it first waited)
                self._start_placer()
                return
        queued.record.set_exception(Stopped(f"{queued.test_id}: the session is stopping"))

    def stop(self, join_s: float = 10.0) -> None:
        """Starts nothing more: queued tests end with Stopped. The threads still placing
        or running a test are waited for, `join_s` at most in all (their caller ends
        their containers first; a build cannot be cut short, and its thread is left to
        end with the process)."""
        with self._lock:
            self._stopping = True
            queued, self._queue = list(self._queue), deque()
            threads = [*([self._placer] if self._placer else []), *self._workers]
            self._room.notify_all()
            self._work.notify_all()
        for entry in queued:
            if not entry.record.running():
                entry.record.set_running_or_notify_cancel()
            entry.record.set_exception(Stopped(f"{entry.test_id}: the session is stopping"))
        deadline = time.monotonic() + join_s
        for thread in threads:
            if thread is not threading.current_thread():
                thread.join(max(0.0, deadline - time.monotonic()))


class _Once:
    """Calls the function the first time it is called, and never again."""

    def __init__(self, function: Callable[[], None]) -> None:
        self._function: Callable[[], None] | None = function
        self._lock = threading.Lock()

    def __call__(self) -> None:
        with self._lock:
            function, self._function = self._function, None
        if function is not None:
            function()


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

"""Running tests ahead of their turn (RunsAhead), their output (PrefixedLines), and the
host pool's part: waiters woken by a release, and given up when the pool stops."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import pytest

from pytest_madengine.backends import ImageFacts, RunOutcome
from pytest_madengine.core import session as session_module
from pytest_madengine.core.concurrency import MAX_LINE_BYTES, PlaceAgain, PrefixedLines, RunsAhead
from pytest_madengine.core.options import RawOptions, parse_options
from pytest_madengine.core.records import Status
from pytest_madengine.core.session import Session
from pytest_madengine.errors import Stopped, UsageProblem
from pytest_madengine.resources.gpus import Gpu, GpuInventory
from pytest_madengine.resources.hosts import Host
from pytest_madengine.resources.placement import HostPool
from tests.conftest import entry, write_tree


class FakeTest:
    def __init__(self, name: str) -> None:
        self.name = name


class Gate:
    """A run that blocks until released, noting the order runs began and how many ran at
    once."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.started: list[str] = []
        self.running = 0
        self.most = 0
        self.release = threading.Event()

    def __call__(self, test: Any, test_id: str, sink: Any) -> Any:
        with self.lock:
            self.started.append(test_id)
            self.running += 1
            self.most = max(self.most, self.running)
        self.release.wait(10)
        with self.lock:
            self.running -= 1
        if test_id == "boom":
            raise RuntimeError("the run broke")
        return f"record of {test_id}"


def queued(*names: str) -> list[tuple[Any, str]]:
    return [(FakeTest(name), name) for name in names]


def test_runs_start_in_the_order_given_and_never_more_than_the_threads() -> None:
    gate = Gate()
    ahead = RunsAhead(gate, threads=2)
    ahead.submit(queued("a", "b", "c", "d", "e"))
    deadline = time.monotonic() + 10
    while gate.running < 2 and time.monotonic() < deadline:  # both threads at work
        time.sleep(0.01)
    gate.release.set()
    assert [ahead.result(name) for name in "abcde"] == [f"record of {n}" for n in "abcde"]
    assert gate.started[:2] == ["a", "b"] and sorted(gate.started) == list("abcde")
    assert gate.most == 2


def test_a_run_that_raises_raises_in_whoever_waits_for_its_record() -> None:
    gate = Gate()
    gate.release.set()
    ahead = RunsAhead(gate, threads=3)
    ahead.submit(queued("ok", "boom"))
    assert ahead.result("ok") == "record of ok"
    with pytest.raises(RuntimeError, match="the run broke"):
        ahead.result("boom")


def test_an_id_handed_over_twice_runs_once_until_its_record_is_taken() -> None:
    gate = Gate()
    ahead = RunsAhead(gate, threads=1)
    ahead.submit(queued("a", "b"))
    ahead.submit(queued("b"))  # still waiting for its record: not run again
    gate.release.set()
    assert ahead.result("a") == "record of a" and ahead.result("b") == "record of b"
    assert "a" not in ahead  # taken: a rerun (pytest-rerunfailures) runs it again
    ahead.submit(queued("a"))  # the threads ended meanwhile: a new one starts
    assert ahead.result("a") == "record of a"
    assert gate.started == ["a", "b", "a"]


def test_waiting_calls_on_wait_until_the_record_is_there() -> None:
    gate = Gate()
    ahead = RunsAhead(gate, threads=1)
    ahead.submit(queued("a"))
    calls = []

    def on_wait() -> None:
        calls.append(1)
        if len(calls) == 2:
            gate.release.set()

    assert ahead.result("a", on_wait) == "record of a"
    assert len(calls) >= 3  # twice while waiting, once more at the end


def test_stop_ends_queued_tests_with_stopped_and_starts_nothing_more() -> None:
    gate = Gate()
    ahead = RunsAhead(gate, threads=1)
    ahead.submit(queued("a", "b", "c"))
    deadline = time.monotonic() + 10
    while not gate.started and time.monotonic() < deadline:
        time.sleep(0.005)
    threading.Timer(0.2, gate.release.set).start()
    ahead.stop(join_s=10)
    assert ahead.result("a") == "record of a"  # it was running: it ran to its end
    for name in "bc":
        with pytest.raises(Stopped, match=f"{name}: the session is stopping"):
            ahead.result(name)
    ahead.submit(queued("d"))
    assert "d" not in ahead and gate.started == ["a"]


def test_no_threads_is_refused() -> None:
    with pytest.raises(ValueError, match="at least 1"):
        RunsAhead(Gate(), threads=0)


def test_prefixed_lines_come_whole_with_the_test_name_in_front() -> None:
    lines: list[str] = []
    sink = PrefixedLines(lines.append, "[m1] ")
    sink(b"first li")
    assert lines == []  # half a line waits for its end
    sink(b"ne\nsecond\nthi")
    sink(b"rd \xe2\x82")  # half a UTF-8 character too
    sink(b"\xac\n")
    sink(b"no end")
    sink.flush()
    sink.flush()  # nothing left: nothing more written
    assert lines == ["[m1] first line", "[m1] second", "[m1] third \u20ac", "[m1] no end"]


def test_a_line_without_end_is_shown_in_pieces_not_kept_whole() -> None:
    lines: list[str] = []
    sink = PrefixedLines(lines.append, "")
    sink(b"x" * (MAX_LINE_BYTES * 2 + 5))
    assert [len(line) for line in lines] == [MAX_LINE_BYTES, MAX_LINE_BYTES]
    sink.flush()
    assert len(lines[-1]) == 5


def pool_of(tmp_path: Path, gpus: int) -> HostPool:
    inventory = GpuInventory(tuple(Gpu(i, "AMD", "gfx942") for i in range(gpus)), "declared")
    host = Host("local", None, inventory)
    return HostPool([host], tmp_path / "placement")


def test_a_waiter_gets_the_gpu_a_release_frees(tmp_path: Path) -> None:
    pool = pool_of(tmp_path, 1)
    first = pool.acquire(1, "first")
    got: list[Any] = []
    waiter = threading.Thread(target=lambda: got.append(pool.acquire(1, "second")))
    waiter.start()
    pool.release(first)
    waiter.join(10)
    assert [placement.holder for placement in got] == ["second"]
    assert got[0].gpus == first.gpus


def test_a_stopped_pool_wakes_its_waiters_with_stopped(tmp_path: Path) -> None:
    pool = pool_of(tmp_path, 1)
    pool.acquire(1, "holder")
    raised: list[BaseException] = []

    def wait() -> None:
        try:
            pool.acquire(1, "waiter")
        except Stopped as exc:
            raised.append(exc)

    waiter = threading.Thread(target=wait)
    waiter.start()
    pool.stop()
    waiter.join(10)
    assert [str(exc) for exc in raised] == ["waiter: the session is stopping"]
    with pytest.raises(Stopped):
        pool.acquire(1, "later")


@pytest.mark.parametrize(("given", "parsed"), [(None, 1), ("1", 1), ("4", 4), ("auto", None),
                                               (" AUTO ", None), (8, 8)])  # fmt: skip
def test_concurrency_is_a_count_or_auto(tmp_path: Path, given: Any, parsed: int | None) -> None:
    (tmp_path / "models.json").write_text("[]")
    raw = RawOptions(root=str(tmp_path), tags=("all",), concurrency=given, base_dir=tmp_path)
    assert parse_options(raw).concurrency == parsed


@pytest.mark.parametrize("given", ["0", "-2", "many", "2.5"])
def test_other_concurrency_values_are_usage_errors(tmp_path: Path, given: str) -> None:
    (tmp_path / "models.json").write_text("[]")
    with pytest.raises(UsageProblem, match=rf"--mad-concurrency: .* or auto, got '{given}'"):
        parse_options(
            RawOptions(root=str(tmp_path), tags=("all",), concurrency=given, base_dir=tmp_path)
        )


# The scheduler at scale: one placement loop and workers only for placed tests.


class BlockingRuns:
    """A backend of 8 GPUs on one host whose runs last until `ended` is set: the
    session's threads can be counted while tests wait for GPUs."""

    name = "blocking"

    def __init__(self) -> None:
        self.ended = threading.Event()
        self.started = 0
        self.lock = threading.Lock()
        inventory = GpuInventory(
            tuple(Gpu(i, "AMD", "gfx942") for i in range(8)), "declared", virtual=True
        )
        self.host = Host("eight", "tcp://eight.invalid:2376", inventory)

    def hosts(self) -> tuple[Host, ...]:
        return (self.host,)

    def hosts_down(self) -> dict[str, str]:
        return {}

    def shared_state(self) -> dict[str, str]:
        return {}

    def prepare(self, request: Any, host: Host, on_output: Any = None) -> ImageFacts:
        return ImageFacts(request.name, "sha256:simulated")

    def start(self, spec: Any, host: Host, on_output: Any) -> Any:
        with self.lock:
            self.started += 1
        return BlockedRun(spec, host, self.ended)

    def sweep(self, session_id: str) -> int:
        return 0

    def close(self) -> None:
        pass


class BlockedRun:
    def __init__(self, spec: Any, host: Host, ended: threading.Event) -> None:
        self.spec, self.host, self.ended = spec, host, ended

    def wait(self) -> RunOutcome:
        self.ended.wait(60)
        now = time.time()
        self.spec.log_path.parent.mkdir(parents=True, exist_ok=True)
        self.spec.log_path.write_bytes(b"performance: 1 samples_per_second\n")
        return RunOutcome(0, False, self.spec.log_path, now, now, self.host.name)

    def cancel(self) -> None:
        self.ended.set()


def test_a_thousand_queued_tests_on_eight_gpus_hold_a_bounded_number_of_threads(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    backend = BlockingRuns()
    monkeypatch.setattr(session_module, "create_backend", lambda name, setup: backend)
    root = write_tree(tmp_path / "mad", [entry(f"m{i:04d}") for i in range(1000)])
    options = parse_options(
        RawOptions(root=str(root), tags=("dummies",), concurrency="1000", base_dir=tmp_path)
    )
    before = threading.active_count()
    with Session.open(options) as session:
        tests = session.mad.plan.tests
        session.run_ahead([(test, test.name) for test in tests])
        deadline = time.monotonic() + 60
        while backend.started < 8 and time.monotonic() < deadline:  # all 8 GPUs busy
            time.sleep(0.01)
        # 8 running tests, one placing loop waiting for GPUs (and a spare or two).
        assert backend.started == 8
        assert threading.active_count() - before <= 8 + 3
        backend.ended.set()
        records = [session.run(test, test.name) for test in tests[:20]]
    assert {record.status for record in records} == {Status.SUCCESS}


def two_hosts_pool(tmp_path: Path) -> tuple[HostPool, Host, Host]:
    inventory = GpuInventory((Gpu(0, "AMD", "gfx942"),), "declared")
    first, second = Host("first", None, inventory), Host("second", None, inventory)
    return HostPool([first, second], tmp_path / "placement"), first, second


def only(host: Host) -> Any:
    """A test's host filter that takes that host alone."""
    return lambda candidate: None if candidate is host else "not this one"


def test_a_release_wakes_only_the_waiters_its_host_could_serve(tmp_path: Path) -> None:
    pool, first, second = two_hosts_pool(tmp_path)
    held = [pool.acquire(1, f"on-{host.name}", only(host)) for host in (first, second)]
    got: list[str] = []

    def wait_for(host: Host, holder: str) -> None:
        placement = pool.acquire(1, holder, only(host))
        got.append(f"{holder} on {placement.host.name}")

    waiters = [threading.Thread(target=wait_for, args=(host, f"wants-{host.name}"))
               for host in (first, second)]  # fmt: skip
    for waiter in waiters:
        waiter.start()
    deadline = time.monotonic() + 10
    while pool.waiting() < 2 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert pool.wake(second) == 1  # the first host's waiter sleeps on
    assert pool.wake() == 2
    for placement in held:
        pool.release(placement)
    for waiter in waiters:
        waiter.join(10)
    assert sorted(got) == ["wants-first on first", "wants-second on second"]


def test_a_test_whose_host_was_lost_is_placed_again_ahead_of_those_behind_it() -> None:
    placed: list[tuple[str, tuple[str, ...]]] = []

    def place(test: Any, test_id: str, lost: tuple[str, ...]) -> Any:
        placed.append((test_id, lost))

        def run(sink: Any, freed: Any) -> Any:
            if test_id == "a" and not lost:
                return PlaceAgain(("host-1: lost",))
            return f"record of {test_id} after {lost}"

        return run

    ahead = RunsAhead(None, threads=1, place=place)
    ahead.submit(queued("a", "b"))
    assert ahead.result("a") == "record of a after ('host-1: lost',)"
    assert ahead.result("b") == "record of b after ()"
    assert placed == [("a", ()), ("a", ("host-1: lost",)), ("b", ())]


def test_tests_are_placed_in_the_order_given_and_never_more_than_the_threads_at_once() -> None:
    gate = Gate()
    placed: list[str] = []

    def place(test: Any, test_id: str, lost: tuple[str, ...]) -> Any:
        placed.append(test_id)
        return lambda sink, freed: gate(test, test_id, sink)

    ahead = RunsAhead(None, threads=2, place=place)
    ahead.submit(queued(*"abcdef"))
    deadline = time.monotonic() + 10
    while (gate.running < 2 or len(placed) < 3) and time.monotonic() < deadline:
        time.sleep(0.01)
    # The third is placed meanwhile (its GPUs awaited), and waits for a worker; no more.
    assert placed == ["a", "b", "c"]
    gate.release.set()
    assert [ahead.result(name) for name in "abcdef"] == [f"record of {n}" for n in "abcdef"]
    assert placed == list("abcdef") and gate.most == 2


def test_a_test_placed_as_the_session_stops_still_ends_and_gives_its_record() -> None:
    placing_b, go = threading.Event(), threading.Event()

    def place(test: Any, test_id: str, lost: tuple[str, ...]) -> Any:
        if test_id == "b":  # b gets its GPUs only once the session was told to stop
            placing_b.set()
            go.wait(10)
        return lambda sink, freed: f"record of {test_id}"

    ahead = RunsAhead(None, threads=1, place=place)
    ahead.submit(queued("a", "b"))
    assert ahead.result("a") == "record of a"  # its worker is idle now
    assert placing_b.wait(10)
    ahead.stop(join_s=0.5)  # the idle worker ends
    go.set()
    outcome: list[Any] = []
    waiter = threading.Thread(target=lambda: outcome.append(ahead.result("b")), daemon=True)
    waiter.start()
    waiter.join(10)
    assert outcome == ["record of b"]  # its run ran (a real one ends its lease at once)

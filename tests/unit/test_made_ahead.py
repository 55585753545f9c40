"""Containers made ahead, and the next test started the moment GPUs are given back.

While tests run, those next in line get their containers made on the GPUs the running
ones will give back, so that when their turn comes they only have to start; and a test
whose command ended gives its GPUs (and its share of --mad-concurrency) back at once,
so the next one starts while it still reads its results back. The backend here keeps
a journal of what it was asked, and its runs end only when the test says so.
"""

from __future__ import annotations

import threading
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import pytest

from pytest_madengine.backends import MODEL_LABEL, ImageFacts, RunOutcome
from pytest_madengine.core import session as session_module
from pytest_madengine.core.concurrency import RunsAhead
from pytest_madengine.core.options import RawOptions, parse_options
from pytest_madengine.core.records import Status
from pytest_madengine.core.session import Session
from pytest_madengine.resources.gpus import Gpu, GpuInventory
from pytest_madengine.resources.health import HostHealth, Ping
from pytest_madengine.resources.hosts import Host
from tests.conftest import entry, write_tree

WAIT_S = 20


class StagedRuns:
    """A backend of `gpus` GPUs on one host that can make containers ahead. A run's
    command ends when its model's `exit` event is set; its results are read back when
    its `wrap_up` event is set (set by default)."""

    name = "staged"

    def __init__(self, gpus: int, hosts: int = 1) -> None:
        inventory = GpuInventory(
            tuple(Gpu(i, "AMD", "gfx942") for i in range(gpus)), "declared", virtual=True
        )
        self.host = Host("staged", "tcp://staged.invalid:2376", inventory)
        self.others = tuple(
            Host(f"staged{n}", f"tcp://staged{n}.invalid:2376", inventory)
            for n in range(2, hosts + 1)
        )
        self.lock = threading.Lock()
        self.journal: list[str] = []
        self.exit: defaultdict[str, threading.Event] = defaultdict(threading.Event)
        self.wrap_up: defaultdict[str, threading.Event] = defaultdict(_set_event)
        self.starts_after: dict[str, str] = {}  # model -> the model that starts first
        self.create_gates: dict[str, threading.Event] = {}  # a create waits for its gate

    def note(self, what: str) -> None:
        with self.lock:
            self.journal.append(what)

    def seen(self, what: str) -> bool:
        with self.lock:
            return what in self.journal

    def wait_for(self, what: str, times: int = 1) -> None:
        deadline = time.monotonic() + WAIT_S
        while True:
            with self.lock:
                if self.journal.count(what) >= times:
                    return
            assert time.monotonic() < deadline, f"never saw {what!r} x{times}: {self.journal}"
            time.sleep(0.005)

    def hosts(self) -> tuple[Host, ...]:
        return (self.host, *self.others)

    def hosts_down(self) -> dict[str, str]:
        return {}

    def shared_state(self) -> dict[str, str]:
        return {}

    def prepare(self, request: Any, host: Host, on_output: Any = None) -> ImageFacts:
        return ImageFacts(request.name, "sha256:staged")

    def create(self, spec: Any, host: Host) -> StagedContainer:
        model = spec.labels[MODEL_LABEL]
        if model in self.create_gates:
            self.create_gates[model].wait(WAIT_S)
        self.note(f"create {model}")
        return StagedContainer(self, model, spec)

    def start(self, spec: Any, host: Host, on_output: Any) -> StagedRun:
        return self.create(spec, host).start(on_output)

    def sweep(self, session_id: str) -> int:
        return 0

    def close(self) -> None:
        for event in [*self.exit.values(), *self.wrap_up.values()]:
            event.set()


def _set_event() -> threading.Event:
    event = threading.Event()
    event.set()
    return event


class StagedContainer:
    def __init__(self, backend: StagedRuns, model: str, spec: Any) -> None:
        self.backend, self.model, self.spec = backend, model, spec

    def start(self, on_output: Any) -> StagedRun:
        if self.model in self.backend.starts_after:
            self.backend.wait_for(f"start {self.backend.starts_after[self.model]}")
        self.backend.note(f"start {self.model}")
        return StagedRun(self.backend, self.model, self.spec)

    def discard(self) -> None:
        self.backend.note(f"discard {self.model}")


class StagedRun:
    def __init__(self, backend: StagedRuns, model: str, spec: Any) -> None:
        self.backend, self.model, self.spec = backend, model, spec
        self.started = time.time()

    def wait_exit(self) -> bool:
        self.backend.exit[self.model].wait(WAIT_S)
        self.backend.note(f"exit {self.model}")
        return True

    def wait(self) -> RunOutcome:
        self.wait_exit()
        self.backend.wrap_up[self.model].wait(WAIT_S)
        self.spec.log_path.parent.mkdir(parents=True, exist_ok=True)
        self.spec.log_path.write_bytes(b"performance: 1 samples_per_second\n")
        self.backend.note(f"end {self.model}")
        return RunOutcome(0, False, self.spec.log_path, self.started, time.time(), "staged")

    def cancel(self) -> None:
        self.backend.exit[self.model].set()


@pytest.fixture
def staged(monkeypatch: pytest.MonkeyPatch) -> Any:
    def with_gpus(gpus: int, hosts: int = 1) -> StagedRuns:
        backend = StagedRuns(gpus, hosts)
        monkeypatch.setattr(session_module, "create_backend", lambda name, setup: backend)
        return backend

    return with_gpus


def session_of(tmp_path: Path, models: int | list[Any], concurrency: str) -> Any:
    """A session of models m1, m2... (or of these entries) at this concurrency."""
    if isinstance(models, int):
        models = [entry(f"m{i}") for i in range(1, models + 1)]
    root = write_tree(tmp_path / "mad", models)
    options = parse_options(
        RawOptions(root=str(root), tags=("dummies",), concurrency=concurrency, base_dir=tmp_path)
    )
    return Session.open(options)


def statuses_at_the_end(backend: StagedRuns, session: Session, tests: Any) -> list[Status]:
    """Every run may end now: the statuses of the tests' records, in item order."""
    for test in tests:
        backend.exit[test.name].set()
        backend.wrap_up[test.name].set()
    return [session.run(test, test.name).status for test in tests]


def test_the_tests_next_in_line_get_their_containers_made_while_the_first_ones_run(
    tmp_path: Path, staged: Any
) -> None:
    backend = staged(2)
    backend.starts_after["m2"] = "m1"  # so m3 claims m1's GPU, and m4 m2's
    with session_of(tmp_path, 4, "2") as session:
        tests = session.mad.plan.tests
        session.run_ahead([(test, test.name) for test in tests])
        backend.wait_for("start m1")
        backend.wait_for("start m2")
        # m3 and m4 wait for GPUs: their containers are made on those of m1 and m2.
        backend.wait_for("create m3")
        backend.wait_for("create m4")
        assert not backend.seen("exit m1") and not backend.seen("start m3")
        backend.exit["m1"].set()
        backend.wait_for("start m3")
        backend.exit["m2"].set()
        backend.wait_for("start m4")
        statuses = statuses_at_the_end(backend, session, tests)
    assert statuses == [Status.SUCCESS] * 4
    # Each container was made once, and none was thrown away.
    assert sorted(line for line in backend.journal if line.startswith("create")) == [
        "create m1", "create m2", "create m3", "create m4"
    ]  # fmt: skip
    assert not [line for line in backend.journal if line.startswith("discard")]


def test_a_test_handed_over_after_the_running_one_started_still_gets_its_container_ahead(
    tmp_path: Path, staged: Any
) -> None:
    backend = staged(1)
    with session_of(tmp_path, 2, "1") as session:
        first, second = session.mad.plan.tests
        session.run_ahead([(first, first.name)])
        backend.wait_for("start m1")
        # As pytest hands over the next item: once the one before it already runs.
        session.run_ahead([(second, second.name)])
        backend.wait_for("create m2")
        assert not backend.seen("exit m1")
        statuses = statuses_at_the_end(backend, session, (first, second))
    assert statuses == [Status.SUCCESS] * 2
    assert backend.journal.count("create m2") == 1


def test_the_next_test_starts_when_the_gpus_are_given_back_not_when_the_last_one_is_done(
    tmp_path: Path, staged: Any
) -> None:
    backend = staged(1)
    backend.wrap_up["m1"].clear()  # m1 reads its results back until told
    with session_of(tmp_path, 2, "1") as session:
        first, second = session.mad.plan.tests
        session.run_ahead([(first, first.name), (second, second.name)])
        backend.exit["m1"].set()
        backend.wait_for("start m2")
        assert not backend.seen("end m1")
        backend.wrap_up["m1"].set()
        statuses = statuses_at_the_end(backend, session, (first, second))
    assert statuses == [Status.SUCCESS] * 2
    journal = backend.journal
    assert journal.index("exit m1") < journal.index("start m2") < journal.index("end m1")


def test_tests_holding_gpus_never_outnumber_the_concurrency_while_others_wrap_up(
    tmp_path: Path, staged: Any
) -> None:
    backend = staged(4)
    for name in ("m1", "m2"):
        backend.wrap_up[name].clear()
    with session_of(tmp_path, 4, "2") as session:
        tests = session.mad.plan.tests
        session.run_ahead([(test, test.name) for test in tests])
        backend.wait_for("start m2")
        time.sleep(0.2)  # 4 GPUs are free, yet only 2 tests may run at once
        assert not backend.seen("start m3")
        backend.exit["m1"].set()
        backend.exit["m2"].set()
        backend.wait_for("start m3")
        backend.wait_for("start m4")
        assert not backend.seen("end m1") and not backend.seen("end m2")
        statuses = statuses_at_the_end(backend, session, tests)
    assert statuses == [Status.SUCCESS] * 4


def test_a_test_that_no_claim_fits_is_not_held_back_by_the_claims_of_those_behind_it(
    tmp_path: Path, staged: Any
) -> None:
    backend = staged(2)
    models = [entry("m1"), entry("m2"), entry("m3", n_gpus=2), entry("m4"), entry("m5")]
    with session_of(tmp_path, models, "2") as session:
        tests = session.mad.plan.tests
        session.run_ahead([(test, test.name) for test in tests])
        # m3 wants both GPUs: the single GPUs of m1 and m2 go to m4 and m5 behind it.
        backend.wait_for("create m4")
        backend.wait_for("create m5")
        backend.exit["m1"].set()
        backend.exit["m2"].set()
        backend.wait_for("start m3")  # neither passes it: it takes the GPUs they claimed
        # Their containers, made on those GPUs, are removed; they wait for GPUs again.
        backend.wait_for("discard m4")
        backend.wait_for("discard m5")
        assert not backend.seen("start m4") and not backend.seen("start m5")
        statuses = statuses_at_the_end(backend, session, tests)
    assert statuses == [Status.SUCCESS] * 5


def test_a_gpu_given_back_never_idles_the_test_in_line_that_claimed_it_starts_there(
    tmp_path: Path, staged: Any
) -> None:
    backend = staged(2)
    backend.starts_after["m2"] = "m1"  # so m3 claims m1's GPU, and m4 m2's
    with session_of(tmp_path, 4, "2") as session:
        tests = session.mad.plan.tests
        session.run_ahead([(test, test.name) for test in tests])
        for seen in ("start m1", "start m2", "create m3", "create m4"):
            backend.wait_for(seen)
        # m2's GPU frees first: m4 starts there, out of line, while m3 waits for m1's.
        backend.exit["m2"].set()
        backend.wait_for("start m4")
        assert not backend.seen("start m3")
        backend.exit["m1"].set()
        backend.wait_for("start m3")
        backend.exit["m3"].set()
        backend.exit["m4"].set()
        records = [session.run(test, test.name) for test in tests]
    assert [record.name for record in records] == ["m1", "m2", "m3", "m4"]
    assert [record.status for record in records] == [Status.SUCCESS] * 4
    # Each started in the container made for it ahead.
    assert backend.journal.count("create m3") == backend.journal.count("create m4") == 1
    assert not [line for line in backend.journal if line.startswith("discard")]


def test_a_container_made_after_its_gpus_were_given_back_starts_at_once(
    tmp_path: Path, staged: Any
) -> None:
    backend = staged(2)
    backend.starts_after["m2"] = "m1"  # m3 claims m1's GPU, m4 m2's
    backend.create_gates["m4"] = threading.Event()  # m4's container is slow to make
    with session_of(tmp_path, 4, "2") as session:
        tests = session.mad.plan.tests
        session.run_ahead([(test, test.name) for test in tests])
        backend.wait_for("create m3")
        backend.exit["m2"].set()
        backend.wait_for("end m2")
        assert not backend.seen("start m4")  # its container is still being made
        backend.create_gates["m4"].set()
        backend.wait_for("start m4")  # on m2's GPU, while m3 waits for m1's
        assert not backend.seen("exit m1")
        statuses = statuses_at_the_end(backend, session, tests)
    assert statuses == [Status.SUCCESS] * 4
    assert backend.journal.count("create m4") == 1


def test_a_test_whose_claim_is_on_a_host_gone_offline_takes_the_gpu_that_frees_first(
    tmp_path: Path, staged: Any
) -> None:
    backend = staged(1, hosts=2)
    backend.starts_after["m2"] = "m1"  # m3 claims m1's GPU (host staged), m4 m2's (staged2)
    with session_of(tmp_path, 4, "2") as session:
        health = HostHealth(session.pool.hosts)
        for host in session.pool.hosts:
            health.observe(host.name, Ping.answered(0.001), busy=False)
        session.pool.health = health
        tests = session.mad.plan.tests
        session.run_ahead([(test, test.name) for test in tests])
        for seen in ("start m1", "start m2", "create m3", "create m4"):
            backend.wait_for(seen)
        health.observe("staged", Ping.offline("no answer"), busy=False)  # m1 runs on
        backend.exit["m2"].set()
        backend.wait_for("start m3")  # on staged2: m4 behind it does not pass it
        assert not backend.seen("start m4")
        health.observe("staged", Ping.answered(0.001), busy=False)
        session.pool.wake()
        statuses = statuses_at_the_end(backend, session, tests)
    assert statuses == [Status.SUCCESS] * 4


def test_a_run_ending_while_no_test_is_being_placed_still_starts_its_claimant(
    tmp_path: Path, staged: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    backend = staged(3)
    backend.starts_after.update({"m2": "m1", "m3": "m2"})  # m4, m5, m6 claim m1, m2, m3
    hand_over = RunsAhead._hand_over

    def m3_ends_meanwhile(self: RunsAhead, queued: Any, run: Any) -> None:
        if queued.test_id == "m4":  # after placing m4, before placing m5
            backend.exit["m3"].set()
            backend.wait_for("end m3")
        hand_over(self, queued, run)

    monkeypatch.setattr(RunsAhead, "_hand_over", m3_ends_meanwhile)
    with session_of(tmp_path, 7, "3") as session:
        tests = session.mad.plan.tests
        session.run_ahead([(test, test.name) for test in tests])
        for seen in ("start m3", "create m4", "create m5", "create m6"):
            backend.wait_for(seen)
        backend.exit["m1"].set()
        backend.wait_for("start m4")
        backend.wait_for("start m6")  # on m3's GPU, while m5 waits for m2's
        assert not backend.seen("exit m2")
        statuses = statuses_at_the_end(backend, session, tests)
    assert statuses == [Status.SUCCESS] * 7

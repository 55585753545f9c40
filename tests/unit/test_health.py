"""Hosts' health: statuses and their transitions, the heartbeat's rounds, --mad-heartbeat."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from pytest_madengine.core.options import RawOptions, parse_options
from pytest_madengine.errors import UsageProblem
from pytest_madengine.resources.gpus import GpuInventory
from pytest_madengine.resources.health import (
    BUSY,
    OFFLINE,
    ONLINE,
    Heartbeat,
    HostHealth,
    Ping,
    Transition,
    host_table,
)
from pytest_madengine.resources.hosts import Host


def hosts(*names: str) -> list[Host]:
    return [Host(name, f"ssh://root@{name}", GpuInventory((), "declared")) for name in names]


def test_a_change_of_status_is_a_transition_with_its_time_and_reason() -> None:
    health = HostHealth(hosts("a"))
    told: list[Transition] = []
    health.listen(told.append)
    health.observe("a", Ping.answered(0.002), busy=False, at=100.0)
    health.observe("a", Ping.answered(0.003), busy=False, at=101.0)  # the same: none
    health.observe("a", Ping.answered(0.003), busy=True, at=102.0)
    health.observe("a", Ping.offline("timed out"), busy=True, at=103.0)
    health.observe("a", Ping.answered(0.002), busy=False, at=104.0)
    assert [(t.previous, t.status, t.at, t.reason) for t in told] == [
        (None, ONLINE, 100.0, ""), (ONLINE, BUSY, 102.0, ""),
        (BUSY, OFFLINE, 103.0, "timed out"), (OFFLINE, ONLINE, 104.0, ""),
    ]  # fmt: skip
    # The terminal tells the health changes; busy and the first status are for reports.
    assert [t.health_change for t in told] == [False, False, True, True]
    assert health.transitions("a") == told and health.latency("a") == 0.002


def test_the_report_has_a_row_per_host_and_the_table_reads_it() -> None:
    health = HostHealth(hosts("a", "b"))
    health.observe("a", Ping.answered(0.0021), busy=False, at=100.0)
    health.observe("b", Ping.error("the engine answered 500 Server Error"), busy=False, at=100.0)
    rows = health.report()
    assert rows[0] == {"host": "a", "status": "online", "rtt_ms": 2.1, "transitions": [
        {"status": "online", "at": 100.0, "previous": None, "reason": ""}]}  # fmt: skip
    assert rows[1]["status"] == "error" and rows[1]["rtt_ms"] is None
    assert host_table(rows) == [
        "host  status  round trip  transitions",
        "a     online  2.1 ms      online",
        "b     error   -           error",
    ]


def test_the_table_shows_the_latest_transitions_and_how_many_came_before() -> None:
    health = HostHealth(hosts("a"))
    for second in range(9):
        health.observe("a", Ping.answered(0.001), busy=second % 2 == 1, at=float(second))
    line = host_table(health.report())[1]
    assert line.endswith("(3 before) -> busy -> online -> busy -> online -> busy -> online")


def test_a_round_pings_every_host_and_marks_the_busy_ones() -> None:
    def probe(host: Host, deadline_s: float) -> Ping:
        if host.name == "down":
            raise OSError("connection refused")
        return Ping.answered(0.001)

    health = HostHealth(hosts("a", "b", "down"))
    heartbeat = Heartbeat(hosts("a", "b", "down"), probe, health, 10, lambda: {"b"})
    heartbeat.beat()
    heartbeat.stop()
    assert [health.status(name) for name in ("a", "b", "down")] == [ONLINE, BUSY, OFFLINE]
    assert health.transitions("down")[0].reason == "connection refused"
    assert health.unusable("down").endswith("(connection refused)")
    assert health.unusable("a") is None


def test_a_ping_that_keeps_no_deadline_is_offline_without_waiting_for_it() -> None:
    release = threading.Event()

    def probe(host: Host, deadline_s: float) -> Ping:
        release.wait(30)
        return Ping.answered(0.001)

    health = HostHealth(hosts("stuck"))
    heartbeat = Heartbeat(hosts("stuck"), probe, health, 10)
    heartbeat.deadline_s = 0.05
    try:
        heartbeat.beat()
        assert health.status("stuck") == OFFLINE
    finally:
        release.set()
        heartbeat.stop()


@pytest.mark.parametrize(
    ("given", "parsed"),
    [(None, 10.0), ("0", 0.0), (" 0.5 ", 0.5), ("0.1", 0.1), ("86400", 86400.0)],
)
def test_heartbeat_is_seconds(tmp_path: Path, given: str | None, parsed: float) -> None:
    (tmp_path / "models.json").write_text("[]")
    raw = RawOptions(root=str(tmp_path), tags=("all",), heartbeat=given, base_dir=tmp_path)
    assert parse_options(raw).heartbeat == parsed


@pytest.mark.parametrize("given", ["-1", "soon", "nan", "inf", "1e10", "86401", "1e-9", "0.05"])
def test_a_bad_heartbeat_is_a_usage_error(tmp_path: Path, given: str) -> None:
    (tmp_path / "models.json").write_text("[]")
    raw = RawOptions(root=str(tmp_path), tags=("all",), heartbeat=given, base_dir=tmp_path)
    with pytest.raises(UsageProblem) as problem:
        parse_options(raw)
    assert str(problem.value) == (
        f"--mad-heartbeat: expected 0 (off) or seconds from 0.1 to 86400, got {given!r}"
    )


def test_a_round_that_ends_after_the_heartbeat_stopped_tells_nothing() -> None:
    """Closing a session closes its links: the pings it cuts short are not news."""

    def probe(host: Host, deadline_s: float) -> Ping:
        heartbeat.stop()  # the session closes while the ping is under way
        return Ping.offline("connection closed")

    health = HostHealth(hosts("a"))
    heartbeat = Heartbeat(hosts("a"), probe, health, 10)
    heartbeat.beat()
    assert health.status("a") is None and health.transitions("a") == []


def test_at_the_end_a_host_last_seen_busy_is_online() -> None:
    health = HostHealth(hosts("a", "b"))
    health.observe("a", Ping.answered(0.001), busy=True, at=1.0)
    health.observe("b", Ping.offline("timed out"), busy=False, at=1.0)
    health.settle()
    assert [health.status("a"), health.status("b")] == [ONLINE, OFFLINE]
    assert [t.status for t in health.transitions("a")] == [BUSY, ONLINE]
    assert health.latency("a") == 0.001

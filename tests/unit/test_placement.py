"""Placing tests on hosts and GPUs: no shared GPU, least loaded first, lost hosts left out."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import pytest

from pytest_madengine.core.options import RawOptions, parse_options
from pytest_madengine.errors import MadError, Unplaceable, UsageProblem
from pytest_madengine.resources import leases
from pytest_madengine.resources.gpus import Gpu, GpuInventory
from pytest_madengine.resources.health import HostHealth, Ping
from pytest_madengine.resources.hosts import Host
from pytest_madengine.resources.placement import HostPool, NoHost, Placement


def host(name: str, count: int, vendor: str = "AMD", labels: tuple[str, ...] = ()) -> Host:
    gpus = tuple(Gpu(index, vendor, "gfx942") for index in range(count))
    return Host(name, f"ssh://root@{name}", GpuInventory(gpus, "declared", True), labels)


def where(placement: Placement | None) -> tuple[str, list[int]] | None:
    if placement is None:
        return None
    return placement.host.name, [gpu.index for gpu in placement.gpus]


def test_leases_never_overlap_and_come_back(tmp_path: Path) -> None:
    pool = HostPool([host("a", 4)], tmp_path)
    first = pool.acquire(2, "t1")
    assert where(first) == ("a", [0, 1]) and where(pool.acquire(2, "t2")) == ("a", [2, 3])
    assert pool.try_acquire(1, "t3") is None
    pool.release(first)
    assert where(pool.try_acquire(2, "t4")) == ("a", [0, 1])


def test_another_process_view_sees_the_same_leases(tmp_path: Path) -> None:
    HostPool([host("a", 2)], tmp_path).acquire(1, "worker-a")
    assert HostPool([host("a", 2)], tmp_path).try_acquire(2, "worker-b") is None
    assert where(HostPool([host("a", 2)], tmp_path).try_acquire(1, "worker-b")) == ("a", [1])


def test_the_least_loaded_host_comes_first(tmp_path: Path) -> None:
    pool = HostPool([host("a", 4), host("b", 4)], tmp_path)
    assert [where(pool.acquire(1, f"t{i}"))[0] for i in range(4)] == ["a", "b", "a", "b"]


def test_minus_one_takes_a_whole_host_and_no_gpus_means_none(tmp_path: Path) -> None:
    assert where(HostPool([host("a", 3)], tmp_path / "x").acquire(-1, "t")) == ("a", [0, 1, 2])
    assert where(HostPool([host("a", 0)], tmp_path / "y").acquire(1, "t")) == ("a", [])


def test_what_no_host_can_run_is_refused_with_reasons(tmp_path: Path) -> None:
    pool = HostPool([host("a", 2), host("b", 4, vendor="NVIDIA")], tmp_path)

    def amd_only(candidate: Host) -> str | None:
        return None if candidate.vendor == "AMD" else "NVIDIA GPUs, the run needs AMD"

    assert pool.unfit_reason(4, amd_only) == (
        "no host can run it: a: needs 4 GPUs, has 2; b: NVIDIA GPUs, the run needs AMD"
    )
    with pytest.raises(NoHost):
        pool.acquire(4, "t", amd_only)


def test_a_host_marked_down_gets_no_more_tests(tmp_path: Path) -> None:
    a, b = host("a", 2), host("b", 2)
    pool = HostPool([a, b], tmp_path, down={"b": "connection refused"})
    assert where(pool.acquire(1, "t1")) == ("a", [0])
    pool.mark_down(a.name, "engine gone")
    assert pool.unfit_reason(1) == (
        "no host can run it: a: down (engine gone); b: down (connection refused)"
    )


def test_leases_of_a_dead_holder_are_taken_back(tmp_path: Path) -> None:
    """A worker that took a GPU and crashed: its pid names no process any more."""
    crashed = (
        "import sys; from pathlib import Path; from test_placement import HostPool, host;"
        " HostPool([host('a', 1)], Path(sys.argv[1])).acquire(1, 'crashed')"
    )
    subprocess.run([sys.executable, "-c", crashed, str(tmp_path)], check=True,
                   cwd=Path(__file__).parent)  # fmt: skip
    assert where(HostPool([host("a", 1)], tmp_path).try_acquire(1, "t")) == ("a", [0])


def test_acquire_waits_for_a_release(tmp_path: Path) -> None:
    pool = HostPool([host("a", 1)], tmp_path)
    held = pool.acquire(1, "first")
    threading.Timer(0.3, pool.release, args=(held,)).start()
    assert where(pool.acquire(1, "second", timeout_s=10)) == ("a", [0])
    with pytest.raises(MadError, match=r"third: no host with 1 free GPUs within 0.2 s"):
        pool.acquire(1, "third", timeout_s=0.2)


def test_a_preferred_placement_is_taken_when_all_its_gpus_are_free(tmp_path: Path) -> None:
    pool = HostPool([host("a", 4), host("b", 4)], tmp_path)
    held = pool.acquire(1, "running")  # a/0
    made_for = Placement(host("b", 4), (Gpu(2, "AMD", "gfx942"),), "next")
    # Not the least loaded host's first GPU: the one a container was made for.
    assert where(pool.try_acquire(1, "next", prefer=made_for)) == ("b", [2])
    # A preferred GPU that is held is no placement: the pool chooses as usual.
    busy = Placement(held.host, held.gpus, "other")
    assert where(pool.try_acquire(1, "other", prefer=busy)) == ("a", [1])


def test_gpus_to_avoid_are_left_to_whoever_expects_them(tmp_path: Path) -> None:
    pool = HostPool([host("a", 2)], tmp_path)
    assert where(pool.try_acquire(1, "t1", avoid={("a", 0)})) == ("a", [1])
    assert pool.try_acquire(1, "t2", avoid={("a", 0)}) is None
    # What is preferred is taken even when another one's avoid list names it.
    mine = Placement(host("a", 2), (Gpu(0, "AMD", "gfx942"),), "t2")
    assert where(pool.try_acquire(1, "t2", prefer=mine, avoid={("a", 0)})) == ("a", [0])


def test_a_waiter_asks_again_what_to_avoid_when_woken(tmp_path: Path) -> None:
    pool = HostPool([host("a", 1)], tmp_path)
    claimed = {("a", 0)}
    got: list[Placement] = []
    waiter = threading.Thread(
        target=lambda: got.append(pool.acquire(1, "w", avoid=lambda: claimed))
    )
    waiter.start()
    waiter.join(0.3)
    assert waiter.is_alive() and not got  # the free GPU is someone else's
    claimed.clear()
    pool.wake()
    waiter.join(5)
    assert [where(placement) for placement in got] == [("a", [0])]


def test_a_pool_reads_only_what_others_wrote_since_it_last_looked(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A placement and a release each bring the state up to date: with a lease per GPU
    of a fleet, reading it whole every time cost more than the tests did (issue #23).
    Each change is one line of the journal; a pool parses only other pools' new lines."""
    pool = HostPool([host("a", 8)], tmp_path)
    held = [pool.acquire(1, f"t{n}") for n in range(3)]
    parsed: list[str] = []
    real_loads = json.loads

    def loads(text: str | bytes) -> object:
        parsed.append(text if isinstance(text, str) else text.decode())
        return real_loads(text)

    monkeypatch.setattr(leases.json, "loads", loads)
    pool.release(held[0])
    assert where(pool.try_acquire(1, "t3")) == ("a", [0])
    assert parsed == []
    # Another process (a pool of its own) wrote since: its lease is read, and kept to.
    assert where(HostPool([host("a", 8)], tmp_path).acquire(4, "other")) == ("a", [3, 4, 5, 6])
    parsed.clear()
    assert where(pool.try_acquire(1, "t4")) == ("a", [7])
    assert [real_loads(line)["take"] for line in parsed] == ["other"]


def test_the_journal_is_rewritten_once_it_outgrows_the_state(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(leases, "COMPACT_SLACK", 10)
    pool = HostPool([host("a", 2)], tmp_path, down={"b": "connection refused"})
    kept = pool.acquire(1, "kept")
    for n in range(40):
        pool.release(pool.acquire(1, f"t{n}"))
    lines = (tmp_path / "placement.journal").read_bytes().splitlines()
    assert len(lines) <= 2 + 10 + 1  # a snapshot, then at most the slack
    # A pool that reads it afresh finds the same state: one GPU held, b down.
    fresh = HostPool([host("a", 2)], tmp_path)
    assert fresh.down() == {"b": "connection refused"}
    assert where(fresh.try_acquire(1, "t")) == ("a", [1]) and kept.gpus[0].index == 0
    assert pool.try_acquire(1, "late") is None  # the first pool sees fresh's lease too


def test_a_line_cut_short_by_a_crash_is_passed_over(tmp_path: Path) -> None:
    pool = HostPool([host("a", 2)], tmp_path)
    pool.acquire(1, "t1")
    with (tmp_path / "placement.journal").open("ab") as journal:
        journal.write(b'{"take":"half-writ')  # a writer killed mid-line
    assert where(HostPool([host("a", 2)], tmp_path).try_acquire(1, "t2")) == ("a", [1])
    assert pool.try_acquire(1, "t3") is None and pool.down() == {}


def test_each_holder_is_asked_once_whether_it_lives(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    crashed = (
        "import sys; from pathlib import Path; from test_placement import HostPool, host;"
        " pool = HostPool([host('a', 4)], Path(sys.argv[1]));"
        " [pool.acquire(1, f'crashed-{n}') for n in range(4)]"
    )
    child = subprocess.run([sys.executable, "-c", crashed, str(tmp_path)], check=True,
                           cwd=Path(__file__).parent)  # fmt: skip
    asked: list[int] = []
    monkeypatch.setattr(leases, "_alive", lambda pid: asked.append(pid) or False)
    pool = HostPool([host("a", 4)], tmp_path)
    assert where(pool.try_acquire(4, "t")) == ("a", [0, 1, 2, 3])
    assert len(asked) == 1 and child.returncode == 0


def test_round_robin_takes_the_hosts_in_turn(tmp_path: Path) -> None:
    pool = HostPool([host("a", 4), host("b", 4), host("c", 4)], tmp_path, strategy="round-robin")
    first = pool.acquire(1, "t1")
    pool.release(first)  # a is idle again, and still not next
    chosen = [where(pool.acquire(1, f"t{n}")) for n in range(2, 6)]
    assert [where(first), *chosen] == [
        ("a", [0]), ("b", [0]), ("c", [0]), ("a", [0]), ("b", [1])
    ]  # fmt: skip


def test_round_robin_passes_over_a_host_without_free_gpus(tmp_path: Path) -> None:
    pool = HostPool([host("a", 1), host("b", 1), host("c", 2)], tmp_path, strategy="round-robin")
    assert [where(pool.acquire(1, f"t{n}")) for n in range(4)] == [
        ("a", [0]), ("b", [0]), ("c", [0]), ("c", [1])
    ]  # fmt: skip


def test_capability_leaves_the_larger_hosts_for_larger_tests(tmp_path: Path) -> None:
    pool = HostPool([host("big", 8), host("small", 2)], tmp_path, strategy="capability")
    assert where(pool.acquire(2, "two")) == ("small", [0, 1])  # big is idle, and kept so
    assert where(pool.acquire(1, "one")) == ("big", [0])  # small has none free
    assert where(pool.acquire(4, "four")) == ("big", [1, 2, 3, 4])


def test_least_loaded_is_the_default(tmp_path: Path) -> None:
    pool = HostPool([host("big", 8), host("small", 2)], tmp_path)
    assert where(pool.acquire(2, "two")) == ("big", [0, 1])
    assert where(pool.acquire(1, "one")) == ("small", [0])
    with pytest.raises(ValueError, match="no placement strategy 'fastest'"):
        HostPool([host("a", 1)], tmp_path, strategy="fastest")


@pytest.mark.parametrize(
    ("given", "parsed"),
    [(None, "least-loaded"), ("round-robin", "round-robin"), (" Capability ", "capability")],
)
def test_placement_is_one_of_the_strategies(tmp_path: Path, given: Any, parsed: str) -> None:
    (tmp_path / "models.json").write_text("[]")
    raw = RawOptions(root=str(tmp_path), tags=("all",), placement=given, base_dir=tmp_path)
    assert parse_options(raw).placement == parsed


def test_another_placement_is_a_usage_error(tmp_path: Path) -> None:
    (tmp_path / "models.json").write_text("[]")
    raw = RawOptions(root=str(tmp_path), tags=("all",), placement="fastest", base_dir=tmp_path)
    with pytest.raises(UsageProblem) as problem:
        parse_options(raw)
    assert str(problem.value) == (
        "--mad-placement: expected one of least-loaded, round-robin, capability, latency,"
        " affinity, got 'fastest'"
    )


def health_of(pings: dict[str, Ping]) -> HostHealth:
    """The health of hosts as a heartbeat that got these pings would keep it."""
    health = HostHealth([host(name, 1) for name in pings])
    for name, ping in pings.items():
        health.observe(name, ping, busy=False)
    return health


def test_latency_takes_the_shortest_round_trip_first(tmp_path: Path) -> None:
    health = health_of({"a": Ping.answered(0.030), "b": Ping.answered(0.002),
                        "c": Ping.answered(0.010)})  # fmt: skip
    pool = HostPool([host("a", 2), host("b", 1), host("c", 2)], tmp_path, None, "latency", health)
    assert [where(pool.acquire(1, f"t{n}")) for n in range(4)] == [
        ("b", [0]), ("c", [0]), ("c", [1]), ("a", [0])
    ]  # fmt: skip


def test_latency_ties_within_a_millisecond_go_to_the_least_loaded(tmp_path: Path) -> None:
    health = health_of({"a": Ping.answered(0.0021), "b": Ping.answered(0.0019)})
    pool = HostPool([host("a", 4), host("b", 4)], tmp_path, None, "latency", health)
    assert [where(pool.acquire(1, f"t{n}"))[0] for n in range(4)] == ["a", "b", "a", "b"]


def test_latency_puts_a_host_never_measured_last(tmp_path: Path) -> None:
    health = health_of({"slow": Ping.answered(0.5)})
    pool = HostPool([host("unmeasured", 1), host("slow", 1)], tmp_path, None, "latency", health)
    assert [where(pool.acquire(1, f"t{n}"))[0] for n in range(2)] == ["slow", "unmeasured"]


def test_affinity_prefers_the_hosts_with_most_of_the_labels(tmp_path: Path) -> None:
    hosts = [host("plain", 4), host("fast", 1, labels=("nvme",)),
             host("best", 1, labels=("nvme", "ib"))]  # fmt: skip
    pool = HostPool(hosts, tmp_path, strategy="affinity")
    chosen = [where(pool.acquire(1, f"t{n}", affinity=("nvme", "ib")))[0] for n in range(3)]
    assert chosen == ["best", "fast", "plain"]
    # Without labels of its own a test goes to the least loaded.
    assert where(pool.acquire(1, "none"))[0] == "plain"


def test_affinity_labels_no_host_carries_fail_the_test(tmp_path: Path) -> None:
    pool = HostPool([host("a", 1, labels=("nvme",))], tmp_path, strategy="affinity")
    with pytest.raises(Unplaceable) as problem:
        pool.acquire(1, "m1", affinity=("gpu-z",))
    assert str(problem.value) == (
        "m1: models.json field 'host_affinity': no host carries gpu-z (hosts' labels: nvme)"
    )
    assert where(pool.acquire(1, "m2", affinity=("gpu-z", "nvme"))) == ("a", [0])


def test_no_test_is_placed_on_an_offline_host(tmp_path: Path) -> None:
    health = health_of({"a": Ping.offline("timed out"), "b": Ping.answered(0.001)})
    pool = HostPool([host("a", 4), host("b", 1)], tmp_path, None, health=health)
    assert where(pool.acquire(1, "t1")) == ("b", [0])
    assert pool.try_acquire(1, "t2") is None  # b is full, a offline: wait
    health.observe("a", Ping.answered(0.001), busy=False)
    assert where(pool.try_acquire(1, "t2")) == ("a", [0])


def test_a_host_that_fails_to_answer_gets_no_test_either(tmp_path: Path) -> None:
    health = health_of({"a": Ping.error("the engine answered 500"), "b": Ping.answered(0.001)})
    pool = HostPool([host("a", 4), host("b", 4)], tmp_path, None, health=health)
    assert [where(pool.acquire(1, f"t{n}"))[0] for n in range(3)] == ["b", "b", "b"]


def test_a_test_whose_hosts_stay_offline_fails_after_the_wait(tmp_path: Path) -> None:
    health = health_of({"a": Ping.offline("timed out")})
    pool = HostPool([host("a", 4)], tmp_path, None, health=health, offline_wait_s=0.2)
    with pytest.raises(Unplaceable, match=r"^no host that fits answered within 0.2 s: a: offline"
                       r" since \d\d:\d\d:\d\d \(timed out\)$"):  # fmt: skip
        pool.acquire(1, "t1")

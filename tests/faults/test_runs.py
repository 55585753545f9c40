"""Faults while benchmarks run, on real engines: each ends in a clear line, loses no
finished result, and leaves no container of ours behind (checked after every test).

Cases of issue 9 (the hostile run); Ctrl-C, SIGTERM, timeouts and a killed host are
in tests/e2e/test_run.py and tests/e2e/test_hosts.py.
"""

from __future__ import annotations

import fcntl
import io
import os
import pty
import signal
import subprocess
import sys
import tempfile
import termios
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import docker
import pytest

from pytest_madengine.backends import CONTROLLER_LABEL, SESSION_LABEL
from pytest_madengine.backends.docker import containers
from pytest_madengine.backends.docker.links import HostLinks
from pytest_madengine.resources.hosts import load_hosts
from tests.conftest import (
    BUSYBOX_BASE,
    TEST_IMAGE_LABEL,
    TEST_IMAGE_MARK,
    TEST_SESSION,
    containers_of_our_images,
    entry,
)
from tests.e2e.test_run import SLEEPER, junit_properties, read_perf, run, scripts, unique_tree

pytestmark = [pytest.mark.docker]
HOST_DIR = Path("/var/lib/pytest-madengine")
# Prints a value chosen by its first argument: each test's result is its own.
BY_ARGUMENT = """#!/bin/sh
case "$2" in
  1/2) value=12 ;;
  1:2) value=21 ;;
  *) value="${VALUE:-0}" ;;
esac
sleep "${NAP:-0}"
echo "performance: $value fps"
"""


def ours(client: docker.DockerClient) -> set[str]:
    """Containers of our sessions: by the label the backends set, and by the images this
    test process built, so that a container started without the label is seen too. Those
    of images another test process built are its own (it runs beside this one)."""
    labelled = client.containers.list(all=True, filters={"label": SESSION_LABEL})
    mine = [c for c in labelled if c.labels.get(TEST_IMAGE_LABEL, TEST_SESSION) == TEST_SESSION]
    return {c.id for c in (*mine, *containers_of_our_images(client))}


@pytest.fixture(autouse=True)
def nothing_left(docker_client: docker.DockerClient) -> Iterator[None]:
    """After each test, no container of its sessions on the local engine (sessions that
    run beside this suite have theirs)."""
    before = ours(docker_client)
    yield
    assert ours(docker_client) - before == set()


def pytest_session(pytester: pytest.Pytester, *args: str) -> subprocess.Popen[str]:
    argv = [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-rA", *args]
    return subprocess.Popen(argv, cwd=pytester.path, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)  # fmt: skip


def wait_for_container(client: docker.DockerClient, session: subprocess.Popen[str]) -> str:
    """The session id of the first container of this session (its controller's pid) to
    run: other sessions may run beside this suite."""
    deadline = time.monotonic() + 120
    while True:
        for container in client.containers.list(filters={"label": CONTROLLER_LABEL}):
            if container.labels[CONTROLLER_LABEL].split(":")[1] == str(session.pid):
                return container.labels[SESSION_LABEL]
        assert time.monotonic() < deadline, "no test ever started"
        assert session.poll() is None, session.communicate()[0]
        time.sleep(0.1)


def test_the_leak_check_sees_a_container_started_without_our_labels(
    docker_client: docker.DockerClient,
) -> None:
    dockerfile = f"FROM {BUSYBOX_BASE}\nLABEL {TEST_IMAGE_MARK}\nLABEL leak-check={uuid.uuid4()}\n"
    image, _ = docker_client.images.build(fileobj=io.BytesIO(dockerfile.encode()), rm=True)
    stray = docker_client.containers.create(image.id, ["true"])  # no label of ours
    try:
        assert stray.id in ours(docker_client)
    finally:
        stray.remove(force=True)


def test_ids_that_read_alike_keep_their_own_logs_and_values(pytester: pytest.Pytester) -> None:
    model = entry("alpha", scripts="scripts/dummy/by_arg.sh",
                  parametrize=[{"v": "1/2"}, {"v": "1:2"}])  # fmt: skip
    unique_tree(pytester, [model], scripts(by_arg=BY_ARGUMENT))
    result = run(pytester, "--mad-tags", "alpha", "--mad-gpus", "2", "-n", "2")
    result.assert_outcomes(passed=2)
    # perf.csv names the model as madengine does; its variants differ in args.
    perf = read_perf(pytester.path / "perf.csv")
    values = {(row["model"], row["args"]): row["performance"] for row in perf}
    assert values == {("alpha", "--v 1/2"): "12", ("alpha", "--v 1:2"): "21"}
    logs = sorted(pytester.path.glob("mad_output/logs/*/*.log"))
    assert len(logs) == 2 and {log.read_text().splitlines()[-1] for log in logs} == {
        "performance: 12 fps", "performance: 21 fps"
    }  # fmt: skip


def test_two_sessions_in_one_tree_read_only_their_own_output(pytester: pytest.Pytester) -> None:
    unique_tree(pytester, [entry("alpha", scripts="scripts/dummy/by_arg.sh")],
                scripts(by_arg=BY_ARGUMENT))  # fmt: skip

    def context(value: int) -> str:
        return f'{{"docker_env_vars": {{"VALUE": "{value}", "NAP": "2"}}}}'

    sessions = [
        pytest_session(pytester, "--mad-tags", "alpha", f"--mad-perf-csv={name}.csv",
                       "--mad-context", context(value))
        for name, value in (("first", 111), ("second", 222))
    ]  # fmt: skip
    outputs = [session.communicate(timeout=300)[0] for session in sessions]
    assert [session.returncode for session in sessions] == [0, 0], outputs
    for name, value in (("first", "111"), ("second", "222")):
        assert [row["performance"] for row in read_perf(pytester.path / f"{name}.csv")] == [value]


def test_a_mount_of_a_missing_host_path_fails_and_creates_nothing(
    pytester: pytest.Pytester, tmp_path: Path
) -> None:
    missing = tmp_path / "not" / "there"
    unique_tree(pytester, [entry("alpha")])
    context = f'{{"docker_mounts": {{"/data": "{missing}"}}}}'
    result = run(pytester, "--mad-tags", "alpha", "--mad-context", context)
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(["*Docker Engine on * failed: *bind source path does not exist*"])
    assert not missing.exists() and not missing.parent.exists()


def test_a_model_killed_for_memory_says_so(pytester: pytest.Pytester) -> None:
    hog = "#!/bin/sh\necho allocating\nhead -c 200000000 /dev/zero | tail > /dev/null\n"
    unique_tree(pytester, [entry("hog", scripts="scripts/dummy/hog.sh")], scripts(hog=hog))
    result = run(pytester, "--mad-tags", "hog", "--mad-context", '{"docker_memory": "32m"}')
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(["*killed for memory (out of memory, exit code 137)*"])


def test_containers_and_scratch_of_a_killed_session_are_removed_by_the_next(
    pytester: pytest.Pytester, docker_client: docker.DockerClient
) -> None:
    models = [entry("sleepy", scripts="scripts/dummy/sleeper.sh", args="120"), entry("quick")]
    unique_tree(pytester, models, scripts(sleeper=SLEEPER))
    session = pytest_session(pytester, "--mad-tags", "sleepy")
    killed = wait_for_container(docker_client, session)
    session.kill()  # kill -9: no cleanup of any kind runs
    session.wait(timeout=30)
    left = docker_client.containers.list(all=True, filters={"label": f"{SESSION_LABEL}={killed}"})
    assert len(left) == 1
    scratch = Path(tempfile.gettempdir()).glob(f"mad-session-{killed}-*")
    assert len(list(scratch)) == 1  # its workspaces, left on this machine
    run(pytester, "--mad-tags", "quick").assert_outcomes(passed=1)
    assert (
        docker_client.containers.list(all=True, filters={"label": f"{SESSION_LABEL}={killed}"})
        == []
    )
    assert list(Path(tempfile.gettempdir()).glob(f"mad-session-{killed}-*")) == []


def test_three_quick_ctrl_c_end_cleanly(pytester: pytest.Pytester, docker_client) -> None:
    unique_tree(pytester, [entry("sleepy", scripts="scripts/dummy/sleeper.sh", args="120")],
                scripts(sleeper=SLEEPER))  # fmt: skip
    session = pytest_session(pytester, "--mad-tags", "sleepy")
    session_id = wait_for_container(docker_client, session)
    for _ in range(3):
        session.send_signal(signal.SIGINT)
        time.sleep(0.15)
    output, _ = session.communicate(timeout=60)
    assert session.returncode == pytest.ExitCode.INTERRUPTED, output
    assert "Traceback" not in output and "KeyboardInterrupt" in output
    # At once, not seconds later: the cleanup was not cut short.
    assert (
        docker_client.containers.list(all=True, filters={"label": f"{SESSION_LABEL}={session_id}"})
        == []
    )


@pytest.fixture
def host1(test_hosts: Path, real_home: None) -> Iterator[docker.DockerClient]:
    with HostLinks() as links:
        host = next(h for h in load_hosts(test_hosts) if h.name == "mad-host1")
        client = links.client(host)
        yield client
        client.close()


def test_a_pull_from_a_frozen_engine_gives_up_at_its_deadline(
    host1: docker.DockerClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The SDK sends pulls (and builds) with no timeout: they wait STREAM_SILENCE_S.
    monkeypatch.setattr(containers, "STREAM_SILENCE_S", 2)
    pid = int((HOST_DIR / "host1" / "docker.pid").read_text())
    os.kill(pid, signal.SIGSTOP)
    try:
        started = time.monotonic()
        with pytest.raises(containers.ENGINE_FAILURES):
            host1.api.pull("mad-base/busybox", tag="latest")
        waited = time.monotonic() - started
    finally:
        os.kill(pid, signal.SIGCONT)
    assert waited < 30


@pytest.mark.parametrize(
    "at_once", [("-n", "2"), ("--mad-concurrency", "2")], ids=["xdist", "in-process"]
)
def test_a_frozen_host_is_lost_in_time_and_its_tests_placed_again(
    pytester: pytest.Pytester,
    test_hosts: Path,
    host1: docker.DockerClient,
    at_once: tuple[str, ...],
) -> None:
    models = [entry(f"m{i}", scripts="scripts/dummy/sleeper.sh", args="3") for i in range(2)]
    unique_tree(pytester, models, scripts(sleeper=SLEEPER))
    pid = int((HOST_DIR / "host1" / "docker.pid").read_text())
    session = pytest_session(pytester, *at_once, "--mad-tags", "dummies",
                             f"--mad-hosts={test_hosts}", "--junitxml=r.xml")  # fmt: skip
    try:
        frozen = wait_for_container(host1, session)
        os.kill(pid, signal.SIGSTOP)  # the engine stops answering, its socket stays open
        started = time.monotonic()
        output, _ = session.communicate(timeout=240)
        lost_after = time.monotonic() - started
    finally:
        os.kill(pid, signal.SIGCONT)
        if session.poll() is None:
            session.kill()
    assert session.returncode == 0, output
    assert lost_after < 90, f"the session took {lost_after:.0f} s after the host froze"
    assert "madengine: host mad-host1 lost:" in output
    properties = junit_properties(pytester.path / "r.xml")
    assert {props["host"] for props in properties.values()} == {"mad-host2"}
    # Its container is still there (the host could not be asked); the next session of
    # this machine removes it, the controller that started it being gone.
    assert host1.containers.list(all=True, filters={"label": f"{SESSION_LABEL}={frozen}"})
    unique_tree(pytester, [entry("quick")])
    run(pytester, "--mad-tags", "quick", f"--mad-hosts={test_hosts}").assert_outcomes(passed=1)
    assert host1.containers.list(all=True, filters={"label": f"{SESSION_LABEL}={frozen}"}) == []


def ssh_tunnels_of(parent: int) -> list[int]:
    """The pids of the `ssh -N -L` tunnels a process started."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
            argv = (stat.parent / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue  # ended meanwhile
        if int(fields[1]) == parent and argv[0] == b"ssh" and b"-L" in argv:
            found.append(int(stat.parent.name))
    return found


def runs(pid: int) -> bool:
    """Whether the process is there and not a zombie."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def leftovers(engines: dict[str, docker.DockerClient], session_id: str, image_id: str) -> dict:
    """Engine name -> the names of containers still there of the session (by its label)
    or of the test's own image (a container started without our labels counts too)."""
    found = {}
    for name, client in engines.items():
        labelled = client.containers.list(
            all=True, filters={"label": f"{SESSION_LABEL}={session_id}"}
        )
        of_image = client.containers.list(all=True, filters={"ancestor": image_id})
        names = sorted({c.name for c in [*labelled, *of_image]})
        if names:
            found[name] = names
    return found


@pytest.mark.parametrize(
    ("signum", "to_group", "at_once"),
    [
        (signal.SIGTERM, True, ("--mad-concurrency", "4")),
        (signal.SIGTERM, True, ("-n", "2")),
        (signal.SIGHUP, False, ("--mad-concurrency", "4")),
        (signal.SIGHUP, False, ("-n", "2")),
        (signal.SIGINT, True, ("--mad-concurrency", "4")),
    ],
    ids=["SIGTERM-group", "SIGTERM-group-xdist", "SIGHUP", "SIGHUP-xdist", "SIGINT-group"],
)
def test_a_signalled_session_leaves_nothing_on_any_host(
    pytester: pytest.Pytester,
    docker_client: docker.DockerClient,
    test_hosts: Path,
    real_home: None,
    signum: int,
    to_group: bool,
    at_once: tuple[str, ...],
) -> None:
    """What `timeout`, a CI runner (SIGTERM to the process group) or a closed terminal
    (SIGHUP) do to a session: it stops as after Ctrl-C, with pytest's interrupted exit
    code, no container of its own on any host and no scratch directory."""
    models = [entry(f"m{i}", scripts="scripts/dummy/sleeper.sh", args="120") for i in range(4)]
    unique_tree(pytester, models, scripts(sleeper=SLEEPER))
    argv = [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", *at_once,
            "--mad-tags", "dummies", f"--mad-hosts={test_hosts}"]  # fmt: skip
    # Its own process group, as a CI job's: the signal to the group does not reach us.
    session = subprocess.Popen(argv, cwd=pytester.path, stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True,
                               start_new_session=True)  # fmt: skip
    with HostLinks() as links:
        engines = {"local": docker_client}
        engines.update({host.name: links.client(host) for host in load_hosts(test_hosts)})
        try:
            running = _running_on_every_host(engines, session)
            session_id, image_id = running.labels[SESSION_LABEL], running.image.id
            tunnels = ssh_tunnels_of(session.pid)
            assert tunnels, "the session reaches the hosts through no SSH tunnel"
            if to_group:
                os.killpg(session.pid, signum)
            else:
                session.send_signal(signum)
            output, _ = session.communicate(timeout=120)
        finally:
            if session.poll() is None:
                os.killpg(session.pid, signal.SIGKILL)
        assert session.returncode == pytest.ExitCode.INTERRUPTED, output
        assert "Traceback" not in output, output
        assert leftovers(engines, session_id, image_id) == {}, output
    assert list(Path(tempfile.gettempdir()).glob(f"mad-session-{session_id}-*")) == []
    assert [pid for pid in tunnels if runs(pid)] == [], "SSH tunnels outlived the session"


def _running_on_every_host(
    engines: dict[str, docker.DockerClient], session: subprocess.Popen[str]
) -> docker.models.containers.Container:
    """A container of the session, once one runs on each host (not the local engine)."""
    deadline = time.monotonic() + 180
    while True:
        mine = {
            name: [
                c
                for c in client.containers.list(filters={"label": CONTROLLER_LABEL})
                if c.labels[CONTROLLER_LABEL].split(":")[1] == str(session.pid)
            ]
            for name, client in engines.items()
            if name != "local"
        }
        if all(mine.values()):
            return next(iter(mine.values()))[0]
        assert time.monotonic() < deadline, "the models never ran on every host"
        assert session.poll() is None, session.communicate()[0]
        time.sleep(0.2)


def test_the_ssh_tunnels_of_a_session_killed_with_kill_9_end_too(
    pytester: pytest.Pytester, test_hosts: Path, real_home: None
) -> None:
    """The tunnels run outside pytest's process group (a signal to the group must not
    end them before the cleanup), so kill -9 of the group does not reach them: they
    end with the process that opened them. The next session removes the containers."""
    models = [entry(f"m{i}", scripts="scripts/dummy/sleeper.sh", args="120") for i in range(2)]
    unique_tree(pytester, models, scripts(sleeper=SLEEPER))
    argv = [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "--mad-concurrency", "2",
            "--mad-tags", "dummies", f"--mad-hosts={test_hosts}"]  # fmt: skip
    session = subprocess.Popen(argv, cwd=pytester.path, stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True,
                               start_new_session=True)  # fmt: skip
    with HostLinks() as links:
        engines = {host.name: links.client(host) for host in load_hosts(test_hosts)}
        try:
            running = _running_on_every_host(engines, session)
            tunnels = ssh_tunnels_of(session.pid)
            assert tunnels, "the session reaches the hosts through no SSH tunnel"
        finally:
            os.killpg(session.pid, signal.SIGKILL)
            session.communicate(timeout=30)
        deadline = time.monotonic() + 30
        while left := [pid for pid in tunnels if runs(pid)]:
            assert time.monotonic() < deadline, f"SSH tunnels {left} outlived kill -9"
            time.sleep(0.05)
        killed = running.labels[SESSION_LABEL]
        unique_tree(pytester, [entry("quick")])
        run(pytester, "--mad-tags", "quick", f"--mad-hosts={test_hosts}").assert_outcomes(passed=1)
        assert leftovers(engines, killed, running.image.id) == {}
    assert list(Path(tempfile.gettempdir()).glob(f"mad-session-{killed}-*")) == []


def _on_a_terminal(argv: list[str], cwd: Path) -> tuple[subprocess.Popen[bytes], int]:
    """The command on a terminal of its own (a pseudo-terminal that is its controlling
    terminal, as in an SSH login) and the terminal's master end. Nobody reads it: what
    a session shows before its tests run fits the terminal's buffer."""
    master, slave = pty.openpty()
    session = subprocess.Popen(
        argv, cwd=cwd, stdin=slave, stdout=slave, stderr=slave, start_new_session=True,
        preexec_fn=lambda: fcntl.ioctl(0, termios.TIOCSCTTY, 0),
    )  # fmt: skip
    os.close(slave)
    return session, master


@pytest.mark.parametrize("at_once", [("--mad-concurrency", "2"), ("-n", "2")],
                         ids=["in-process", "xdist"])  # fmt: skip
def test_a_session_whose_terminal_hangs_up_stops_and_leaves_nothing(
    pytester: pytest.Pytester,
    docker_client: docker.DockerClient,
    test_hosts: Path,
    real_home: None,
    at_once: tuple[str, ...],
) -> None:
    """A dropped SSH login: the terminal hangs up, the kernel sends SIGHUP to the
    session's process group, and every write to the terminal fails from then on."""
    models = [entry(f"m{i}", scripts="scripts/dummy/sleeper.sh", args="120") for i in range(2)]
    unique_tree(pytester, models, scripts(sleeper=SLEEPER))
    argv = [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", *at_once,
            "--mad-tags", "dummies", f"--mad-hosts={test_hosts}"]  # fmt: skip
    session, terminal = _on_a_terminal(argv, pytester.path)
    with HostLinks() as links:
        engines = {"local": docker_client}
        engines.update({host.name: links.client(host) for host in load_hosts(test_hosts)})
        try:
            running = _running_on_every_host(engines, session)
            tunnels = ssh_tunnels_of(session.pid)
            os.close(terminal)  # the terminal goes away
            returncode = session.wait(timeout=120)
        finally:
            if session.poll() is None:
                os.killpg(session.pid, signal.SIGKILL)
        assert returncode == pytest.ExitCode.INTERRUPTED
        session_id = running.labels[SESSION_LABEL]
        assert leftovers(engines, session_id, running.image.id) == {}
    assert list(Path(tempfile.gettempdir()).glob(f"mad-session-{session_id}-*")) == []
    assert [pid for pid in tunnels if runs(pid)] == [], "SSH tunnels outlived the session"

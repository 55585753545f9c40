"""A session: the tree and plan of the options, and the loop that runs a test
(place -> run -> retry on a lost host) into a `TestRecord`.

No pytest here: the plugin, the `madengine` command and plain Python drive the same
code. From Python:

    options = parse_options(RawOptions(root="MAD", tags=("dummy",)))
    with Session.open(options) as session:
        for test in session.mad.plan.tests:
            record = session.run(test)
"""

from __future__ import annotations

import dataclasses
import functools
import threading
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping
from concurrent.futures import CancelledError, Future, ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from pytest_madengine.backends import (
    Backend,
    BackendSettings,
    BackendSetup,
    CreatesAhead,
    HostProber,
    OutputSink,
    PushProgressSink,
    create_backend,
)
from pytest_madengine.core import records
from pytest_madengine.core.build import (
    BuildPlan,
    BuildTarget,
    build_target,
    check_publisher,
    plan_builds,
)
from pytest_madengine.core.concurrency import PlaceAgain, RunPlaced, RunsAhead, SinkFor
from pytest_madengine.core.options import Options
from pytest_madengine.core.planning import (
    Plan,
    PlannedTest,
    affinity_labels,
    host_unfit_reason,
    plan_tests,
)
from pytest_madengine.core.records import BuildRecord, RunFacts, TestRecord
from pytest_madengine.core.runner import (
    MadeAhead,
    SpecHook,
    TestRunner,
    subject_of,
)
from pytest_madengine.core.tree.discovery import Tree, load_tree
from pytest_madengine.core.tree.dockerfiles import DockerfileIndex
from pytest_madengine.data import ProgressSink
from pytest_madengine.errors import HostLost, NoHost
from pytest_madengine.resources.health import Heartbeat, HostHealth
from pytest_madengine.resources.hosts import Host
from pytest_madengine.resources.interrupts import deferred_interrupts
from pytest_madengine.resources.placement import (
    OFFLINE_WAIT_BEATS,
    OFFLINE_WAIT_S,
    HostPool,
    Placement,
)
from pytest_madengine.resources.processes import process_identity
from pytest_madengine.resources.scratch import new_session_dir, remove_session_dir

# How long stopping waits, in all, for the threads of tests running ahead (their
# containers are told to stop first; the sweep removes whatever is left).
STOP_JOIN_S = 10.0


def new_session_id() -> str:
    return uuid.uuid4().hex[:12]


def backend_settings(options: Options) -> BackendSettings:
    """The part of the options a backend reads, frozen: backends never see `Options`."""
    manifest = options.manifest
    pulls = None
    if manifest is not None:
        pulls = tuple(image.reference for image in manifest.images.values() if image.pulled)
    return BackendSettings(
        output_dir=options.output_dir,
        gpu_vendor=options.gpu_vendor,
        local_gpus=options.gpus,
        context=options.context,
        effective_context=options.effective_context,
        clean_cache=options.clean_cache,
        hosts_file=options.hosts_file,
        build_context_ignores=(options.output_dir, options.perf_csv),
        registry=options.registry,
        k8s_dry_run=options.k8s_dry_run,
        manifest_pulls=pulls,
        registry_auth=options.credentials.registry_auth,
    )


def backend_setup(
    options: Options,
    session_id: str,
    session_dir: Path,
    shared: Mapping[str, Any] | None,
    controller: str,
) -> BackendSetup:
    """What the session's backend is created from (the plugin's and `Session.open`'s)."""
    return BackendSetup(backend_settings(options), session_id, session_dir, shared, controller)


class MadSession:
    """The options of a session with its tree and plan, each loaded once on first use."""

    def __init__(self, options: Options) -> None:
        self.options = options
        self.dockerfiles = DockerfileIndex(options.root)

    @functools.cached_property
    def tree(self) -> Tree:
        return load_tree(self.options.root, self.dockerfiles)

    @functools.cached_property
    def plan(self) -> Plan:
        context = dict(self.options.effective_context.values)
        return plan_tests(
            self.tree, self.options.tags, context, self.dockerfiles,
            ignore_skip_gpu_arch=self.options.disable_skip_gpu_arch,
        )  # fmt: skip

    @functools.cached_property
    def builds(self) -> BuildPlan:
        """The images of a build-only session, once each, with where they are pushed."""
        options = self.options
        return plan_builds(self.plan, options.registry, options.batch, options.credentials)


class Session:
    """Runs the planned tests of one process through its backend, placing each on a
    host and GPUs no other running test of the session holds."""

    def __init__(
        self,
        mad: MadSession,
        setup: BackendSetup,
        *,
        spec_hook: SpecHook | None = None,
        on_output: OutputSink | None = None,
        on_data_progress: ProgressSink | None = None,
    ) -> None:
        self.mad = mad
        self.options = mad.options
        self.session_id = setup.session_id
        self._closed = False
        self._fits: dict[tuple[str, tuple[str, ...], tuple[str, ...]], str | None] = {}
        self.backend: Backend = create_backend(self.options.deploy, setup)
        try:
            if self.options.build_only:
                check_publisher(self.backend)
            self.health = HostHealth(self.backend.hosts())
            self.pool = HostPool(
                self.backend.hosts(), setup.session_dir / "placement",
                self.backend.hosts_down(), self.options.placement, self.health,
                max(OFFLINE_WAIT_S, OFFLINE_WAIT_BEATS * self.options.heartbeat),
            )  # fmt: skip
            self.heartbeat = self._start_heartbeat()
        except BaseException:
            self.backend.close()
            raise
        self._ahead: RunsAhead | None = None
        # Containers made ahead (see _place): tests waiting for GPUs with none claimed
        # yet, in the order they came; the GPUs claimed for one; its container; the
        # tests running whose GPUs no test claimed yet.
        self._ahead_lock = threading.Lock()
        self._waiting: dict[str, PlannedTest] = {}
        # test id -> (the test, the GPUs it claimed, the test running on them)
        self._claims: dict[str, tuple[PlannedTest, Placement, str]] = {}
        self._running: set[str] = set()  # tests whose containers run, to be claimed
        self._made: dict[str, Future[MadeAhead | None]] = {}
        self._unclaimed_runs: dict[str, Placement] = {}
        self._placing: set[str] = set()  # tests some thread places now
        self._unwatched: list[tuple[str, Future[MadeAhead | None]]] = []
        self._maker: ThreadPoolExecutor | None = None
        self._stopping = False
        # A backend that cannot make containers ahead claims no GPUs for them (nor is a
        # kept container made ahead: its name is taken when it starts).
        self._makes_ahead = isinstance(self.backend, CreatesAhead) and not self.options.keep_alive
        self.runner = TestRunner(
            self.options, self.backend, session_id=self.session_id,
            controller=setup.controller or process_identity(),
            spec_hook=spec_hook, on_output=on_output, on_data_progress=on_data_progress,
        )  # fmt: skip

    def _start_heartbeat(self) -> Heartbeat | None:
        """Pings the hosts now (each host's status and round trip from the start), then
        every --mad-heartbeat seconds; with 0, only now for `latency`, else never (and
        placement does without the hosts' health)."""
        interval = self.options.heartbeat
        if not isinstance(self.backend, HostProber) or (
            interval <= 0 and self.options.placement != "latency"
        ):
            self.pool.health = None
            return None
        heartbeat = Heartbeat(self.pool.hosts, self.backend.ping_host, self.health, interval,
                              self.pool.busy_hosts)  # fmt: skip
        if interval > 0:
            heartbeat.start()
        else:
            heartbeat.beat()
        return heartbeat

    @classmethod
    @contextmanager
    def open(
        cls,
        options: Options,
        session_dir: Path | None = None,
        shared: Mapping[str, Any] | None = None,
        **kwargs: Any,
    ) -> Iterator[Session]:
        """A session of its own (the controller's part too): on the way out it removes
        whatever it left on the hosts."""
        session_id = new_session_id()
        directory = session_dir or new_session_dir(session_id)
        try:
            setup = backend_setup(options, session_id, directory, shared, process_identity())
            session = cls(MadSession(options), setup, **kwargs)
            try:
                yield session
            finally:
                session.close(sweep=True)
        finally:
            if session_dir is None:
                remove_session_dir(directory)

    def fits(self, test: PlannedTest, host: Host) -> str | None:
        """Why the host cannot run the test, or None; worked out once per host and kind
        of model (a placement asks it of every host, for each of a fleet's tests)."""
        model = test.model
        key = (host.name, tuple(model.skip_gpu_arch), tuple(model.entry.get("host_labels") or ()))
        if key not in self._fits:
            self._fits[key] = host_unfit_reason(
                model, self.options.gpu_vendor, host.vendor, host.architecture, host.labels,
                ignore_skip_gpu_arch=self.options.disable_skip_gpu_arch,
            )  # fmt: skip
        return self._fits[key]

    @property
    def concurrency(self) -> int:
        """How many tests this process runs at once: --mad-concurrency, where `auto`
        is the GPUs of all hosts (a test holds at least one)."""
        if self.options.concurrency is not None:
            return self.options.concurrency
        return max(1, sum(host.gpus.count for host in self.pool.hosts))

    def run_ahead(
        self, tests: Iterable[tuple[PlannedTest, str]], sink_for: SinkFor | None = None
    ) -> None:
        """Starts the tests (test, id) in that order, as many at once as `concurrency`
        and the GPU leases allow: one loop places them in order, each placed test runs
        on a worker thread; `run` then waits for a test's record. More can be handed
        later; each id runs once."""
        if self._ahead is None:
            # The pool bounds the tests running at once, the workers those placed.
            self.pool.limit_running(self.concurrency)
            self._ahead = RunsAhead(None, self.concurrency, sink_for, place=self._place_step)
        self._ahead.submit(tests)

    def run(
        self,
        test: PlannedTest,
        test_id: str | None = None,
        on_wait: Callable[[], None] | None = None,
    ) -> TestRecord:
        """The test's record. A host lost mid-run is left out for the rest of the session
        and the test placed again, up to `retries` times. A test handed to `run_ahead`
        is not run again: its record is waited for, calling `on_wait` now and then."""
        test_id = test_id or test.name
        if self._ahead is not None and test_id in self._ahead:
            return self._ahead.result(test_id, on_wait)
        return self._run_now(test, test_id)

    def _run_now(
        self, test: PlannedTest, test_id: str, on_output: OutputSink | None = None
    ) -> TestRecord:
        """Places and runs the test on this thread, placing it again on a lost host."""
        lost: tuple[str, ...] = ()
        while True:
            outcome = self._place_step(test, test_id, lost)(on_output, _nothing)
            if not isinstance(outcome, PlaceAgain):
                return outcome
            lost = outcome.lost

    def _place_step(self, test: PlannedTest, test_id: str, lost: tuple[str, ...]) -> RunPlaced:
        """Places the test (waiting for its GPUs): what then runs it. A test that will
        not run (skipped, no host can take it) is a run that only gives its record."""
        if test.skip_reason:
            self._drop_made(test_id)  # it was expected, and will not run
            subject = subject_of(test, self.options)
            return functools.partial(_given, records.skipped(subject, test.skip_reason))
        subject = subject_of(test, self.options)
        try:
            placement, made = self._place(test, test_id)
        except NoHost as exc:
            if not lost and not exc.fails:  # fails: every host that fits stayed offline
                return functools.partial(_given, records.skipped(subject, str(exc)))
            given_up = RunFacts(retried_after=lost)
            reason = "; ".join([*lost, str(exc)])
            redact = self.options.credentials.redact
            return functools.partial(
                _given, records.failed(subject, reason, given_up, redact=redact)
            )
        return functools.partial(self._run_placed, test, test_id, placement, made, lost)

    def _run_placed(
        self,
        test: PlannedTest,
        test_id: str,
        placement: Placement,
        made: MadeAhead | None,
        lost: tuple[str, ...],
        on_output: OutputSink | None,
        freed: Callable[[], None],
    ) -> TestRecord | PlaceAgain:
        """Runs the placed test; PlaceAgain when its host was lost and a retry is left.
        `freed` is called once its GPUs are given back."""
        try:
            on_exit = functools.partial(self._ended, placement, freed)
            on_started = functools.partial(self._started, placement)
            record = self.runner.run(test, test_id, placement, on_output, on_exit, made,
                                     on_started)  # fmt: skip
        except HostLost as exc:
            self.pool.mark_down(exc.host, exc.reason)
            lost = (*lost, str(exc))
            retries = self.options.retries
            if len(lost) <= retries:
                return PlaceAgain(lost)
            reason = f"{'; '.join(lost)}; no retry left (--mad-retries {retries})"
            subject = subject_of(test, self.options)
            redact = self.options.credentials.redact
            return records.failed(subject, reason, RunFacts(retried_after=lost), redact=redact)
        finally:
            self._ended(placement, freed)
        return dataclasses.replace(record, retried_after=lost)

    # Containers made ahead. While a test waits for GPUs (the tests next in line, or the
    # test after the running one), its container is made on the GPUs it is expected to
    # get: those of a running test, claimed so that no other test of this process takes
    # them first. When its GPUs are free it only has to start.

    def _place(self, test: PlannedTest, test_id: str) -> tuple[Placement, MadeAhead | None]:
        """The test's placement, and its container when one was made for it."""

        def fits(host: Host) -> str | None:
            return self.fits(test, host)

        def claimed() -> Placement | None:
            with self._ahead_lock:
                own = self._claims.get(test_id)
            return None if own is None else own[1]

        def others() -> set[tuple[str, int]]:
            """The GPUs other tests claimed, left to them while this test's own claim
            may still come (its run goes on, its host answers): a test in line whose
            claimed GPUs free first starts out of line meanwhile (see _ended), so none
            idles. Without such a claim, it takes whatever frees first."""
            if not self._live_claims([test_id]):
                return set()
            with self._ahead_lock:
                return {(claim.host.name, gpu.index)
                        for holder, (_, claim, _) in self._claims.items()
                        if holder != test_id for gpu in claim.gpus}  # fmt: skip

        n_gpus, affinity = test.model.n_gpus, affinity_labels(test.model)
        with self._ahead_lock:
            self._placing.add(test_id)
        try:
            placement = self.pool.try_acquire(n_gpus, test_id, fits, claimed(), others(), affinity)
            if placement is None:  # it waits, and so do the tests in line behind it
                ahead = self._ahead if self._makes_ahead else None
                line = ahead.in_line() if ahead is not None else []
                self._expect([(test, test_id), *line])
                self._start_claimants_of_ended_runs()
                placement = self.pool.acquire(
                    n_gpus, test_id, fits, prefer=claimed, avoid=others, affinity=affinity
                )
        except BaseException:
            self._drop_made(test_id)
            raise
        finally:
            with self._ahead_lock:
                self._placing.discard(test_id)
        return placement, self._take_made(test_id, placement)

    def _makes_ahead_on(self, placement: Placement) -> bool:
        return (
            self._makes_ahead
            and bool(placement.gpus)
            and not placement.host.scheduled
            # a claim would pin the next test to this host
            and self.pool.strategy != "round-robin"
        )

    def _expect(self, tests: Iterable[tuple[PlannedTest, str]]) -> None:
        """The tests (test, id) will wait for GPUs, in this order: each gets the GPUs of
        a running test no other test claimed yet, when one fits it, or else the next
        such GPUs (see _started)."""
        if not self._makes_ahead:
            return
        with self._ahead_lock:
            for test, test_id in tests:
                # A test with data fetches it in its turn: its container is not made ahead.
                if self._stopping or test.skip_reason or test.model.data:
                    continue
                if test_id in self._claims or test_id in self._waiting:
                    continue
                for holder, running in self._unclaimed_runs.items():
                    if self._could_take(test, running):
                        del self._unclaimed_runs[holder]
                        self._claim(test, test_id, running)
                        break
                else:
                    self._waiting[test_id] = test
        self._watch_made()

    def _started(self, placement: Placement) -> None:
        """A test's container started on the placement: the first test waiting for such
        GPUs gets its container made for them (on one thread, one at a time); with none,
        the GPUs are left for the next test to come."""
        if not self._makes_ahead_on(placement):
            return
        with self._ahead_lock:
            if self._stopping:
                return
            self._running.add(placement.holder)
            for test_id, test in self._waiting.items():
                if self._could_take(test, placement):
                    self._claim(test, test_id, placement)
                    break
            else:
                self._unclaimed_runs[placement.holder] = placement
        self._watch_made()

    def _claim(self, test: PlannedTest, test_id: str, running: Placement) -> None:
        """(Under the lock.) The GPUs of the running placement are the test's next, and
        its container is made on them."""
        self._waiting.pop(test_id, None)
        claim = Placement(running.host, running.gpus, test_id)
        self._claims[test_id] = (test, claim, running.holder)
        if self._maker is None:
            self._maker = ThreadPoolExecutor(1, thread_name_prefix="mad-make")
        made = self._maker.submit(self._make, test, claim)
        self._made[test_id] = made
        self._unwatched.append((test_id, made))

    def _watch_made(self) -> None:
        """(Not under the lock: a callback on a future made already runs at once.) The
        containers claimed since are watched: see _made_ready."""
        with self._ahead_lock:
            unwatched, self._unwatched = self._unwatched, []
        for test_id, made in unwatched:
            made.add_done_callback(functools.partial(self._made_ready, test_id))

    def _ended(self, placement: Placement, freed: Callable[[], None]) -> None:
        """The test's container ended: its GPUs are given back (and the test counts no
        more against the concurrency)."""
        if not self._makes_ahead:
            self.pool.release(placement)
            freed()
            return
        with self._ahead_lock:
            self._unclaimed_runs.pop(placement.holder, None)
            was_running = placement.holder in self._running
            self._running.discard(placement.holder)
        self.pool.release(placement)
        freed()
        if was_running:
            self._start_claimant(placement.holder)

    def _live_claims(self, holders: list[str]) -> bool:
        """Whether each of these tests has a claim that may still come: the run on its
        GPUs goes on, and their host is neither down nor offline."""
        with self._ahead_lock:
            claims = [self._claims.get(holder) for holder in holders]
            if any(claimed is None or claimed[2] not in self._running for claimed in claims):
                return False
        hosts = {claimed[1].host.name for claimed in claims if claimed is not None}
        down, health = self.pool.down(), self.pool.health
        return not any(
            host in down or (health is not None and health.unusable(host)) for host in hosts
        )

    def _start_claimants_of_ended_runs(self) -> None:
        """Tests in line whose claimed GPUs were given back while no test was being
        placed (none could pass one then) start now, as at the end of those runs."""
        with self._ahead_lock:
            ended = {
                source for _, _, source in self._claims.values() if source not in self._running
            }
        for source in ended:
            self._start_claimant(source)

    def _made_ready(self, test_id: str, made: Future[MadeAhead | None]) -> None:
        """A container made ahead is ready: when the run whose GPUs it was made for
        ended meanwhile, its test starts now (see _start_claimant)."""
        with self._ahead_lock:
            claimed = self._claims.get(test_id)
            if (
                claimed is None
                or claimed[2] in self._running
                or self._made.get(test_id) is not made
            ):
                return
        self._start_claimant(claimed[2])

    def _start_claimant(self, ended: str) -> None:
        """The test in line that claimed the GPUs of the ended run starts on them now,
        out of line, when its container is ready and the test being placed waits for
        GPUs it claimed itself (reports still come in item order). A test being placed
        without such a claim takes whatever frees first: no test in line passes it."""
        with self._ahead_lock:
            placing = list(self._placing)
        if self._stopping or not placing or not self._live_claims(placing):
            return
        with self._ahead_lock:
            found = [(holder, test, claim) for holder, (test, claim, source) in self._claims.items()
                     if source == ended and holder not in self._placing]  # fmt: skip
            pending = self._made.get(found[0][0]) if found else None
        ahead = self._ahead
        if not found or pending is None or ahead is None or not _made_now(pending):
            return
        test_id, test, claim = found[0]
        queued = ahead.take_from_line(test_id)
        if queued is None:  # being placed in its turn: it takes its claim then
            return
        try:
            affinity = affinity_labels(test.model)
            placement = self.pool.try_acquire(test.model.n_gpus, test_id,
                                              functools.partial(self.fits, test), claim, (),
                                              affinity)  # fmt: skip
        except Exception:
            placement = None
        if placement is None or not placement.same_gpus(claim):
            if placement is not None:
                self.pool.release(placement)
            ahead.put_back(queued)
            return
        made = self._take_made(test_id, placement)
        run = functools.partial(self._run_placed, test, test_id, placement, made, queued.lost)
        ahead.run_placed(queued, run)

    def _could_take(self, test: PlannedTest, placement: Placement) -> bool:
        host, n_gpus = placement.host, test.model.n_gpus
        wanted = host.gpus.count if n_gpus < 0 else n_gpus
        return wanted == len(placement.gpus) and self.fits(test, host) is None

    def _make(self, test: PlannedTest, claim: Placement) -> MadeAhead | None:
        made = self.runner.make_ahead(test, claim.holder, claim)
        if made is None:  # the GPUs are not held back for nothing
            with self._ahead_lock:
                current = self._claims.get(claim.holder)
                if current is not None and current[1] is claim:  # not claimed anew since
                    del self._claims[claim.holder]
            self.pool.wake()
        return made

    def _take_made(self, test_id: str, placement: Placement) -> MadeAhead | None:
        """The container made for the test, when it was made for this placement (else
        it is removed: the test took other GPUs after all). A test in line that had
        claimed the GPUs it took gets its claim instead, or waits for others."""
        claim, pending = self._forget(test_id)
        self._rehome_claims(placement, None if claim is None or claim.same_gpus(placement)
                            else claim)  # fmt: skip
        if pending is None:
            return None
        if claim is None or not claim.same_gpus(placement):
            _discard(pending)
            return None
        if pending.cancel():  # not begun: the run makes it, not waiting behind other makes
            return None
        try:
            return pending.result()  # a create under way ends within the engine's deadline
        except CancelledError:  # the session stops
            return None

    def _rehome_claims(self, placement: Placement, unused: Placement | None) -> None:
        """The tests that had claimed GPUs of the placement lose them (their containers
        made there are removed): the first of them takes the claim the placed test did
        not use (`unused`: the placement of the test running there) when it fits it,
        the others wait for GPUs again, first."""
        if not self._makes_ahead:
            return
        taken = {gpu.index for gpu in placement.gpus}
        with self._ahead_lock:
            robbed = [
                holder for holder, (_, claim, _) in self._claims.items()
                if claim.host.name == placement.host.name
                and taken.intersection(gpu.index for gpu in claim.gpus)
            ]  # fmt: skip
            if not robbed:
                return
            pending = [self._made.pop(holder, None) for holder in robbed]
            tests = [(holder, self._claims.pop(holder)[0]) for holder in robbed]
            first_holder, first_test = tests[0]
            if unused is not None and not self._stopping and self._could_take(first_test, unused):
                self._claim(first_test, first_holder, unused)
                tests = tests[1:]
            self._waiting = {**dict(tests), **self._waiting}
        self._watch_made()
        for made in pending:
            if made is not None:
                _discard(made)

    def _drop_made(self, test_id: str) -> None:
        _, pending = self._forget(test_id)
        if pending is not None:
            _discard(pending)

    def _forget(self, test_id: str) -> tuple[Placement | None, Future[MadeAhead | None] | None]:
        """The test waits no more: (its claim, as the placement of the test running on
        those GPUs; its container being made), each or None; whoever waits for GPUs may
        now take those it had claimed."""
        with self._ahead_lock:
            self._waiting.pop(test_id, None)
            claimed = self._claims.pop(test_id, None)
            pending = self._made.pop(test_id, None)
        if claimed is None:
            return None, pending
        self.pool.wake()
        # The claim names the test running on its GPUs, for whoever gets it next.
        _, claim, running = claimed
        return Placement(claim.host, claim.gpus, running), pending

    def build(
        self, target: BuildTarget, on_progress: PushProgressSink | None = None
    ) -> BuildRecord:
        """Builds a build-only session's image and pushes it where the target says."""
        publisher = check_publisher(self.backend)
        return build_target(
            target, publisher, self.runner.image_request, self.options.credentials, on_progress
        )

    def stop(self) -> None:
        """Starts no more tests and ends the running ones (their records say so): for
        Ctrl-C, -x, or the end of a session whose later items will not run."""
        with self._ahead_lock:  # first: no test starts out of line once runs are ended
            self._stopping = True
        self.pool.stop()
        self.runner.stop()
        with self._ahead_lock:
            maker, self._maker = self._maker, None
        if maker is not None:  # a create under way ends; then nothing is made any more
            maker.shutdown(wait=True, cancel_futures=True)
        with self._ahead_lock:
            pending = list(self._made.values())
            self._made.clear()
            self._claims.clear()
            self._waiting.clear()
            self._unclaimed_runs.clear()
            self._running.clear()
        for made in pending:
            _discard(made)
        if self._ahead is not None:
            self._ahead.stop(join_s=STOP_JOIN_S)

    def close(self, sweep: bool = False) -> None:
        """Stops what runs, gives the backend's connections back; `sweep` (the
        controller, at the end) also removes every container of the session still on
        a host."""
        if self._closed:
            return
        self._closed = True
        with deferred_interrupts():  # Ctrl-C again must not leave containers behind
            try:
                if self.heartbeat is not None:
                    self.heartbeat.stop()
                self.stop()
                if sweep:
                    self.backend.sweep(self.session_id)
            finally:
                self.backend.close()
                self.pool.close()  # a release after this opens its files again


def _given(
    record: TestRecord, on_output: OutputSink | None, freed: Callable[[], None]
) -> TestRecord:
    """The run of a test that does not run: its record."""
    return record


def _nothing() -> None:
    """What a test run on the caller's thread calls when its GPUs are given back."""


def _made_now(pending: Future[MadeAhead | None]) -> bool:
    """Whether the container is made (not being made, nor failed to be)."""
    return (
        pending.done()
        and not pending.cancelled()
        and pending.exception() is None
        and pending.result() is not None
    )


def _discard(pending: Future[MadeAhead | None]) -> None:
    """Removes the container once it is made, if it was (without waiting for it)."""

    def discard(done: Future[MadeAhead | None]) -> None:
        made = None if done.cancelled() or done.exception() else done.result()
        if made is not None:
            made.container.discard()

    pending.cancel()  # a make not begun is not made at all
    pending.add_done_callback(discard)

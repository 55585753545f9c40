"""One test on its placement: image -> run spec -> backend -> outcome -> verdict -> record.

Every way a benchmark can fail ends here as a FAILURE record with a one-line reason
(and the log's tail as detail), never as an exception, so the caller reports it as a
test failure and its perf.csv row is still written. The one exception is HostLost:
the session places the test again elsewhere.
"""

from __future__ import annotations

import dataclasses
import hashlib
import posixpath
import statistics
import threading
from collections import deque
from collections.abc import Callable
from pathlib import Path

from pytest_madengine.backends import (
    Backend,
    CreatesAhead,
    ExitWaiter,
    ImageRequest,
    MadeRun,
    OutputSink,
    RunHandle,
    RunOutcome,
    RunSpec,
)
from pytest_madengine.contract import ImageFacts, base_docker_of
from pytest_madengine.core.compare import compare
from pytest_madengine.core.options import Options
from pytest_madengine.core.planning import PlannedTest
from pytest_madengine.core.records import (
    Comparison,
    DataFacts,
    ModelFacts,
    ResultRow,
    RunFacts,
    Status,
    Subject,
    TestRecord,
    failed,
    ran_from,
    record_from_error,
    record_from_results,
    skipped,
)
from pytest_madengine.core.results import (
    Measurement,
    ResultError,
    bounded_lines,
    find_performance,
    find_repeated_performance,
    judge_measurement,
    parse_multiple_results,
)
from pytest_madengine.core.runspec import build_model_run
from pytest_madengine.core.verdicts import ResultKey
from pytest_madengine.credentials import registry_of
from pytest_madengine.data import (
    DataMissing,
    DataMount,
    DataSettings,
    ProgressSink,
    resolve_data,
)
from pytest_madengine.errors import HostLost, MadError, Stopped
from pytest_madengine.resources.hosts import Host
from pytest_madengine.resources.placement import Placement
from pytest_madengine.units import human_size
from pytest_madengine.workspace import (
    FAILED_FILE,
    GIT_COMMIT_FILE,
    REPETITION_MARKER,
    WARMUP_MARKER,
    WORKSPACE,
    CopyListings,
    ModelRun,
    memory_kill_reason,
    read_result,
    render,
    step_failure,
)

LOG_TAIL_LINES = 25
SKIP_MODEL_REASON = "skip-model-run: the container and its scripts ran, the model did not"
TAIL_LINE_CHARS = 2000
# Changes a test's run spec before it starts (the plugin's pytest_mad_run_spec hook).
SpecHook = Callable[[RunSpec, PlannedTest], RunSpec]


@dataclasses.dataclass(frozen=True)
class MadeAhead:
    """A test's container made while the test waited for GPUs, for the placement it
    was expected to get (see `TestRunner.make_ahead`; the session keeps that placement)."""

    image: ImageFacts
    run: ModelRun
    spec: RunSpec
    container: MadeRun


def image_key(request: ImageRequest, host: Host) -> tuple[object, ...]:
    """What makes an image the same on a host, whatever name a test gives it."""
    build_args = tuple(sorted(request.build_args.items()))
    where = (str(request.dockerfile), str(request.context_dir), request.reference, request.pull)
    return (host.name, *where, build_args)


def log_tail(path: Path, lines: int = LOG_TAIL_LINES) -> str:
    """The last lines of a log under a heading naming it, read without holding the file."""
    if not path.exists():
        return ""
    with path.open(encoding="utf-8", errors="replace") as handle:
        kept = deque(bounded_lines(handle), maxlen=lines)
    # A tail line is shown, not parsed: its end is enough.
    tail = "".join(line if len(line) <= TAIL_LINE_CHARS else "..." + line[-TAIL_LINE_CHARS:]
                   for line in kept).rstrip()  # fmt: skip
    return f"--- last lines of {path} ---\n{tail}" if tail else f"--- {path} is empty ---"


def measure(test: PlannedTest, outcome: RunOutcome, run: ModelRun) -> list[Measurement]:
    """The results of a finished run: its multiple_results CSV (in the workspace, else
    in the model directory, as madengine looks), else its performance line."""
    model = test.model
    if model.multiple_results:
        text = read_result(outcome.results, run.result_paths)
        if text is None:
            raise ResultError(f"{model.multiple_results}: multiple_results CSV was not written")
        return parse_multiple_results(text, test.name, model.multiple_results)
    with outcome.log_path.open(encoding="utf-8", errors="replace") as log:
        if not run.repeated:
            value, metric = find_performance(bounded_lines(log))
            return [Measurement(test.name, value, metric)]
        samples, metric = find_repeated_performance(
            bounded_lines(log), run.repeat, REPETITION_MARKER, WARMUP_MARKER
        )
    median = statistics.median(samples)
    return [Measurement(test.name, median, metric, samples=tuple(samples))]


def run_failure(outcome: RunOutcome, timeout_s: float | None) -> str | None:
    """Why the run failed, if it did: the backend's own reason, a step of the run that
    said so (a pre script by its name), the timeout, or the exit code."""
    if outcome.failure:
        return outcome.failure
    if outcome.timed_out:
        return f"timeout after {timeout_s:g} s"
    if outcome.oom_killed:
        return memory_kill_reason(outcome.exit_code)
    failed = step_failure(outcome.results.get(posixpath.join(WORKSPACE, FAILED_FILE)))
    if failed is not None:
        return failed.reason()
    if outcome.exit_code != 0:
        return f"exit code {outcome.exit_code}"
    return None


def model_facts(test: PlannedTest, options: Options) -> ModelFacts:
    """What perf.csv records of the test before anything runs."""
    model = test.model
    context = options.effective_context
    args = " ".join(
        part for part in (context.get("model_args") or model.args, test.selected.extra_args) if part
    )
    distributed = context.get("distributed") or {}
    launcher = distributed.get("launcher") if isinstance(distributed, dict) else None
    return ModelFacts(
        model=model.name,  # madengine's name; the test's id keeps parameters and variant
        n_gpus=model.n_gpus,
        args=args,
        tags=model.tags,
        docker_file=test.dockerfile.relpath if test.dockerfile else "",
        docker_image=test.image or "",
        training_precision=model.training_precision or "",
        gpu_architecture=context.gpu_architecture or "",
        dataname=model.data or "",
        # madengine's launcher of a local run is docker.
        launcher=str(launcher or ("docker" if options.deploy == "docker" else "")),
    )


def data_note(data_name: str, mount: DataMount) -> str:
    """The log's line on where the data came from."""
    home = mount.env.get("MAD_DATAHOME", "")
    where = f"{mount.provider} {mount.source}".strip()
    if mount.download_s is None:
        return f"data '{data_name}': {where} at MAD_DATAHOME={home}"
    size = human_size(mount.size_bytes) or "?"
    if mount.fetched:
        how = f"{size} downloaded in {mount.download_s:.2f} s"
    else:
        copy = mount.binds[0].source if mount.binds else "?"
        how = f"{size}, the copy fetched earlier ({copy})"
    return f"data '{data_name}': {where}: {how}, at MAD_DATAHOME={home}"


def subject_of(test: PlannedTest, options: Options) -> Subject:
    """What every record of the test says, whatever becomes of its run."""
    return Subject(test.name, model_facts(test, options), options.deploy)


class TestRunner:
    """Runs planned tests on their placements through one backend."""

    __test__ = False  # not a pytest test class, whatever its name

    def __init__(
        self,
        options: Options,
        backend: Backend,
        *,
        session_id: str,
        controller: str = "",
        spec_hook: SpecHook | None = None,
        on_output: OutputSink | None = None,
        on_data_progress: ProgressSink | None = None,
    ) -> None:
        self.options = options
        self.backend = backend
        self.session_id = session_id
        self.controller = controller
        self.spec_hook = spec_hook
        self.on_output = on_output
        # Containers running now, from any thread, so that `stop` can end them all.
        self._running: set[RunHandle] = set()
        self._running_lock = threading.Lock()
        self._stopped = False
        self._copy_listings = CopyListings()  # the script folders, walked once each
        # Images this process has made ready on a host (image_key): a container made
        # ahead never waits for a build, a pull or a copy while another test runs.
        self._images_ready: set[tuple[object, ...]] = set()
        self.log_dir = options.output_dir / "logs" / session_id
        self.data_settings = DataSettings(
            credentials=options.credentials,
            root=options.root,
            cache_dir=options.data_cache,
            force_mirror_local=options.force_mirror_local,
            progress=on_data_progress,
        )

    def log_path(self, test: PlannedTest, test_id: str) -> Path:
        """A log of its own for every test of the session: the readable name, and a hash
        of the whole id, since ids that differ only in `/` or `:` read the same."""
        safe = "".join(c if c.isalnum() or c in "-_.[]=" else "_" for c in test.name)[:120]
        digest = hashlib.sha256(test_id.encode()).hexdigest()[:8]
        return self.log_dir / f"{safe}.{digest}.log"

    def image_request(self, test: PlannedTest) -> ImageRequest:
        """Build the test's Dockerfile, or take the context's MAD_CONTAINER_IMAGE, or,
        with a build manifest, its image."""
        assert test.image is not None
        options = self.options
        if test.image_override:
            return ImageRequest(name=test.image, reference=test.image, pull_if_missing=True)
        manifest = options.manifest
        if manifest is None:
            assert test.dockerfile is not None
            build_args = {
                str(key): str(value)
                for key, value in options.effective_context.get("docker_build_arg").items()
            }
            if test.model.cred:  # madengine's cred build args, over the context's
                build_args.update(
                    options.credentials.model_variables(test.model.cred, test.model.name)
                )
            return ImageRequest(
                name=test.image,
                dockerfile=test.dockerfile.path,
                context_dir=options.root / test.model.dockercontext,
                build_args=build_args,
                base_docker=base_docker_of(test.dockerfile.path, build_args),
                secrets=options.credentials.secrets(),
            )
        entry = manifest.image_for(test.image, test.model.name)
        if entry is None:
            built = ", ".join(sorted(manifest.images)) or "nothing"
            raise MadError(
                f"{test.image} is not in the build manifest {manifest.path} (built: {built})"
            )
        auth = self.options.credentials.registry_auth(registry_of(entry.reference))
        return ImageRequest(
            name=test.image,
            reference=entry.reference,
            pull=entry.pulled,
            auth=auth if entry.pulled else None,
            base_docker=entry.base_docker,
            build_duration=entry.build_duration,
        )

    def resolve_data(self, data_name: str) -> tuple[DataMount | None, DataFacts, tuple[str, ...]]:
        """(the mount, or None when no provider serves the data, what the record says of
        it, the lines its log starts with). MadError when the entry itself is wrong."""
        redact = self.options.credentials.redact
        try:
            mount = resolve_data(data_name, self.options.data_sources, self.data_settings)
        except DataMissing as exc:
            # As madengine: the model runs without its data; the script decides.
            lines = tuple(redact(line) for line in exc.log_lines())
            return None, DataFacts(data_name, problem=redact(str(exc))), lines
        facts = DataFacts(
            data_name, mount.provider, mount.source, mount.size_bytes, mount.download_s,
            mount.fetched,
        )  # fmt: skip
        where = f"data '{data_name}': {mount.provider} {mount.source}"
        notes = tuple(redact(f"{where}: {note}") for note in mount.notes)
        return mount, facts, (*notes, redact(data_note(data_name, mount)))

    def stop(self) -> None:
        """Ends every container running now and starts no more (Stopped instead): a
        session that stops while tests run on other threads leaves none behind."""
        with self._running_lock:
            self._stopped = True
            running = list(self._running)
        for handle in running:
            handle.cancel()

    def _wait(self, handle: RunHandle, on_exit: Callable[[], None] | None) -> RunOutcome:
        with self._running_lock:
            stopped = self._stopped
            if not stopped:
                self._running.add(handle)
        if stopped:  # stop came while it started: it must not run on
            handle.cancel()
        try:
            if on_exit is None or not isinstance(handle, ExitWaiter):
                return handle.wait()
            try:
                ended = handle.wait_exit()
            except BaseException:
                return handle.wait()  # raises it again, after removing the container
            given_back: Exception | None = None
            if ended:
                try:
                    on_exit()
                except Exception as exc:  # raised once the container is seen to
                    given_back = exc
            outcome = handle.wait()
            if given_back is not None:
                raise given_back
            return outcome
        finally:
            with self._running_lock:
                self._running.discard(handle)

    def run(
        self,
        test: PlannedTest,
        test_id: str,
        placement: Placement,
        on_output: OutputSink | None = None,
        on_exit: Callable[[], None] | None = None,
        made: MadeAhead | None = None,
        on_started: Callable[[], None] | None = None,
    ) -> TestRecord:
        """Prepares, runs and judges; HostLost when the placed host went away, Stopped
        when the runner was stopped first. No known secret is left in the record or the
        log, whatever the model printed. `on_output` is this run's, over the runner's;
        `on_exit` is called once the command ended, before the results are read back
        (when the backend can tell); `on_started` once the container started. `made`:
        the test's container made ahead for this placement, started instead of a new one."""
        if self._stopped:
            if made is not None:
                made.container.discard()
            raise Stopped(f"{test_id}: the session is stopping")
        sink = on_output or self.on_output
        record = self._run(test, test_id, placement, sink, on_exit, made, on_started)
        if record.log_path:
            self.options.credentials.redact_file(Path(record.log_path))
        # Every text masked: what a model, an engine or a registry wrote, and what the
        # user gave (args, tag parameters).
        return self.options.credentials.mask_all(record)

    def _spec(
        self,
        test: PlannedTest,
        test_id: str,
        placement: Placement,
        image: ImageFacts,
        data: DataMount | None = None,
        notes: tuple[str, ...] = (),
    ) -> tuple[ModelRun, RunSpec]:
        """The steps of the test's run on its placement, and what the backend runs."""
        run = build_model_run(
            test, self.options, placement.host,
            image=image.name, image_id=image.docker_sha or None, gpus=placement.gpus,
            session_id=self.session_id, test_id=test_id, log_path=self.log_path(test, test_id),
            data=data, controller=self.controller, log_notes=notes,
        )  # fmt: skip
        run = self.options.tools.apply(run, self.options.effective_context.get("tools") or [])
        spec = render(run, self._copy_listings)
        if self.spec_hook is not None:
            spec = self.spec_hook(spec, test)
        return run, spec

    def make_ahead(self, test: PlannedTest, test_id: str, placement: Placement) -> MadeAhead | None:
        """The test's container, made (not started) for the placement it is expected to
        get while another test still holds it; None when that is not for this test: its
        backend cannot, its image is not ready on the host (no build, pull or copy runs
        beside a benchmark), it has data to fetch, it keeps its container, or anything
        fails (its own turn does it again, and reports it)."""
        backend = self.backend
        if self._stopped or not isinstance(backend, CreatesAhead) or test.skip_reason:
            return None
        if test.model.data or placement.host.scheduled:
            return None
        try:
            request = self.image_request(test)
            if image_key(request, placement.host) not in self._images_ready:
                return None
            image = backend.prepare(request, placement.host, None)
            run, spec = self._spec(test, test_id, placement, image)
            if spec.keep_alive or self._stopped:
                return None
            container = backend.create(spec, placement.host)
        except Exception:  # the test's turn meets it again, and reports it
            return None
        return MadeAhead(image, run, spec, container)

    def _run(
        self,
        test: PlannedTest,
        test_id: str,
        placement: Placement,
        sink: OutputSink | None,
        on_exit: Callable[[], None] | None = None,
        made: MadeAhead | None = None,
        on_started: Callable[[], None] | None = None,
    ) -> TestRecord:
        """The record of the test on its placement: prepared (unless made ahead), run,
        then judged; a MadError on the way ends it as the record says."""
        host = placement.host
        subject = self._subject_on(test, host)
        # On a scheduled host the lease only counts GPUs: the scheduler says which ones.
        gpu_ids = () if host.scheduled else tuple(gpu.index for gpu in placement.gpus)
        ran = RunFacts(host=host.name, gpus=gpu_ids)
        try:
            if made is None:
                request = self.image_request(test)
                image = self.backend.prepare(request, host, sink)
                self._images_ready.add(image_key(request, host))
                ran = dataclasses.replace(ran, image=image)
                data, ran, subject, notes = self._data(test, ran, subject)
                run, spec = self._spec(test, test_id, placement, image, data, notes)
            else:
                ran = dataclasses.replace(ran, image=made.image)
                run, spec = made.run, made.spec
            outcome = self._start_and_wait(spec, host, test_id, sink, on_exit, made, on_started)
        except (HostLost, Stopped):
            raise
        except MadError as exc:
            return record_from_error(subject, exc, ran, self.options.credentials.redact)
        return self._judged(test, subject, run, spec, outcome, ran_from(outcome, ran))

    def _subject_on(self, test: PlannedTest, host: Host) -> Subject:
        """The test's subject, with the GPU architecture of the host it runs on."""
        subject = subject_of(test, self.options)
        if not host.architecture:
            return subject
        facts = dataclasses.replace(subject.facts, gpu_architecture=host.architecture)
        return dataclasses.replace(subject, facts=facts)

    def _data(
        self, test: PlannedTest, ran: RunFacts, subject: Subject
    ) -> tuple[DataMount | None, RunFacts, Subject, tuple[str, ...]]:
        """The test's data (when its model names any): (the mount, the facts and the
        subject saying what served it, the lines the log starts with)."""
        if not test.model.data:
            return None, ran, subject, ()
        data, data_facts, notes = self.resolve_data(test.model.data)
        facts = dataclasses.replace(subject.facts, data_provider=data_facts.provider)
        subject = dataclasses.replace(subject, facts=facts)
        return data, dataclasses.replace(ran, data=data_facts), subject, notes

    def _start_and_wait(
        self,
        spec: RunSpec,
        host: Host,
        test_id: str,
        sink: OutputSink | None,
        on_exit: Callable[[], None] | None,
        made: MadeAhead | None,
        on_started: Callable[[], None] | None,
    ) -> RunOutcome:
        """Starts the run (the container made ahead, when there is one) and waits for
        its end; Stopped, starting nothing, when the runner was stopped meanwhile."""
        if self._stopped:  # stopped while it built or fetched: start nothing now
            if made is not None:
                made.container.discard()
            raise Stopped(f"{test_id}: the session is stopping")
        if made is not None:
            handle = made.container.start(sink)  # started: waiting removes it
        else:
            handle = self.backend.start(spec, host, sink)
        if on_started is not None:
            on_started()
        return self._wait(handle, on_exit)

    def _judged(
        self,
        test: PlannedTest,
        subject: Subject,
        run: ModelRun,
        spec: RunSpec,
        outcome: RunOutcome,
        ran: RunFacts,
    ) -> TestRecord:
        """The record of a finished run: failed (with the log's tail), skipped (the
        model itself did not run), or its measurements judged."""
        cloned = (outcome.results.get(posixpath.join(WORKSPACE, GIT_COMMIT_FILE)) or "").strip()
        if cloned:
            facts = dataclasses.replace(subject.facts, git_commit=cloned)
            subject = dataclasses.replace(subject, facts=facts)
        failure = run_failure(outcome, spec.timeout_s)
        if failure is None and run.skip_model:
            return skipped(subject, SKIP_MODEL_REASON, ran)
        if failure is None:
            try:
                measurements = measure(test, outcome, run)
            except ResultError as exc:
                failure = str(exc)
        if failure is not None:
            return failed(subject, failure, ran, log_tail(outcome.log_path))
        rows, misses = self._judge(test, measurements, subject.facts)
        return record_from_results(subject, tuple(rows), tuple(misses), ran)

    def _judge(
        self, test: PlannedTest, measurements: list[Measurement], facts: ModelFacts
    ) -> tuple[list[ResultRow], list[str]]:
        """A row per measurement. A row with an empty value fails alone (madengine marks
        it FAILURE in perf.csv and the run stands); a missed expectation or baseline
        fails the test."""
        rows: list[ResultRow] = []
        misses: list[str] = []
        for measurement in measurements:
            model = test.model.name
            perf_model = f"{model}_{measurement.row_model}" if measurement.row_model else model
            baseline = self.options.baseline
            verdict = judge_measurement(
                measurement,
                test.model.expectation,
                baseline.lookup(perf_model, facts.args, facts.docker_file),
                self.options.tolerance,
            )
            unusable = baseline.unusable_value(perf_model, facts.args, facts.docker_file)
            note = None
            if unusable is not None and measurement.performance is not None:
                note = f"baseline {unusable!r} is no nonzero finite number: nothing compared"
            comparison = self._compared(test, measurement, perf_model, facts)
            reasons = [verdict.reason] if verdict.reason else []
            if comparison is not None and comparison.fails:
                reasons.append(comparison.line)  # a regression against the history
            status = Status.SUCCESS if not reasons else Status.FAILURE
            rows.append(
                ResultRow(
                    measurement.name, status, measurement.performance, measurement.metric,
                    verdict.relative_change, "; ".join(reasons) or None,
                    dict(measurement.extra), text=measurement.text, perf_model=perf_model,
                    baseline_note=note, samples=measurement.samples, comparison=comparison,
                )
            )  # fmt: skip
            empty = measurement.performance is None and not measurement.text
            if reasons and not empty:
                prefix = f"{measurement.name}: " if test.model.multiple_results else ""
                misses.extend(f"{prefix}{reason}" for reason in reasons)
        return rows, misses

    def _compared(
        self, test: PlannedTest, measurement: Measurement, perf_model: str, facts: ModelFacts
    ) -> Comparison | None:
        """The verdict against --mad-compare's history (None: no source, or no number)."""
        source = self.options.compare
        if source is None or measurement.performance is None:
            return None
        key = ResultKey(perf_model, facts.args, facts.docker_file, facts.gpu_architecture,
                            measurement.metric)  # fmt: skip
        expectation = test.model.expectation
        return compare(
            source, key, measurement.samples or (measurement.performance,),
            tolerance=self.options.tolerance,
            higher_is_better=expectation.higher_is_better if expectation else True,
            current_session=self.session_id,
        )  # fmt: skip

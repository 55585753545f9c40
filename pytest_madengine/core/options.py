"""Every option of a session, parsed and checked once, before any test runs.

Front ends (the pytest plugin, the `madengine` command, user code) fill `RawOptions`
(core/option_table.py, where every option is declared) with what the user wrote;
`parse_options` turns it into a frozen `Options` or raises a `UsageProblem`
naming the option and the value: a bad option never reaches a test.
"""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any

from pytest_madengine.backends import DEFAULT_BACKEND, check_backend_name
from pytest_madengine.core.build import BatchEntry, load_batch_manifest
from pytest_madengine.core.compare import ComparisonSource, parse_compare
from pytest_madengine.core.context import RunContext, build_context
from pytest_madengine.core.history_url import resolve_history_url
from pytest_madengine.core.manifest import BuildManifest, load_manifest
from pytest_madengine.core.option_table import (
    DEFAULT_MANIFEST_OUTPUT,
    DEFAULT_TOLERANCE,
    RawOptions,
)
from pytest_madengine.core.results import (
    Baseline,
    load_baseline,
    not_a_perf_csv,
    parse_tolerance,
)
from pytest_madengine.core.tree.tags import parse_tag, split_tags
from pytest_madengine.credentials import Credentials, load_credentials
from pytest_madengine.data import default_cache_dir
from pytest_madengine.errors import MadError, UsageProblem, read_json
from pytest_madengine.resources.gpus import GpuInventory, inventory
from pytest_madengine.resources.health import HEARTBEAT_RANGE_S
from pytest_madengine.resources.placement import STRATEGIES
from pytest_madengine.tools import ToolBox, load_toolbox

DEFAULT_GPU_VENDOR = "AMD"
DEFAULT_OUTPUT = "mad_output"
DEFAULT_PERF_CSV = "perf.csv"
DEFAULT_DEPLOY = DEFAULT_BACKEND
# What an HTML report needs beyond the plugin's own dependencies (the `report` extra).
REPORT_MODULES = ("jinja2", "pandas")


@dataclass(frozen=True)
class Options:
    """The parsed options of a session (see README for what each means)."""

    root: Path  # resolved
    tags: tuple[str, ...]
    context: RunContext  # as the user gave it
    gpus: GpuInventory  # of this machine: detected, or declared
    timeout: int | None  # over every model's own; 0: none
    clean_cache: bool
    live_output: bool
    baseline: Baseline
    tolerance: float
    output_dir: Path
    perf_csv: Path
    summary: Path | None
    hosts_file: Path | None
    manifest: BuildManifest | None
    retries: int
    deploy: str
    credentials: Credentials
    data_sources: Mapping[str, Any]
    git_commit: str  # of the MAD tree, for perf.csv
    tools: ToolBox  # the tools the context may name
    # Where what a run leaves in its workspace lands, and where `ctx_test` is read:
    # the session's working directory, as madengine's is its own.
    workspace: Path
    # Fetched datasets: in force_mirror_local when given, else in a data.json entry's
    # mirrorlocal, else in data_cache (the user's cache, shared by later sessions).
    data_cache: Path = field(default_factory=default_cache_dir)
    force_mirror_local: Path | None = None
    registry: str | None = None  # --mad-registry: where images are pushed (and pulled)
    # --mad-k8s-dry-run: the k8s backend writes its manifests here instead of applying them
    k8s_dry_run: Path | None = None
    build_only: bool = False  # build (and push) the images, run nothing
    manifest_output: Path | None = None  # build-only: the build_manifest.json written
    batch: tuple[BatchEntry, ...] | None = None  # build-only: a batch manifest's entries
    html_report: Path | None = None
    ctx_test: str = "None"  # madengine's detected context key (the file ctx_test, else None)
    keep_alive: bool = False  # leave each container running after its run
    keep_model_dir: bool = False  # bring the run directory back to the workspace
    skip_model_run: bool = False  # start the container and its scripts, not the model
    disable_skip_gpu_arch: bool = False  # run models whose skip_gpu_arch matches
    # Tests one process runs at once (--mad-concurrency); None: auto, the GPU slots.
    concurrency: int | None = 1
    # --mad-repeat / --mad-warmup, over a model's own `repeat` / `warmup`; None: its own.
    repeat: int | None = None
    warmup: int | None = None
    placement: str = "least-loaded"  # how a test's host is chosen (--mad-placement)
    compare: ComparisonSource | None = None  # what every result is judged against
    # The results history's SQLAlchemy URL (--mad-history); None: none kept. It may hold
    # a password: show it only through core.history.masked_url.
    history_url: str | None = field(default=None, repr=False)
    heartbeat: float = 10.0  # seconds between pings of the hosts (--mad-heartbeat); 0: off

    @property
    def gpu_vendor(self) -> str:
        return self.context.gpu_vendor or self.gpus.vendor or DEFAULT_GPU_VENDOR

    @property
    def effective_context(self) -> RunContext:
        """The context with what the host tells us filled in where the user said nothing."""
        return self.context.with_defaults(
            gpu_vendor=self.gpu_vendor,
            gpu_architecture=self.gpus.architecture,
            ctx_test=self.ctx_test,
        )


def _path(raw: RawOptions, text: str) -> Path:
    path = Path(text)
    return path if path.is_absolute() else raw.base_dir / path


def _int(text: str | int | None, option: str, minimum: int = 0) -> int | None:
    if text is None or text == "":
        return None
    try:
        value = int(str(text).strip())
    except ValueError:
        raise UsageProblem(f"{option}: expected a whole number, got {text!r}") from None
    if value < minimum:
        raise UsageProblem(f"{option}: must be at least {minimum}, got {value}")
    return value


def _concurrency(text: str | int | None) -> int | None:
    """--mad-concurrency: a whole number from 1, or `auto` (None: the GPU slots)."""
    if isinstance(text, str) and text.strip().lower() == "auto":
        return None
    try:
        return _int(text, "--mad-concurrency", minimum=1) or 1
    except UsageProblem:
        raise UsageProblem(
            f"--mad-concurrency: expected a whole number from 1, or auto, got {text!r}"
        ) from None


def appendable_perf_csv(path: Path, option: str) -> Path:
    """A perf.csv to append rows to: writable, and (when there) a perf.csv, not a file
    that appending would rewrite under our header (models.json given by mistake)."""
    writable_file(path, option)
    problem = not_a_perf_csv(path)
    if problem:
        raise UsageProblem(f"{option} {path}: {problem}; nothing written")
    return path


def writable_file(path: Path, option: str) -> Path:
    """An output file (made with its directories when missing), checked before anything
    is done by trying what writing it will do: os.access says yes to root anywhere, even
    in /proc. UsageProblem, one line naming the option and the path, when it cannot be."""
    if path.is_dir():
        raise UsageProblem(f"{option} {path}: is a directory")
    try:
        if path.exists():
            # Non-blocking: a FIFO without reader is refused, not waited on.
            os.close(os.open(path, os.O_WRONLY | os.O_APPEND | os.O_NONBLOCK | os.O_CLOEXEC))
            return path
        parent = path.parent
        while not parent.exists() and parent != parent.parent:
            parent = parent.parent
        if not parent.is_dir():
            raise UsageProblem(f"{option} {path}: {parent} is not a directory")
        handle, probe = tempfile.mkstemp(prefix=".mad-probe-", dir=parent)
        os.close(handle)
        os.unlink(probe)
    except OSError as exc:
        raise UsageProblem(f"{option} {path}: not writable ({exc.strerror or exc})") from None
    return path


_REGISTRY_HOST = r"[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?"
# Docker's reference grammar: a host (with a port) and namespace path components.
REGISTRY_PATTERN = re.compile(
    rf"(?:{_REGISTRY_HOST}(?:\.{_REGISTRY_HOST})*|\[[0-9A-Fa-f:]+\])(?::[0-9]{{1,5}})?"
    r"(?:/[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*)*/?"
)


def _registry(text: str | None) -> str | None:
    """--mad-registry: a registry host (HOST[:PORT][/NAMESPACE]) or nothing."""
    if not text:
        return None
    if not REGISTRY_PATTERN.fullmatch(text):
        raise UsageProblem(
            f"--mad-registry {text!r}: not a registry (expected HOST[:PORT][/NAMESPACE])"
        )
    return text


def writable_dir(path: Path, option: str) -> Path:
    """A directory we write to (made when missing): checked now, before any test."""
    if path.exists() and not path.is_dir():
        raise UsageProblem(f"{option} {path}: exists and is not a directory")
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UsageProblem(f"{option} {path}: {exc.strerror}") from None
    if not os.access(path, os.W_OK):
        raise UsageProblem(f"{option} {path}: not writable")
    return path


def git_commit(root: Path) -> str:
    """The tree's commit, for perf.csv ("" outside git)."""
    try:
        done = subprocess.run(
            ["git", "-C", str(root), "rev-parse", "HEAD"],
            capture_output=True, text=True, timeout=10, check=False,
        )  # fmt: skip
    except (OSError, subprocess.TimeoutExpired):
        return ""
    return done.stdout.strip() if done.returncode == 0 else ""


def detect_ctx_test(directory: Path) -> str:
    """madengine's `ctx_test`: the text of the file `ctx_test` in the working
    directory, else the string None (a Dockerfile header may ask for either)."""
    path = directory / "ctx_test"
    if not path.is_file():  # a FIFO there would be waited on for good
        return "None"
    try:
        return path.read_text(encoding="utf-8", errors="replace").strip()
    except OSError:
        return "None"


def load_data_sources(
    root: Path, given: Path | None = None, option: str = "--mad-data-config"
) -> dict[str, Any]:
    """data.json of the MAD tree ({} when there is none), or the file --mad-data-config
    gives (madengine's --data-config), which must be there: a path given is meant."""
    if given is None:
        path = root / "data.json"
        if not path.exists():
            return {}
        data = read_json(path)
    else:
        path = given
        data = read_json(path, option)
    if not isinstance(data, dict):
        raise MadError(f"{path}: expected a JSON object of data sources")
    return data


def _slurm_dry_run(raw: RawOptions, context: RunContext) -> tuple[RunContext, str]:
    """--mad-slurm-dry-run: the context's `slurm.dry_run`, which the backend reads."""
    chosen = raw.deploy or context.get("deploy")
    if chosen not in (None, "slurm"):
        raise UsageProblem(f"--mad-slurm-dry-run: the session deploys with '{chosen}', not slurm")
    values = dict(context.values)
    values["slurm"] = {**(context.get("slurm") or {}), "dry_run": True}
    return RunContext(MappingProxyType(values)), "slurm"


def _k8s_dry_run(raw: RawOptions, context: RunContext) -> str:
    """--mad-k8s-dry-run: the session deploys with k8s (or says why it cannot)."""
    if raw.slurm_dry_run:
        raise UsageProblem("--mad-k8s-dry-run with --mad-slurm-dry-run: give one")
    chosen = raw.deploy or context.get("deploy")
    if chosen not in (None, "k8s", "kubernetes"):
        raise UsageProblem(f"--mad-k8s-dry-run: the session deploys with '{chosen}', not k8s")
    return str(chosen or "k8s")


def parse_options(raw: RawOptions) -> Options:
    """The checked options; UsageProblem (one line, naming the option) for any bad one."""
    try:
        return _parse(raw)
    except UsageProblem:
        raise
    except MadError as exc:
        raise UsageProblem(str(exc)) from None


def _check_build_only(raw: RawOptions) -> None:
    """Options that only make sense with, or never with, --mad-build-only."""
    if raw.build_only and raw.manifest:
        raise UsageProblem(
            "--mad-build-only with --mad-manifest: a build-only session writes a manifest,"
            " it does not run one"
        )
    if not raw.build_only:
        for option, value in (("--mad-batch-manifest", raw.batch_manifest),
                              ("--mad-manifest-output", raw.manifest_output)):  # fmt: skip
            if value:
                raise UsageProblem(f"{option} needs --mad-build-only")
    if raw.batch_manifest and raw.tags:
        raise UsageProblem(
            "--mad-batch-manifest with --mad-tags: give one (the batch names the models)"
        )


def _html_report(raw: RawOptions) -> Path | None:
    if not raw.html_report:
        return None
    missing = [name for name in REPORT_MODULES if importlib.util.find_spec(name) is None]
    if missing:
        raise UsageProblem(
            f"--mad-html needs {', '.join(missing)}: pip install 'pytest-madengine[report]'"
        )
    return writable_file(_path(raw, raw.html_report), "--mad-html")


def _selection(
    raw: RawOptions, registry: str | None
) -> tuple[tuple[str, ...], BuildManifest | None, tuple[BatchEntry, ...] | None]:
    """The tags, else the models of the batch manifest, else those of the build manifest."""
    manifest_path = _path(raw, raw.manifest) if raw.manifest else None
    manifest = load_manifest(manifest_path, registry) if manifest_path else None
    batch = None
    if raw.batch_manifest:
        batch = load_batch_manifest(_path(raw, raw.batch_manifest))
        if not batch:
            raise UsageProblem(f"--mad-batch-manifest {raw.batch_manifest}: lists no model")
    tags = tuple(split_tags(raw.tags)) or tuple(
        dict.fromkeys(entry.model_name for entry in batch or ())
    )
    if not tags and manifest is not None:
        tags = manifest.model_names
        if not tags:
            raise UsageProblem(f"--mad-manifest {manifest.path}: lists no model")
    if not tags:
        raise UsageProblem("--mad-tags: no tag given (a model name, a tag, or all)")
    for tag in tags:
        parse_tag(tag)  # a malformed tag is a usage error now, not a traceback later
    return tags, manifest, batch


def _gpus(raw: RawOptions, context: RunContext) -> GpuInventory:
    """--mad-gpus over the context's docker_gpus: the GPUs the runs may have."""
    declared, origin, ids_only = raw.gpus, "--mad-gpus", False
    if declared is None and context.get("docker_gpus") not in (None, ""):
        declared, origin, ids_only = str(context.get("docker_gpus")), "context 'docker_gpus'", True
    return inventory(
        declared, context.gpu_vendor, context.gpu_architecture, origin=origin, ids_only=ids_only
    )


def _tolerance(raw: RawOptions) -> float:
    try:
        return parse_tolerance(raw.tolerance if raw.tolerance is not None else DEFAULT_TOLERANCE)
    except ValueError as exc:
        raise UsageProblem(f"--mad-tolerance: {exc}") from None


def _deploy(raw: RawOptions, context: RunContext) -> tuple[RunContext, str]:
    """The backend, from --mad-deploy, the context or a dry run, checked by name."""
    deploy = str(raw.deploy or context.get("deploy") or DEFAULT_DEPLOY)
    if raw.slurm_dry_run:
        context, deploy = _slurm_dry_run(raw, context)
    if raw.k8s_dry_run:
        deploy = _k8s_dry_run(raw, context)
    check_backend_name(deploy, "--mad-deploy" if raw.deploy else "context 'deploy'")
    return context, deploy


def _outputs(raw: RawOptions) -> dict[str, Any]:
    """The files and directories the session writes, each checked now, in this order."""
    return {
        "output_dir": writable_dir(_path(raw, raw.output or DEFAULT_OUTPUT), "--mad-output"),
        "perf_csv": appendable_perf_csv(
            _path(raw, raw.perf_csv or DEFAULT_PERF_CSV), "--mad-perf-csv"
        ),
        "summary": (
            writable_file(_path(raw, raw.summary), "--mad-summary") if raw.summary else None
        ),
    }


def _kept_files(raw: RawOptions) -> dict[str, Any]:
    """Where fetched data, a written build manifest and the HTML report go."""
    return {
        "force_mirror_local": (
            writable_dir(_path(raw, raw.force_mirror_local), "--mad-force-mirror-local")
            if raw.force_mirror_local
            else None
        ),
        "manifest_output": (
            writable_file(
                _path(raw, raw.manifest_output or DEFAULT_MANIFEST_OUTPUT),
                "--mad-manifest-output",
            )
            if raw.build_only
            else None
        ),
        "html_report": _html_report(raw),
    }


def _compare(raw: RawOptions, outputs: Mapping[str, Any]) -> ComparisonSource | None:
    """--mad-compare's source, read (a perf.csv) or opened (the history) now."""
    if raw.compare is None:
        return None
    url = resolve_history_url(raw.history, raw.base_dir, outputs["output_dir"])
    perf_csv: Path = outputs["perf_csv"]
    # The session's own perf.csv and perf_super.csv: missing before its first session.
    written = (perf_csv, perf_csv.with_name("perf_super.csv"))
    return parse_compare(str(raw.compare), raw.base_dir, url, raw.compare_upto, written)


def _heartbeat(text: str | float | None) -> float:
    """--mad-heartbeat: 0 (off), or seconds within HEARTBEAT_RANGE_S: a thread cannot
    wait much longer than the upper end, and below the lower the hosts are pinged round
    after round, as fast as they answer."""
    try:
        value = float(str(text).strip()) if text not in (None, "") else 10.0
    except ValueError:
        value = -1.0
    low, high = HEARTBEAT_RANGE_S
    if value != 0 and not low <= value <= high:
        raise UsageProblem(
            f"--mad-heartbeat: expected 0 (off) or seconds from {low:g} to {high:g}, got {text!r}"
        )
    return value


def _placement(text: str | None) -> str:
    strategy = (text or "least-loaded").strip().lower()
    if strategy not in STRATEGIES:
        raise UsageProblem(
            f"--mad-placement: expected one of {', '.join(STRATEGIES)}, got {text!r}"
        )
    return strategy


def _parse(raw: RawOptions) -> Options:
    _check_build_only(raw)
    root_text = raw.root or raw.environ.get("MODEL_DIR")
    root = (_path(raw, root_text) if root_text else raw.base_dir).resolve()
    registry = _registry(raw.registry)
    tags, manifest, batch = _selection(raw, registry)
    context = build_context(
        raw.context_json, _path(raw, raw.context_file) if raw.context_file else None
    )
    tools = load_toolbox(_path(raw, raw.tools_file) if raw.tools_file else None, root)
    tools.names(context.get("tools") or [])
    gpus = _gpus(raw, context)
    tolerance = _tolerance(raw)
    baseline = load_baseline(_path(raw, raw.baseline)) if raw.baseline else Baseline()
    context, deploy = _deploy(raw, context)
    timeout = _int(raw.timeout, "--mad-timeout")
    outputs = _outputs(raw)
    retries = _int(raw.retries, "--mad-retries") or 0
    concurrency = _concurrency(raw.concurrency)
    return Options(
        root=root,
        tags=tags,
        context=context,
        gpus=gpus,
        timeout=timeout,
        clean_cache=raw.clean_cache,
        live_output=raw.live_output,
        baseline=baseline,
        tolerance=tolerance,
        hosts_file=_path(raw, raw.hosts) if raw.hosts else None,
        manifest=manifest,
        retries=retries,
        concurrency=concurrency,
        repeat=_int(raw.repeat, "--mad-repeat", minimum=1),
        warmup=_int(raw.warmup, "--mad-warmup"),
        placement=_placement(raw.placement),
        compare=_compare(raw, outputs),
        history_url=resolve_history_url(raw.history, raw.base_dir, outputs["output_dir"]),
        heartbeat=_heartbeat(raw.heartbeat),
        deploy=deploy,
        credentials=load_credentials(root, raw.environ),
        data_sources=load_data_sources(
            root, _path(raw, raw.data_config) if raw.data_config else None
        ),
        git_commit=git_commit(root),
        tools=tools,
        workspace=raw.base_dir,
        ctx_test=detect_ctx_test(raw.base_dir),
        keep_alive=raw.keep_alive,
        keep_model_dir=raw.keep_model_dir,
        skip_model_run=raw.skip_model_run,
        disable_skip_gpu_arch=raw.disable_skip_gpu_arch,
        data_cache=default_cache_dir(raw.environ),
        registry=registry,
        k8s_dry_run=_path(raw, raw.k8s_dry_run) if raw.k8s_dry_run else None,
        build_only=raw.build_only,
        batch=batch,
        **outputs,
        **_kept_files(raw),
    )

"""Every option of a session, declared once: `RawOptions`, whose fields are the table.

Each field carries its row (`OptionSpec`, as dataclass field metadata): the pytest
option and its help, the ini key, and the `madengine` command's name for it. The pytest
plugin adds its options and ini keys from these rows and reads them back into
`RawOptions`; the `madengine` command makes its options from them and translates what
was given into the plugin's arguments; `parse_options` turns `RawOptions` into
`Options`. No pytest here: the rows are plain data.
"""

from __future__ import annotations

import dataclasses
import enum
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pytest_madengine.core.history_url import names_compare_file, names_history_file

DEFAULT_TOLERANCE = "5%"
DEFAULT_MANIFEST_OUTPUT = "build_manifest.json"  # madengine's name


class Kind(enum.Enum):
    VALUE = "value"  # --mad-x VALUE
    SWITCH = "switch"  # --mad-x (store_true)
    LIST = "list"  # --mad-x A --mad-x B (appended)


class Phase(enum.Enum):
    """Which session of a `madengine run` that builds first gets the option."""

    BOTH = "both"
    BUILD = "build"
    RUN = "run"


@dataclass(frozen=True)
class OptionSpec:
    """One row of the table: how an option of `RawOptions` is written."""

    flag: str  # the pytest option: --mad-...
    help: str
    metavar: str | None = None
    ini: str | None = None  # the ini key, read when the command line does not give it
    ini_help: str = ""
    ini_is_path: bool = False  # an ini value is relative to the ini file
    # For a value that is a path or something else (a URL, a keyword): whether it is one.
    ini_path_if: Callable[[str], bool] | None = None
    madengine: tuple[str, ...] = ()  # the `madengine` command's flags for it, long first
    madengine_help: str | None = None
    phase: Phase = Phase.RUN
    name: str = ""  # the RawOptions field; filled in from the field itself
    kind: Kind = Kind.VALUE  # from the field's type
    default: Any = None  # the field's default

    @property
    def dest(self) -> str:
        """pytest's name for the option (`config.getoption(dest)`)."""
        return self.flag.lstrip("-").replace("-", "_")


def _row(default: Any, flag: str, help: str, **row: Any) -> Any:
    """A RawOptions field that is a row of the table."""
    return field(default=default, metadata={"option": OptionSpec(flag, help, **row)})


@dataclass(frozen=True)
class RawOptions:
    """Options as written (command line, ini file, or a caller's keywords)."""

    root: str | None = _row(
        None, "--mad-root", metavar="DIR", ini="mad_root", ini_help="MAD tree to collect",
        ini_is_path=True,
        help="MAD tree to collect (ini: mad_root; default: $MODEL_DIR, else the current dir)",
    )  # fmt: skip
    tags: tuple[str, ...] = _row(
        (), "--mad-tags", metavar="TAGS", ini="mad_tags",
        ini_help="models to run, as for --mad-tags", madengine=("--tags", "-t"),
        madengine_help="models: names, tags, all, X:key=value, dir/X; repeatable and"
        " comma-separated", phase=Phase.BOTH,
        help="models to run: names, tags, 'all', 'X:key=value', 'dir/X'; repeatable and"
        " comma-separated (ini: mad_tags). Without tags the plugin collects nothing.",
    )  # fmt: skip
    context_json: str | None = _row(
        None, "--mad-context", metavar="JSON",
        madengine=("--additional-context", "-c"), madengine_help="run context as JSON",
        phase=Phase.BOTH,
        help="run context as JSON, over --mad-context-file (gpu_vendor, guest_os,"
        " docker_build_arg, docker_env_vars, docker_mounts, timeout_multiplier, ...)",
    )  # fmt: skip
    context_file: str | None = _row(
        None, "--mad-context-file", metavar="FILE", ini="mad_context_file",
        ini_help="run context JSON file", ini_is_path=True,
        madengine=("--additional-context-file", "-f"), madengine_help="run context JSON file",
        phase=Phase.BOTH, help="run context from a JSON file (ini: mad_context_file)",
    )  # fmt: skip
    gpus: str | None = _row(
        None, "--mad-gpus", metavar="SPEC", ini="mad_gpus",
        ini_help="GPUs to use, as for --mad-gpus",
        help="GPUs to use: a count (4) or ids (0,2-3); virtual when none is detected"
        " (ini: mad_gpus)",
    )  # fmt: skip
    timeout: str | int | None = _row(
        None, "--mad-timeout", metavar="SECONDS", madengine=("--timeout",),
        madengine_help="seconds per model; -1 the models' own, 0 none",
        help="timeout of every model, over its own (0: none); times the context's"
        " timeout_multiplier",
    )  # fmt: skip
    clean_cache: bool = _row(
        False, "--mad-clean-cache", help="build images without Docker's layer cache",
        madengine=("--clean-docker-cache",), madengine_help="build without Docker's layer cache",
        phase=Phase.BUILD,
    )  # fmt: skip
    live_output: bool = _row(
        False, "--mad-live-output", madengine=("--live-output", "-l"),
        madengine_help="stream build and model output", phase=Phase.BOTH,
        help="stream model output to the terminal as it runs (not under xdist)",
    )  # fmt: skip
    baseline: str | None = _row(
        None, "--mad-baseline", metavar="CSV", help="perf.csv of an earlier run to compare against"
    )
    tolerance: str = _row(
        DEFAULT_TOLERANCE, "--mad-tolerance", metavar="PCT",
        help="allowed regression against --mad-baseline, and the least change a"
        " --mad-compare verdict calls a regression (default 5%%)",
    )  # fmt: skip
    compare: str | None = _row(
        None, "--mad-compare", metavar="SOURCE", ini="mad_compare",
        ini_help="history to judge every result against, as for --mad-compare",
        ini_path_if=names_compare_file,
        help="judge every result against its history, with the measured noise:"
        " 'history' or 'history:N' (the last N sessions of the results history), a"
        " session id of it, or a perf.csv (each earlier row a point); a regression fails"
        " the test (ini: mad_compare)",
    )  # fmt: skip
    repeat: str | int | None = _row(
        None, "--mad-repeat", metavar="N", ini="mad_repeat",
        ini_help="timed repetitions of every model, as for --mad-repeat",
        help="run every model N times in its container and record the median, with the"
        " samples, their spread (CV) and interval (ini: mad_repeat; over models.json"
        " 'repeat'; default 1)",
    )  # fmt: skip
    warmup: str | int | None = _row(
        None, "--mad-warmup", metavar="K", ini="mad_warmup",
        ini_help="untimed runs before the repetitions, as for --mad-warmup",
        help="run every model K times first, results discarded (ini: mad_warmup; over"
        " models.json 'warmup'; default 0)",
    )  # fmt: skip
    history: str | None = _row(
        None, "--mad-history", metavar="URL|FILE|none", ini="mad_history",
        ini_help="results history, as for --mad-history", ini_path_if=names_history_file,
        help="the results history every session appends to: a SQLAlchemy URL"
        " (postgresql+psycopg://user:password@host/db), an SQLite file, or none"
        " (ini: mad_history; default: history.sqlite in --mad-output)",
    )  # fmt: skip
    output: str | None = _row(
        None, "--mad-output", metavar="DIR", ini="mad_output", ini_help="directory for logs",
        ini_is_path=True,
        help="where logs and build logs go (ini: mad_output; default: mad_output)",
    )  # fmt: skip
    perf_csv: str | None = _row(
        None, "--mad-perf-csv", metavar="CSV", ini="mad_perf_csv",
        ini_help="perf.csv to append to", ini_is_path=True,
        madengine=("--output", "-o"), madengine_help="perf.csv to append to",
        help="madengine-compatible results, appended (ini: mad_perf_csv; default: perf.csv)",
    )  # fmt: skip
    summary: str | None = _row(
        None, "--mad-summary", metavar="JSON", help="write a JSON summary of the session",
        madengine=("--summary-output", "-s"), madengine_help="write a JSON summary here",
    )  # fmt: skip
    hosts: str | None = _row(
        None, "--mad-hosts", metavar="YAML", ini="mad_hosts",
        ini_help="Docker hosts inventory (YAML)", ini_is_path=True,
        help="Docker hosts to run on (ini: mad_hosts; default: this machine's engine)",
    )  # fmt: skip
    manifest: str | None = _row(
        None, "--mad-manifest", metavar="JSON", ini="mad_manifest",
        ini_help="build manifest to run from", ini_is_path=True,
        madengine=("--manifest-file", "-m"),
        madengine_help="run the images of this build manifest",
        help="run from a madengine build_manifest.json: its images are pulled from the"
        " registry it names, not built; without --mad-tags its models run (ini: mad_manifest)",
    )  # fmt: skip
    # In a `madengine run` that builds first, the run pulls from the manifest just
    # written, which names the registry: so the build session alone gets it.
    registry: str | None = _row(
        None, "--mad-registry", metavar="HOST:PORT", madengine=("--registry", "-r"),
        madengine_help="image registry", phase=Phase.BUILD,
        help="with --mad-build-only: push the images there; with --mad-manifest: pull them"
        " from there instead of the registry the manifest names; with --mad-deploy k8s,"
        " where built images are pushed for the cluster to pull",
    )  # fmt: skip
    retries: str | int = _row(
        1, "--mad-retries", metavar="N",
        help="times a test is placed again after its host was lost (default 1)",
    )  # fmt: skip
    # Tests run at once in this process; "auto".
    concurrency: str | int | None = _row(
        None, "--mad-concurrency", metavar="N|auto", ini="mad_concurrency",
        ini_help="MAD tests run at once, as --mad-concurrency",
        help="MAD tests this process runs at once, started ahead of their turn as GPUs"
        " free up; auto: one per GPU of all hosts (default 1; ini: mad_concurrency)",
    )  # fmt: skip
    placement: str = _row(
        "least-loaded", "--mad-placement",
        metavar="least-loaded|round-robin|capability|latency|affinity",
        ini="mad_placement", ini_help="how a test's host is chosen, as --mad-placement",
        help="how a test's host is chosen among those that fit and have its GPUs free:"
        " the least loaded, each in turn, the fewest GPUs that fit, the shortest measured"
        " round trip, or the most of the model's host_affinity labels (ties: the least"
        " loaded; default least-loaded; ini: mad_placement)",
    )  # fmt: skip
    heartbeat: str | float = _row(
        10, "--mad-heartbeat", metavar="SECONDS", ini="mad_heartbeat",
        ini_help="seconds between pings of every host, as --mad-heartbeat",
        help="ping every host this often, also while idle: a host that stops answering is"
        " offline (no test is placed on it) until it answers again (default 10; 0: off;"
        " else 0.1 to 86400; ini: mad_heartbeat)",
    )  # fmt: skip
    deploy: str | None = _row(
        None, "--mad-deploy", metavar="NAME",
        help="the backend that runs the containers (default: the context's 'deploy', else"
        " docker); backends are installed packages (entry points pytest_madengine.backends)",
    )  # fmt: skip
    # madengine's run options.
    keep_alive: bool = _row(
        False, "--mad-keep-alive", ini="mad_keep_alive",
        ini_help="leave each container running after its run", madengine=("--keep-alive",),
        help="leave each container running after its run, for docker exec (and keep its"
        " run directory) (ini: mad_keep_alive)",
    )  # fmt: skip
    keep_model_dir: bool = _row(
        False, "--mad-keep-model-dir", ini="mad_keep_model_dir",
        ini_help="bring each run's run_directory back", madengine=("--keep-model-dir",),
        help="bring each run's run_directory back to the working directory"
        " (ini: mad_keep_model_dir)",
    )  # fmt: skip
    skip_model_run: bool = _row(
        False, "--mad-skip-model-run", ini="mad_skip_model_run",
        ini_help="start each container and its scripts, not the model",
        madengine=("--skip-model-run",),
        help="build and start each container and run its scripts, but not the model"
        " (ini: mad_skip_model_run)",
    )  # fmt: skip
    disable_skip_gpu_arch: bool = _row(
        False, "--mad-disable-skip-gpu-arch", ini="mad_disable_skip_gpu_arch",
        ini_help="run models whose skip_gpu_arch names this GPU",
        madengine=("--disable-skip-gpu-arch",),
        help="run models whose skip_gpu_arch names this GPU (ini: mad_disable_skip_gpu_arch)",
    )  # fmt: skip
    force_mirror_local: str | None = _row(
        None, "--mad-force-mirror-local", metavar="DIR", ini="mad_force_mirror_local",
        ini_help="directory for the fetched copies of all data",
        madengine=("--force-mirror-local",),
        help="keep the fetched copy of every dataset (nas, minio, aws) in DIR, over any"
        " mirrorlocal of data.json; later sessions reuse it (ini: mad_force_mirror_local)",
    )  # fmt: skip
    data_config: str | None = _row(
        None, "--mad-data-config", metavar="JSON", ini="mad_data_config",
        ini_help="data sources file, instead of the tree's data.json", ini_is_path=True,
        madengine=("--data-config",),
        madengine_help="data sources file (data.json format), instead of the tree's data.json",
        help="data sources file (data.json format) that models' 'data' name, instead of the"
        " MAD tree's data.json (ini: mad_data_config)",
    )  # fmt: skip
    # Write the SLURM batch scripts, submit nothing (implies deploy slurm).
    slurm_dry_run: bool = _row(
        False, "--mad-slurm-dry-run",
        help="write each test's SLURM batch script under --mad-output and submit nothing"
        " (implies --mad-deploy slurm; the tests are skipped, naming their scripts)",
    )  # fmt: skip
    # Write the Kubernetes manifests there, apply nothing (implies deploy k8s).
    k8s_dry_run: str | None = _row(
        None, "--mad-k8s-dry-run", metavar="DIR",
        help="write each test's Kubernetes manifests (YAML) to DIR instead of applying them"
        " (implies --mad-deploy k8s; images are still built and pushed; the tests are"
        " skipped, naming their files)",
    )  # fmt: skip
    build_only: bool = _row(
        False, "--mad-build-only", phase=Phase.BUILD,
        help="build (and with --mad-registry push) the selected images, one test per image,"
        " and write a build manifest; run nothing",
    )  # fmt: skip
    manifest_output: str | None = _row(
        None, "--mad-manifest-output", metavar="JSON", madengine=("--manifest-output",),
        madengine_help="the build manifest written", phase=Phase.BUILD,
        help="the build manifest a --mad-build-only session writes (default build_manifest.json)",
    )  # fmt: skip
    batch_manifest: str | None = _row(
        None, "--mad-batch-manifest", metavar="JSON", madengine=("--batch-manifest",),
        madengine_help="madengine's batch.json", phase=Phase.BUILD,
        help="with --mad-build-only: madengine's batch.json; builds its build_new entries"
        " and lists all in the manifest",
    )  # fmt: skip
    html_report: str | None = _row(
        None, "--mad-html", metavar="HTML",
        help="write an HTML report of perf.csv (charts across runs, regressions against"
        " --mad-baseline) at the end of the session; needs the 'report' extra",
    )  # fmt: skip
    tools_file: str | None = _row(
        None, "--mad-tools-config", metavar="JSON", ini="mad_tools_config",
        ini_help="tools file the context's 'tools' name", ini_is_path=True,
        madengine=("--tools-config",),
        help="tools file (madengine's tools.json format) that the context's 'tools' name;"
        " default: the profilers and tracers shipped with pytest-madengine"
        " (ini: mad_tools_config)",
    )  # fmt: skip
    # Not options: relative paths are taken from here (pytest: the invocation directory).
    base_dir: Path = field(default_factory=Path.cwd)
    # How much of a --mad-compare perf.csv the xdist controller read: a worker reads
    # as much, so the rows the session appends meanwhile are never its own history.
    compare_upto: int | None = None
    environ: Mapping[str, str] = field(default_factory=lambda: dict(os.environ), repr=False)

    @property
    def active(self) -> bool:
        """Whether the session has anything of ours to do (tags or a manifest)."""
        return bool(self.tags or self.manifest or self.batch_manifest or self.build_only)


def _kind(default: Any) -> Kind:
    if isinstance(default, bool):
        return Kind.SWITCH
    return Kind.LIST if isinstance(default, tuple) else Kind.VALUE


OPTION_TABLE: tuple[OptionSpec, ...] = tuple(
    dataclasses.replace(
        row.metadata["option"], name=row.name, kind=_kind(row.default), default=row.default
    )
    for row in dataclasses.fields(RawOptions)
    if "option" in row.metadata
)
OPTIONS_BY_NAME: Mapping[str, OptionSpec] = {spec.name: spec for spec in OPTION_TABLE}

# madengine's run and build options that have no row, each with what becomes of it.
MADENGINE_PYTEST_OWN = {"--verbose": "pytest's -v"}
# Refused (exit 4, one line with the reason) before anything runs: a script that gives
# one would otherwise get something other than what it asked for.
MADENGINE_UNSUPPORTED = {
    "--target-archs": "images are built for the GPU architecture of the context"
    " (gpu_architecture, else the GPUs detected), not for a list of architectures",
    "--use-image": "a pre-built image runs as the context's MAD_CONTAINER_IMAGE;"
    " it is not written into a build manifest",
    "--build-on-compute": "images are built by the session on its Docker host and pushed"
    " with --registry, not by a SLURM job",
    "--sys-env-details": "no system environment (rocEnvTool) pre script is added to a run;"
    " name the tree's script in the context's pre_scripts",
}
# Accepted and changing nothing, because what madengine does with them is what we
# always do (the reason says so in the command's help).
MADENGINE_IGNORED = {
    "--ignore-deprecated": "accepted, changes nothing: models marked deprecated run"
    " (as in madengine 2, where the flag is passed on and unused)",
    "--cleanup-perf": "accepted, changes nothing: a run writes no perf_entry files"
    " (its rows go to perf.csv and perf_super.csv), so none are left to remove",
}

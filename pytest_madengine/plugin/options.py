"""The plugin's command-line options and ini keys, read into the core's RawOptions."""

from __future__ import annotations

from pathlib import Path

import pytest

from pytest_madengine.core.options import RawOptions


def add_options(parser: pytest.Parser) -> None:
    group = parser.getgroup("madengine", "MAD model benchmarks (pytest-madengine)")
    group.addoption(
        "--mad-root",
        metavar="DIR",
        help="MAD tree to collect (ini: mad_root; default: $MODEL_DIR, else the current dir)",
    )
    group.addoption(
        "--mad-tags",
        action="append",
        default=[],
        metavar="TAGS",
        help="models to run: names, tags, 'all', 'X:key=value', 'dir/X'; repeatable and"
        " comma-separated (ini: mad_tags). Without tags the plugin collects nothing.",
    )
    group.addoption(
        "--mad-context",
        metavar="JSON",
        help="run context as JSON, over --mad-context-file (gpu_vendor, guest_os,"
        " docker_build_arg, docker_env_vars, docker_mounts, timeout_multiplier, ...)",
    )
    group.addoption(
        "--mad-context-file",
        metavar="FILE",
        help="run context from a JSON file (ini: mad_context_file)",
    )
    group.addoption(
        "--mad-gpus",
        metavar="SPEC",
        help="GPUs to use: a count (4) or ids (0,2-3); virtual when none is detected"
        " (ini: mad_gpus)",
    )
    group.addoption(
        "--mad-timeout",
        metavar="SECONDS",
        help="timeout of every model, over its own (0: none); times the context's"
        " timeout_multiplier",
    )
    group.addoption(
        "--mad-clean-cache", action="store_true", help="build images without Docker's layer cache"
    )
    group.addoption(
        "--mad-live-output",
        action="store_true",
        help="stream model output to the terminal as it runs (not under xdist)",
    )
    group.addoption(
        "--mad-baseline", metavar="CSV", help="perf.csv of an earlier run to compare against"
    )
    group.addoption(
        "--mad-tolerance",
        default="5%",
        metavar="PCT",
        help="allowed regression against --mad-baseline (default 5%%)",
    )
    group.addoption(
        "--mad-output",
        metavar="DIR",
        help="where logs and build logs go (ini: mad_output; default: mad_output)",
    )
    group.addoption(
        "--mad-perf-csv",
        metavar="CSV",
        help="madengine-compatible results, appended (ini: mad_perf_csv; default: perf.csv)",
    )
    group.addoption("--mad-summary", metavar="JSON", help="write a JSON summary of the session")
    group.addoption(
        "--mad-hosts",
        metavar="YAML",
        help="Docker hosts to run on (ini: mad_hosts; default: this machine's engine)",
    )
    group.addoption(
        "--mad-manifest",
        metavar="JSON",
        help="run from a madengine build_manifest.json: its images are pulled from the"
        " registry it names, not built; without --mad-tags its models run (ini: mad_manifest)",
    )
    group.addoption(
        "--mad-registry",
        metavar="HOST:PORT",
        help="with --mad-build-only: push the images there; with --mad-manifest: pull them"
        " from there instead of the registry the manifest names; with --mad-deploy k8s,"
        " where built images are pushed for the cluster to pull",
    )
    group.addoption(
        "--mad-build-only",
        action="store_true",
        help="build (and with --mad-registry push) the selected images, one test per image,"
        " and write a build manifest; run nothing",
    )
    group.addoption(
        "--mad-manifest-output",
        metavar="JSON",
        help="the build manifest a --mad-build-only session writes (default build_manifest.json)",
    )
    group.addoption(
        "--mad-batch-manifest",
        metavar="JSON",
        help="with --mad-build-only: madengine's batch.json; builds its build_new entries"
        " and lists all in the manifest",
    )
    group.addoption(
        "--mad-html",
        metavar="HTML",
        help="write an HTML report of perf.csv (charts across runs, regressions against"
        " --mad-baseline) at the end of the session; needs the 'report' extra",
    )
    group.addoption(
        "--mad-retries",
        default="1",
        metavar="N",
        help="times a test is placed again after its host was lost (default 1)",
    )
    group.addoption(
        "--mad-deploy",
        metavar="NAME",
        help="the backend that runs the containers (default: the context's 'deploy', else"
        " docker); backends are installed packages (entry points pytest_madengine.backends)",
    )
    group.addoption(
        "--mad-force-mirror-local",
        metavar="DIR",
        help="keep the fetched copy of every dataset (nas, minio, aws) in DIR, over any"
        " mirrorlocal of data.json; later sessions reuse it (ini: mad_force_mirror_local)",
    )
    group.addoption(
        "--mad-slurm-dry-run",
        action="store_true",
        help="write each test's SLURM batch script under --mad-output and submit nothing"
        " (implies --mad-deploy slurm; the tests are skipped, naming their scripts)",
    )
    group.addoption(
        "--mad-k8s-dry-run",
        metavar="DIR",
        help="write each test's Kubernetes manifests (YAML) to DIR instead of applying them"
        " (implies --mad-deploy k8s; images are still built and pushed; the tests are"
        " skipped, naming their files)",
    )
    # madengine's run options; each also an ini key (mad_keep_alive = true, ...).
    group.addoption(
        "--mad-keep-alive",
        action="store_true",
        default=None,
        help="leave each container running after its run, for docker exec (and keep its"
        " run directory) (ini: mad_keep_alive)",
    )
    group.addoption(
        "--mad-keep-model-dir",
        action="store_true",
        default=None,
        help="bring each run's run_directory back to the working directory"
        " (ini: mad_keep_model_dir)",
    )
    group.addoption(
        "--mad-skip-model-run",
        action="store_true",
        default=None,
        help="build and start each container and run its scripts, but not the model"
        " (ini: mad_skip_model_run)",
    )
    group.addoption(
        "--mad-disable-skip-gpu-arch",
        action="store_true",
        default=None,
        help="run models whose skip_gpu_arch names this GPU (ini: mad_disable_skip_gpu_arch)",
    )
    group.addoption(
        "--mad-concurrency",
        metavar="N|auto",
        help="MAD tests this process runs at once, started ahead of their turn as GPUs"
        " free up; auto: one per GPU of all hosts (default 1; ini: mad_concurrency)",
    )
    group.addoption(
        "--mad-tools-config",
        metavar="JSON",
        help="tools file (madengine's tools.json format) that the context's 'tools' name;"
        " default: the profilers and tracers shipped with pytest-madengine"
        " (ini: mad_tools_config)",
    )
    parser.addini("mad_root", "MAD tree to collect", default=None)
    parser.addini("mad_tags", "models to run, as for --mad-tags", type="args", default=[])
    parser.addini("mad_context_file", "run context JSON file", default=None)
    parser.addini("mad_gpus", "GPUs to use, as for --mad-gpus", default=None)
    parser.addini("mad_output", "directory for logs", default=None)
    parser.addini("mad_perf_csv", "perf.csv to append to", default=None)
    parser.addini("mad_hosts", "Docker hosts inventory (YAML)", default=None)
    parser.addini("mad_manifest", "build manifest to run from", default=None)
    parser.addini(
        "mad_force_mirror_local", "directory for the fetched copies of all data", default=None
    )
    for name, help_text in RUN_FLAGS.items():
        parser.addini(f"mad_{name}", help_text, type="bool", default=False)
    parser.addini("mad_tools_config", "tools file the context's 'tools' name", default=None)
    parser.addini("mad_concurrency", "MAD tests run at once, as --mad-concurrency", default=None)


RUN_FLAGS = {
    "keep_alive": "leave each container running after its run",
    "keep_model_dir": "bring each run's run_directory back",
    "skip_model_run": "start each container and its scripts, not the model",
    "disable_skip_gpu_arch": "run models whose skip_gpu_arch names this GPU",
}


def _flag(config: pytest.Config, name: str) -> bool:
    """A command-line flag, else the ini key of the same name."""
    value = config.getoption(f"mad_{name}")
    return bool(value) if value is not None else bool(config.getini(f"mad_{name}"))


def _option(config: pytest.Config, name: str) -> str | None:
    """A command-line value, else the ini value of the same name."""
    value = config.getoption(f"mad_{name}")
    return value if value is not None else (config.getini(f"mad_{name}") or None)


def _path_option(config: pytest.Config, name: str) -> str | None:
    """A path: from the command line as given (relative to where pytest runs), else from
    the ini file, relative to that file, wherever pytest runs from."""
    value = config.getoption(f"mad_{name}")
    if value is not None:
        return str(value)
    ini_value = config.getini(f"mad_{name}") or None
    if ini_value is None:
        return None
    base = config.inipath.parent if config.inipath else config.rootpath
    return str(base / ini_value)


def raw_options(config: pytest.Config, root: Path | None = None) -> RawOptions:
    """What the user wrote; `root` overrides it (an xdist worker gets the controller's)."""
    return RawOptions(
        root=str(root) if root else _path_option(config, "root"),
        tags=tuple(config.getoption("mad_tags") or config.getini("mad_tags")),
        context_json=config.getoption("mad_context"),
        context_file=_path_option(config, "context_file"),
        gpus=_option(config, "gpus"),
        timeout=config.getoption("mad_timeout"),
        clean_cache=bool(config.getoption("mad_clean_cache")),
        live_output=bool(config.getoption("mad_live_output")),
        baseline=config.getoption("mad_baseline"),
        tolerance=config.getoption("mad_tolerance"),
        output=_path_option(config, "output"),
        perf_csv=_path_option(config, "perf_csv"),
        summary=config.getoption("mad_summary"),
        hosts=_path_option(config, "hosts"),
        manifest=_path_option(config, "manifest"),
        registry=config.getoption("mad_registry"),
        retries=config.getoption("mad_retries"),
        concurrency=_option(config, "concurrency"),
        deploy=config.getoption("mad_deploy"),
        keep_alive=_flag(config, "keep_alive"),
        keep_model_dir=_flag(config, "keep_model_dir"),
        skip_model_run=_flag(config, "skip_model_run"),
        disable_skip_gpu_arch=_flag(config, "disable_skip_gpu_arch"),
        force_mirror_local=_option(config, "force_mirror_local"),
        slurm_dry_run=bool(config.getoption("mad_slurm_dry_run")),
        k8s_dry_run=config.getoption("mad_k8s_dry_run"),
        build_only=bool(config.getoption("mad_build_only")),
        manifest_output=config.getoption("mad_manifest_output"),
        batch_manifest=config.getoption("mad_batch_manifest"),
        html_report=config.getoption("mad_html"),
        tools_file=_path_option(config, "tools_config"),
        base_dir=config.invocation_params.dir,
    )

"""What runs inside a benchmark's container, laid out as madengine lays it out.

madengine mounts its working directory (the MAD tree) at /myworkspace, makes a fresh
`run_directory` there (or clones a `url` model's repository under its name), runs the
pre scripts in it, copies the model's script directory into it, runs the model there
(wrapped by the tools' command prefixes), then the post scripts, and removes it unless
told to keep it. We copy what the run needs into /myworkspace instead of mounting the
user's tree, run the same steps with `container_run.sh`, and bring back afterwards what
the run left in /myworkspace (see `RunSpec.collect_to`).

A `ModelRun` holds those steps as data, so that tools and hooks change them as data;
`render` turns it into the backend's `RunSpec` (an argv, never a shell text of ours).
"""

from __future__ import annotations

import dataclasses
import posixpath
import shlex
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pytest_madengine.contract import RunSpec
from pytest_madengine.copies import copy_entries
from pytest_madengine.errors import MadError

WORKSPACE = "/myworkspace"
RUN_DIRECTORY = "run_directory"
STATE_DIR = ".madengine"  # ours, in the workspace; never brought back
COMMON_SCRIPTS = "scripts/common"  # madengine's helpers (tools, pre/post scripts) live here
RUNNER = Path(__file__).with_name("container_run.sh")
GIT_SSH = Path(__file__).with_name("git-ssh.sh")
FAILED_FILE = f"{STATE_DIR}/failed"
GIT_COMMIT_FILE = f"{STATE_DIR}/git_commit"
SSH_KEY_FILE = f"{STATE_DIR}/ssh_key"
# The lines in the log before each run of a repeated model (`say` steps): the results
# parser keeps each timed repetition's own performance line and drops the warm-ups'.
WARMUP_MARKER = "pytest-madengine: warmup run"
REPETITION_MARKER = "pytest-madengine: repetition"


@dataclass(frozen=True)
class Script:
    """A pre or post script: `path` relative to the MAD tree, as the list wrote it (it
    sits there in the workspace too); `source` is the host file copied in."""

    path: str
    args: tuple[str, ...] = ()
    source: Path | None = None


@dataclass(frozen=True)
class ModelRun:
    """One benchmark's steps in its container, in madengine's order."""

    spec: RunSpec  # the container; `render` sets its command, copies and collection
    tree_root: Path
    script_dir: str  # the model's script directory, relative to the tree
    argv: tuple[str, ...]  # the model's command, run in the model directory
    timeout_line: str = ""
    model_dir: str = RUN_DIRECTORY
    keep_model_dir: bool = False
    clone_url: str | None = None
    ssh_key: Path | None = None  # a host key file for an ssh clone, copied in
    pre_scripts: tuple[Script, ...] = ()
    post_scripts: tuple[Script, ...] = ()
    wrappers: tuple[str, ...] = ()  # tools' command prefixes, outermost first
    skip_model: bool = False  # skip-model-run: everything but the model itself
    skip_message: str = "Skipping model run (skip-model-run)."
    result_file: str | None = None  # multiple_results, relative to the model directory
    repeat: int = 1  # timed runs of the model, each with its own performance line
    warmup: int = 0  # untimed runs before them

    @property
    def repeated(self) -> bool:
        """Whether the model runs more than once (its log then has a marker per run)."""
        return self.repeat > 1 or self.warmup > 0

    @property
    def result_paths(self) -> tuple[str, ...]:
        """Where the multiple_results file is looked for, madengine's way round: the
        copy in the workspace (which the model directory's file overwrites), then the
        model directory."""
        if not self.result_file:
            return ()
        return (
            posixpath.join(WORKSPACE, posixpath.basename(self.result_file)),
            posixpath.join(WORKSPACE, self.model_dir, self.result_file),
        )


def script_argv(args: Any, where: str) -> tuple[str, ...]:
    """`args` of a script or model: a string split as a shell would (no expansion), or a
    list of words."""
    if args is None or args == "":
        return ()
    if isinstance(args, str):
        try:
            return tuple(shlex.split(args))
        except ValueError as exc:
            raise MadError(f"{where}: 'args' {args!r}: {exc}") from None
    if isinstance(args, list) and all(isinstance(word, str | int | float) for word in args):
        return tuple(str(word) for word in args)
    raise MadError(f"{where}: 'args' must be a string or a list of strings, got {args!r}")


def tree_path(path: Any, where: str) -> str:
    """A relative path inside the tree (and the workspace), normalised."""
    if not isinstance(path, str) or not path.strip():
        raise MadError(f"{where}: 'path' must be a non-empty string, got {path!r}")
    clean = posixpath.normpath(path.strip())
    if clean.startswith("/") or clean == ".." or clean.startswith("../"):
        raise MadError(f"{where}: path '{path}' must stay inside the MAD tree")
    return clean


def resolve_script(path: str, tree_root: Path, beside: Path | None, where: str) -> Path:
    """The host file of a script path: in the tree, else (a tools file's own scripts)
    beside the tools file."""
    for base in (tree_root, beside):
        if base is not None and (base / path).is_file():
            return base / path
    places = f"the MAD tree{f' or {beside}' if beside else ''}"
    raise MadError(f"{where}: script '{path}' not found in {places}")


def parse_scripts(
    value: Any, where: str, tree_root: Path, beside: Path | None = None
) -> tuple[Script, ...]:
    """A `pre_scripts` / `post_scripts` list of `{"path", "args"}`, with host files."""
    if value is None:
        return ()
    if not isinstance(value, list):
        raise MadError(f'{where}: expected a list of {{"path", "args"}}, got {value!r}')
    scripts = []
    for position, item in enumerate(value, start=1):
        at = f"{where} item {position}"
        if not isinstance(item, Mapping):
            raise MadError(f'{at}: expected {{"path", "args"}}, got {item!r}')
        path = tree_path(item.get("path"), at)
        source = resolve_script(path, tree_root, beside, at)
        scripts.append(Script(path, script_argv(item.get("args"), at), source))
    return tuple(scripts)


def timeout_line(timeout_s: float | None) -> str:
    """madengine's line in the model's log; 0 when there is no limit."""
    value = timeout_s or 0
    shown = str(int(value)) if float(value).is_integer() else f"{value:.3f}".rstrip("0")
    return f"Setting timeout to {shown} seconds."


def _step(kind: str, *words: str) -> list[str]:
    return [kind, str(len(words)), *words]


def steps(run: ModelRun) -> list[str]:
    """The argv of container_run.sh after its path."""
    argv = _step("say", run.timeout_line) if run.timeout_line else []
    argv += _step("dir", run.model_dir, "yes" if run.keep_model_dir else "no")
    if run.clone_url:
        argv += _step("clone", run.clone_url)
    for script in run.pre_scripts:
        argv += _step("pre", script.path, *script.args)
    if (run.tree_root / run.script_dir).is_dir():
        argv += _step("copy", run.script_dir or ".")
    if run.skip_model:
        argv += _step("skip", run.skip_message)
    else:
        argv += _model_steps(run)
    for script in run.post_scripts:
        argv += _step("post", script.path, *script.args)
    argv += _step("collect", *([run.result_file] if run.result_file else []))
    return argv


def _model_steps(run: ModelRun) -> list[str]:
    """The model's run, or its warm-ups and repetitions, each after its marker line."""
    model = _step("model", " ".join(run.wrappers), *run.argv)
    if not run.repeated:
        return model
    argv: list[str] = []
    for number in range(1, run.warmup + 1):
        argv += _step("say", f"{WARMUP_MARKER} {number} of {run.warmup}") + model
    for number in range(1, run.repeat + 1):
        argv += _step("say", f"{REPETITION_MARKER} {number} of {run.repeat}") + model
    return argv


def _files_below(host: Path, container: str, tree: Path) -> Iterator[str]:
    """Workspace-relative paths of the files a copy puts in (to leave them out when
    the workspace comes back), as the backends copy them."""
    relative = posixpath.relpath(container, WORKSPACE)
    if not host.is_dir():
        yield relative
        return
    for entry in copy_entries(host, tree):
        if entry.kind != "dir":
            yield posixpath.normpath(posixpath.join(relative, entry.relative))


class CopyListings:
    """What each copy puts in the workspace, listed once per session: a fleet's thousands
    of tests share a few script folders, and walking one per test cost more than placing
    the test did (issue #23). Threads may list the same folder at once; both get the same."""

    def __init__(self) -> None:
        self._listed: dict[tuple[Path, str, Path], tuple[str, ...]] = {}

    def files_below(self, host: Path, container: str, tree: Path) -> tuple[str, ...]:
        key = (host, container, tree)
        found = self._listed.get(key)
        if found is None:
            found = self._listed[key] = tuple(_files_below(host, container, tree))
        return found


def render(run: ModelRun, listings: CopyListings | None = None) -> RunSpec:
    """The backend's spec of a run: the runner and what it needs copied in, the files
    read back, and what of the workspace comes back to the host. `listings`: the
    session's listings of the copied folders (None: each is walked now)."""
    copies: dict[str, Path] = {}  # container path -> host path; later wins
    root = run.tree_root
    common = root / COMMON_SCRIPTS
    if common.is_dir():
        copies[posixpath.join(WORKSPACE, COMMON_SCRIPTS)] = common
    if (root / run.script_dir).is_dir():
        copies[posixpath.normpath(posixpath.join(WORKSPACE, run.script_dir))] = (
            root / run.script_dir
        )
    for script in (*run.pre_scripts, *run.post_scripts):
        copies[posixpath.join(WORKSPACE, script.path)] = script.source or root / script.path
    copies[posixpath.join(WORKSPACE, STATE_DIR, "run.sh")] = RUNNER
    copies[posixpath.join(WORKSPACE, STATE_DIR, "git-ssh.sh")] = GIT_SSH
    env = dict(run.spec.env)
    if run.ssh_key is not None:
        copies[posixpath.join(WORKSPACE, SSH_KEY_FILE)] = run.ssh_key
        env["MAD_GIT_SSH_KEY"] = posixpath.join(WORKSPACE, SSH_KEY_FILE)
    skip = {f"{STATE_DIR}/"}
    listed = listings.files_below if listings is not None else _files_below
    for container, host in copies.items():
        skip.update(listed(host, container, root))
    if not run.keep_model_dir:
        skip.add(f"{run.model_dir}/")
    state_files = tuple(posixpath.join(WORKSPACE, name) for name in (FAILED_FILE, GIT_COMMIT_FILE))
    return dataclasses.replace(
        run.spec,
        command=("sh", f"{STATE_DIR}/run.sh", *steps(run)),
        workdir=WORKSPACE,
        env=env,
        copies=tuple((host, container) for container, host in copies.items()),
        result_files=(*run.result_paths, *state_files),
        collect_skip=frozenset(skip),
    )


@dataclass(frozen=True)
class StepFailure:
    """What `container_run.sh` left in .madengine/failed."""

    kind: str  # pre_script, post_script, clone, copy, model, model_oom
    code: int
    what: str

    def reason(self) -> str:
        if self.kind == "model_oom":
            return memory_kill_reason(self.code)
        if self.kind in ("pre_script", "post_script"):
            return f"{self.kind.replace('_', ' ')} {self.what} failed (exit code {self.code})"
        if self.kind == "clone":
            return f"git clone of {self.what} failed (exit code {self.code})"
        if self.kind == "copy":
            return f"copying {self.what} into the model directory failed"
        return f"exit code {self.code}"


def memory_kill_reason(exit_code: int | None) -> str:
    """The reason of a run the kernel killed for memory (the engine said so, or the
    container's memory cgroup counted the kill)."""
    return (
        f"killed for memory (out of memory, exit code {exit_code}); the limit is"
        " the host's, or the context's docker_memory"
    )


def step_failure(text: str | None) -> StepFailure | None:
    if not text:
        return None
    kind, _, rest = text.strip().partition("\t")
    code, _, what = rest.partition("\t")
    try:
        return StepFailure(kind, int(code), what)
    except ValueError:
        return None


def read_result(results: Mapping[str, str | None], paths: Sequence[str]) -> str | None:
    """The first of the paths the run left."""
    return next((results[path] for path in paths if results.get(path) is not None), None)

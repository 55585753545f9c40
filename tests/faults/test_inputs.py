"""Bad input, as a hostile user writes it: one clear line each, never a traceback.

Cases of issue 9 (the hostile run). Bad options are in tests/e2e/test_seams.py.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from pytest_madengine.core.results import bounded_lines
from pytest_madengine.credentials import Credentials
from tests.conftest import entry, write_tree

DEEP = "[" * 100_000 + "]" * 100_000


def collect(
    pytester: pytest.Pytester, *args: str, timeout: float | None = None
) -> pytest.RunResult:
    return pytester.runpytest_subprocess(
        "-p", "no:cacheprovider", "--collect-only", "-q", *args, timeout=timeout
    )


def one_collection_error(result: pytest.RunResult, line: str) -> None:
    result.stdout.fnmatch_lines([line])
    assert "Traceback" not in result.stdout.str() + result.stderr.str()


@pytest.mark.parametrize(
    ("scripts", "message"),
    [
        ("../outside/run.sh", "scripts '../outside/run.sh' leads outside the MAD tree"),
        ("../../../../etc", "scripts '../../../../etc' leads outside the MAD tree"),
        ("scripts/linked/run.sh", "scripts 'scripts/linked/run.sh' leads outside the MAD tree"),
    ],
)
def test_scripts_outside_the_tree_never_reach_a_container(
    pytester: pytest.Pytester, scripts: str, message: str
) -> None:
    outside = pytester.path / "outside"
    outside.mkdir()
    (outside / "run.sh").write_text("echo secret host file\n")
    root = write_tree(pytester.path / "mad", [entry("evil", scripts=scripts)])
    (root / "scripts" / "linked").symlink_to(outside)  # a symlink out of the tree
    result = collect(pytester, "--mad-root", "mad", "--mad-tags", "evil")
    one_collection_error(result, f"*models.json: model 'evil': {message}")


def test_a_build_context_outside_the_tree_is_refused(pytester: pytest.Pytester) -> None:
    write_tree(pytester.path / "mad", [entry("evil", dockercontext="../..")])
    result = collect(pytester, "--mad-root", "mad", "--mad-tags", "evil")
    one_collection_error(result, "*model 'evil': dockercontext '../..' leads outside the MAD tree")


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"name": "has space"}, "*model 'has space': its image name 'ci-has space_dummy*"),
        ({"name": "semi;colon"}, "*model 'semi;colon': its image name*not a valid Docker name*"),
        ({"name": "ünïcode"}, "*its image name 'ci-ünïcode_dummy*not a valid Docker name*"),
        ({"name": "x" * 300}, "*its image name 'ci-xxx*...' is not a valid Docker name*"),
        ({"n_gpus": -5}, "*model 'alpha': field 'n_gpus' must be -1 (all GPUs) or a count*"),
        ({"parametrize": [{"v": [1, 2]}]}, "*'parametrize': 'v' must be a string or a number*"),
        ({"multiple_results": "../../x.csv"}, "*'multiple_results' must be a path inside*"),
    ],
)
def test_entries_docker_or_we_cannot_use_are_collection_errors(
    pytester: pytest.Pytester, fields: dict, message: str
) -> None:
    model = {**entry("alpha"), **fields}
    write_tree(pytester.path, [model])
    one_collection_error(collect(pytester, "--mad-tags", "all"), message)


@pytest.mark.parametrize("broken", ["latin1", "deep"])
def test_unreadable_json_files_are_one_line(pytester: pytest.Pytester, broken: str) -> None:
    content = b'[{"name": "caf\xe9"}]' if broken == "latin1" else DEEP.encode()
    root = write_tree(pytester.path, [entry("alpha")])
    (root / "models.json").write_bytes(content)
    expected = "not UTF-8 text (byte 14)" if broken == "latin1" else "nested too deeply"
    one_collection_error(collect(pytester, "--mad-tags", "all"), f"*models.json*{expected}*")
    # The same file as the context, the hosts file or credential.json: a usage error.
    (root / "models.json").write_text(json.dumps([entry("alpha")]))
    (root / "bad.json").write_bytes(content)
    for option in ("--mad-context-file=bad.json", "--mad-hosts=bad.json"):
        result = pytester.runpytest_subprocess("--mad-tags", "alpha", option)
        assert result.ret == pytest.ExitCode.USAGE_ERROR
        result.stderr.fnmatch_lines([f"ERROR: *bad.json*{expected.split()[0]}*"])
    (root / "credential.json").write_bytes(content)
    result = pytester.runpytest_subprocess("--mad-tags", "alpha")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines([f"ERROR: *credential.json*{expected.split()[0]}*"])


def test_input_files_that_are_no_files_are_one_line_and_never_wait(
    pytester: pytest.Pytester,
) -> None:
    root = write_tree(pytester.path, [entry("alpha")])
    os.mkfifo(root / "nobody-writes")
    for option, said in [
        ("--mad-context-file=nobody-writes", "*nobody-writes: empty, where JSON was expected"),
        ("--mad-context-file=/dev/zero", "--mad-context-file /dev/zero: larger than 64 MiB"),
        ("--mad-hosts=.", "--mad-hosts *: is a directory"),
    ]:
        result = pytester.runpytest_subprocess("--mad-tags", "alpha", option, timeout=60)
        assert result.ret == pytest.ExitCode.USAGE_ERROR, option
        result.stderr.fnmatch_lines([f"ERROR: {said}"])
    os.mkfifo(root / "docker" / "dummy.centos.amd.Dockerfile")  # a candidate Dockerfile
    result = collect(pytester, "--mad-tags", "alpha", timeout=60)
    one_collection_error(result, "*dummy.centos.amd.Dockerfile: not a regular file")
    (root / "docker" / "dummy.centos.amd.Dockerfile").unlink()
    os.mkfifo(root / "credential.json")
    result = pytester.runpytest_subprocess("--mad-tags", "alpha", timeout=60)
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["ERROR: *credential.json: empty, where JSON was expected"])


def test_a_context_read_from_a_pipe_reaches_xdist_workers(pytester: pytest.Pytester) -> None:
    # `--mad-context-file <(make-context)`: only the controller can read it.
    root = write_tree(pytester.path, [entry("alpha"), entry("beta")])
    fifo = root / "context.fifo"
    os.mkfifo(fifo)
    writer = subprocess.Popen(["sh", "-c", f"""printf '{{"gpu_vendor": "AMD"}}' > {fifo}"""])
    try:
        # A SLURM dry run: workers that configure a session, and no engine needed.
        result = pytester.runpytest_subprocess(
            "-n", "2", "-p", "no:cacheprovider", "--mad-tags", "dummies", "--mad-deploy",
            "slurm", "--mad-slurm-dry-run", f"--mad-context-file={fifo}", timeout=120,
        )  # fmt: skip
    finally:
        writer.kill()
        writer.wait()
    assert result.ret == pytest.ExitCode.OK, result.stdout.str() + result.stderr.str()
    result.assert_outcomes(skipped=2)


def test_output_options_that_cannot_be_written_are_usage_errors(pytester: pytest.Pytester):
    write_tree(pytester.path, [entry("alpha")])
    (pytester.path / "afile").write_text("")
    result = pytester.runpytest_subprocess("--mad-tags", "alpha", "--mad-output", "afile")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["ERROR: --mad-output *afile: exists and is not a directory"])
    if os.geteuid() != 0:  # root writes anywhere
        (pytester.path / "ro").mkdir(mode=0o500)
        result = pytester.runpytest_subprocess("--mad-tags", "alpha", "--mad-perf-csv", "ro/p.csv")
        assert result.ret == pytest.ExitCode.USAGE_ERROR


def test_every_form_of_a_login_is_masked() -> None:
    import base64

    credentials = Credentials({"localhost:5000": {"username": "ci", "password": "pa ss/w0rd"}})
    header = "Basic " + base64.b64encode(b"ci:pa ss/w0rd").decode()
    text = (
        f"denied: {header}; raw pa ss/w0rd; quoted pa%20ss%2Fw0rd;"
        f" b64 {base64.b64encode(b'pa ss/w0rd').decode()}"
    )
    masked = credentials.redact(text)
    assert "w0rd" not in masked and "cGEgc3Mvdz" not in masked and "Y2k6cGE" not in masked
    assert masked.count("***") == 4


def test_a_huge_line_is_read_in_bounded_memory(tmp_path: Path) -> None:
    log = tmp_path / "huge.log"
    with log.open("w") as out:
        out.write("start\n")
        out.write("#" * 18_000_000 + " performance: 5 fps\n")  # one 18 MB line
        out.write("end\n")
    with log.open() as handle:
        lines = list(bounded_lines(handle, limit=1000))
    assert [len(line) <= 1000 for line in lines] == [True, True, True]
    assert lines[1].endswith("performance: 5 fps\n")  # the end of the line is kept


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"timeout": -3}, "*model 'alpha': field 'timeout' must be seconds (0: none), got -3"),
        ({"parametrize": [{"a": "1", "b": "2"}, {"a": "1,b=2"}]},
         "*model 'alpha': parameters '--a 1,b=2' give the test id alpha?a=1,b=2? of*"),
    ],
)  # fmt: skip
def test_entries_that_would_switch_off_checks_or_share_an_id(
    pytester: pytest.Pytester, fields: dict, message: str
) -> None:
    write_tree(pytester.path, [{**entry("alpha"), **fields}])
    one_collection_error(collect(pytester, "--mad-tags", "all"), message)


def test_models_whose_image_names_collide_are_refused(pytester: pytest.Pytester) -> None:
    write_tree(pytester.path, [entry("pair_a"), entry("Pair_A")])
    one_collection_error(
        collect(pytester, "--mad-tags", "all"),
        "*model 'Pair_A': its image name 'ci-pair_a_dummy.ubuntu.amd' is model 'pair_a''s too",
    )


def test_tags_named_like_pytest_markers_change_no_outcome(pytester: pytest.Pytester) -> None:
    failing = "#!/bin/sh\nexit 1\n"
    tags = ["xfail", "skip", "_private", "a:b", "nlp(x)", "fine"]
    write_tree(pytester.path, [entry("alpha", tags=tags, scripts="scripts/dummy/fail.sh")],
               {"scripts/dummy/fail.sh": failing})  # fmt: skip
    result = pytester.runpytest_subprocess(
        "-p", "no:cacheprovider", "--strict-markers", "--mad-tags", "alpha", "-m", "fine",
        "--mad-context", '{"docker_network": "none"}', "--collect-only", "-q",
    )  # fmt: skip
    assert result.ret == pytest.ExitCode.OK, result.stdout.str()
    result.stdout.fnmatch_lines(["models.json::alpha"])
    # Selected by its odd tags through --mad-tags all the same.
    assert collect(pytester, "--mad-tags", "a:b").ret != pytest.ExitCode.OK  # `:` is syntax
    assert collect(pytester, "--mad-tags", "_private").ret == pytest.ExitCode.OK


@pytest.mark.parametrize(
    ("context", "message"),
    [
        ('{"docker_privileged": "false"}', "'docker_privileged' must be true or false*"),
        ('{"docker_cap_add": "NET_ADMIN"}', "'docker_cap_add' must be a list of capabilities*"),
        ('{"timeout_multiplier": NaN}', "'timeout_multiplier' must be a positive number*"),
        ('{"timeout_multiplier": Infinity}', "'timeout_multiplier' must be a positive number*"),
        ('{"docker_memory": "abc"}', "'docker_memory' must be a size such as \"16g\"*"),
        ('{"docker_memory": "1k"}', "'docker_memory' must be at least 6m*"),
        ('{"docker_cpus": "all"}', "'docker_cpus' must be a CPU list*"),
        ('{"docker_mounts": {"/data": "rel/path"}}', "'docker_mounts' needs absolute paths*"),
        ('{"x": ' + "1" * 5000 + "}", "invalid JSON: Exceeds the limit*"),
    ],
)
def test_context_values_that_would_fail_every_test_fail_the_start(
    pytester: pytest.Pytester, context: str, message: str
) -> None:
    write_tree(pytester.path, [entry("alpha")])
    result = pytester.runpytest_subprocess("--mad-tags", "alpha", "--mad-context", context)
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines([f"ERROR: --mad-context*{message}"])


def test_a_baseline_with_a_huge_cell_is_one_line(pytester: pytest.Pytester) -> None:
    write_tree(pytester.path, [entry("alpha")])
    (pytester.path / "old.csv").write_text("model,performance,status\n" + "x" * 200_000 + ",1,OK\n")
    result = pytester.runpytest_subprocess("--mad-tags", "alpha", "--mad-baseline", "old.csv")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["ERROR: --mad-baseline *old.csv: unreadable CSV: *"])


def test_a_dynamic_models_file_that_exits_is_one_line(pytester: pytest.Pytester) -> None:
    write_tree(pytester.path, [entry("alpha")],
               {"scripts/gen/get_models_json.py": "import sys\nsys.exit(0)\n"})  # fmt: skip
    result = collect(pytester, "--mad-tags", "all")
    one_collection_error(result, "*get_models_json.py: raised SystemExit: 0")
    result.stdout.fnmatch_lines(["models.json::alpha"])  # the other file's models still come


def test_ini_paths_are_relative_to_the_ini_file(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    write_tree(pytester.path, [entry("alpha")])
    (pytester.path / "ctx.json").write_text('{"gpu_vendor": "NVIDIA"}')
    pytester.makeini("[pytest]\nmad_tags = alpha\nmad_context_file = ctx.json\nmad_root = .\n")
    (pytester.path / "sub").mkdir()
    monkeypatch.chdir(pytester.path / "sub")
    result = pytester.runpytest_subprocess("--collect-only")
    assert result.ret == pytest.ExitCode.OK, result.stderr.str()
    result.stdout.fnmatch_lines(["*gpu_vendor NVIDIA*", "*alpha*"])


@pytest.mark.parametrize(
    ("option", "path", "message"),
    [
        ("--mad-summary", "/proc/s.json", "not writable (*)"),
        ("--mad-html", "/proc/r.html", "not writable (*)"),
        ("--mad-perf-csv", "/proc/p.csv", "not writable (*)"),
        ("--mad-summary", "adir", "is a directory"),
        ("--mad-perf-csv", "afile/p.csv", "* is not a directory"),
    ],
)
def test_outputs_that_cannot_be_written_fail_the_start_even_as_root(
    pytester: pytest.Pytester, option: str, path: str, message: str
) -> None:
    # os.access says yes to root anywhere, /proc included: the check tries instead.
    write_tree(pytester.path, [entry("alpha")])
    (pytester.path / "adir").mkdir()
    (pytester.path / "afile").write_text("")
    result = pytester.runpytest_subprocess("--mad-tags", "alpha", option, path)
    assert result.ret == pytest.ExitCode.USAGE_ERROR, result.stdout.str()
    result.stderr.fnmatch_lines([f"ERROR: {option} *{path}: {message}"])
    assert "Traceback" not in result.stdout.str() + result.stderr.str()


def test_a_registry_that_is_no_registry_fails_the_start(pytester: pytest.Pytester) -> None:
    write_tree(pytester.path, [entry("alpha")])
    result = pytester.runpytest_subprocess("--mad-tags", "alpha", "--mad-registry", "not a reg!")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(
        ["ERROR: --mad-registry 'not a reg!': not a registry (expected HOST[:PORT][/NAMESPACE])"]
    )


def test_unbalanced_quotes_in_args_are_collection_errors_naming_model_and_field(
    pytester: pytest.Pytester,
) -> None:
    write_tree(pytester.path, [entry("alpha", args="--x 'a"),
                               entry("beta", parametrize=[{"b": "x'y"}]),
                               entry("gamma", args=["--y", '"'])])  # fmt: skip
    result = collect(pytester, "--mad-tags", "dummies")
    one_collection_error(result, "*model 'alpha': field 'args' \"--x 'a\": No closing quotation")
    result.stdout.fnmatch_lines(
        ["*model 'beta': field 'parametrize': 'b' \"--b x'y\": No closing quotation",
         "*model 'gamma': field 'args' '--y \"': No closing quotation"]
    )  # fmt: skip


@pytest.mark.parametrize(
    ("option", "message"),
    [
        ("--mad-tags=alpha:b=x'y", "--mad-tags: 'alpha:b=x'y': parameter 'b' \"--b x'y\": *"),
        ('--mad-context={"model_args": "a \\"b"}', "--mad-context: 'model_args' 'a \"b': *"),
    ],
)
def test_unbalanced_quotes_in_options_fail_the_start(
    pytester: pytest.Pytester, option: str, message: str
) -> None:
    write_tree(pytester.path, [entry("alpha")])
    result = pytester.runpytest_subprocess("--mad-tags", "alpha", option)
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines([f"ERROR: {message}No closing quotation"])


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("garbage", "not a kubeconfig (a YAML mapping)"),
        ("- a list", "not a kubeconfig (a YAML mapping)"),
        ("apiVersion: v1\nclusters: 5\n", "'clusters' is not a list of mappings"),
        ("{{{", "while parsing a flow node"),
    ],
)
def test_a_kubeconfig_that_is_no_kubeconfig_fails_the_start(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, content: str, message: str
) -> None:
    write_tree(pytester.path, [entry("alpha")])
    (pytester.path / "kubeconfig").write_text(content)
    monkeypatch.setenv("KUBECONFIG", str(pytester.path / "kubeconfig"))
    result = pytester.runpytest_subprocess(
        "--mad-tags", "alpha", "--mad-deploy", "k8s", "--mad-registry", "localhost:5000"
    )
    assert result.ret == pytest.ExitCode.USAGE_ERROR, result.stdout.str()
    result.stderr.fnmatch_lines([f"ERROR: k8s: kubeconfig *kubeconfig: {message}*"])


@pytest.mark.parametrize(
    ("slurm", "field"),
    [
        ({"extra_sbatch": ["--exclusive", "--mem=0\n#SBATCH --x"]}, "'extra_sbatch'[1]"),
        ({"extra_sbatch": "--comment=a\0b"}, "'extra_sbatch'[0]"),
        ({"extra_sbatch": ["exclusive"]}, "'extra_sbatch'[0]: 'exclusive' is not an sbatch"),
        ({"modules": ["rocm\n"]}, "'modules'[0]"),
        ({"qos": "high\r"}, "'qos'"),
    ],
)
def test_slurm_values_that_would_break_the_job_script_fail_the_start(
    pytester: pytest.Pytester, slurm: dict, field: str
) -> None:
    """Refused while the settings are read, before any cluster is asked or test runs."""
    write_tree(pytester.path, [entry("alpha")])
    context = json.dumps({"slurm": slurm})
    result = pytester.runpytest_subprocess(
        "--mad-tags", "alpha", "--mad-deploy", "slurm", "--mad-context", context
    )
    assert result.ret == pytest.ExitCode.USAGE_ERROR, result.stdout.str()
    errors = [line for line in result.stderr.lines if line.startswith("ERROR:")]
    assert len(errors) == 1 and errors[0].startswith(f"ERROR: context 'slurm': {field}"), errors
    assert "Traceback" not in result.stdout.str() + result.stderr.str()
    assert "alpha" not in result.stdout.str()


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"repeat": 0}, "*model 'alpha': field 'repeat' must be at least 1, got 0"),
        ({"repeat": "many"}, "*model 'alpha': field 'repeat' must be an integer, got 'many'"),
        ({"warmup": -1}, "*model 'alpha': field 'warmup' must be at least 0, got -1"),
    ],
)
def test_repeat_and_warmup_fields_must_be_counts(
    pytester: pytest.Pytester, fields: dict, message: str
) -> None:
    write_tree(pytester.path, [{**entry("alpha"), **fields}])
    one_collection_error(collect(pytester, "--mad-tags", "all"), message)


@pytest.mark.parametrize(
    ("option", "message"),
    [
        (("--mad-repeat", "0"), "ERROR: --mad-repeat: must be at least 1, got 0"),
        (("--mad-warmup", "two"), "ERROR: --mad-warmup: expected a whole number, got 'two'"),
    ],
)
def test_repeat_and_warmup_options_are_refused_before_any_test(
    pytester: pytest.Pytester, option: tuple[str, str], message: str
) -> None:
    write_tree(pytester.path, [entry("alpha")])
    result = pytester.runpytest_subprocess("--mad-tags", "alpha", *option)
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines([message])


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("history:0", "ERROR: --mad-compare history:0: N in history:N must be a whole number"
                      " from 1, got '0'"),
        ("old/perf.csv", "ERROR: --mad-compare */old/perf.csv: no such file"),
        ("models.json", "ERROR: --mad-compare */models.json: missing column(s) model, *"),
    ],
)  # fmt: skip
def test_a_bad_compare_source_is_refused_in_one_line_before_any_test(
    pytester: pytest.Pytester, value: str, message: str
) -> None:
    write_tree(pytester.path, [entry("alpha")])
    result = pytester.runpytest_subprocess("--mad-tags", "alpha", "--mad-compare", value)
    assert result.ret == pytest.ExitCode.USAGE_ERROR, result.stdout.str()
    errors = [line for line in result.stderr.lines if line.startswith("ERROR:")]
    assert len(errors) == 1, result.stderr.str()
    result.stderr.fnmatch_lines([message])
    assert "Traceback" not in result.stdout.str() + result.stderr.str()
    assert not (pytester.path / "perf.csv").exists()


def test_a_bad_heartbeat_or_placement_is_a_usage_error_before_any_test(
    pytester: pytest.Pytester,
) -> None:
    write_tree(pytester.path, [entry("alpha")])
    for option, said in [
        ("--mad-heartbeat=-1", "--mad-heartbeat: expected 0 (off) or seconds from 0.1 to 86400,"
         " got '-1'"),
        ("--mad-heartbeat=often", "--mad-heartbeat: expected 0 (off) or seconds from 0.1 to"
         " 86400, got 'often'"),
        ("--mad-placement=nearest", "--mad-placement: expected one of least-loaded, round-robin,"
         " capability, latency, affinity, got 'nearest'"),
    ]:  # fmt: skip
        result = pytester.runpytest_subprocess("--mad-tags", "alpha", option, timeout=60)
        assert result.ret == pytest.ExitCode.USAGE_ERROR, option
        result.stderr.fnmatch_lines([f"ERROR: {said}"])
        assert "Traceback" not in result.stderr.str() + result.stdout.str()

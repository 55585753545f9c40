"""Collecting a MAD tree through whole pytest sessions: ids, selection, errors."""

from __future__ import annotations

import gc
import json
import shutil
import textwrap
from pathlib import Path

import pytest

from tests.conftest import entry, write_tree

EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "mad"

pytestmark = pytest.mark.usefixtures("no_gpu_tools")


@pytest.fixture
def no_gpu_tools(monkeypatch: pytest.MonkeyPatch) -> None:
    """Sessions here see no vendor tool, whatever the machine has."""
    monkeypatch.setenv("PATH", "/usr/bin:/bin")
    monkeypatch.delenv("MODEL_DIR", raising=False)


def collect(pytester: pytest.Pytester, *args: str) -> pytest.RunResult:
    return pytester.runpytest("--collect-only", "-q", "-p", "no:cacheprovider", *args)


@pytest.fixture
def examples(pytester: pytest.Pytester) -> Path:
    """A copy of examples/mad inside the session's directory."""
    return Path(shutil.copytree(EXAMPLES, pytester.path / "mad"))


def test_examples_list_every_model_dynamic_and_parametrized(
    pytester: pytest.Pytester, examples: Path
) -> None:
    result = collect(pytester, "--mad-root", str(examples), "--mad-tags", "dummies")
    result.stdout.fnmatch_lines(
        [
            "*models.json::dummy",
            "*models.json::dummy3[[]batch_size=256[]]",
            "*models.json::dummy3[[]batch_size=512[]]",
            "*models.json::dummy_sleep",
            "*models.json::dummy_fail",
            "*models.json::dummy_nometric",
            "*models.json::dummy_multi",
            "*models.json::dummy_skiparch",
            "*scripts/dummy2/models.json::dummy2/model1",
            "*scripts/dummy2/models.json::dummy2/model2",
            "*scripts/dummy_dynamic/get_models_json.py::dummy_dynamic/dyn_bs8",
            "*scripts/dummy_dynamic/get_models_json.py::dummy_dynamic/dyn_bs16",
            "12 tests collected*",
        ]
    )
    assert result.ret == pytest.ExitCode.OK


def test_root_defaults_to_model_dir(
    pytester: pytest.Pytester, examples: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MODEL_DIR", str(examples))
    result = collect(pytester, "--mad-tags", "dummy2/model1")
    result.stdout.fnmatch_lines(["*dummy2/models.json::dummy2/model1", "1 test collected*"])


def test_root_defaults_to_current_directory(pytester: pytest.Pytester) -> None:
    write_tree(pytester.path, [entry("alpha"), entry("beta", tags=["other"])])
    result = collect(pytester, "--mad-tags", "dummies")
    result.stdout.fnmatch_lines(["models.json::alpha", "1 test collected*"])


def test_tags_and_root_from_ini(pytester: pytest.Pytester) -> None:
    write_tree(pytester.path / "tree", [entry("alpha"), entry("beta", tags=["other"])])
    pytester.makeini("[pytest]\nmad_root = tree\nmad_tags = other\n")
    result = collect(pytester)
    result.stdout.fnmatch_lines(["tree/models.json::beta", "1 test collected*"])


def test_no_tags_leaves_plain_pytest_alone(pytester: pytest.Pytester) -> None:
    write_tree(pytester.path, [entry("alpha")])
    pytester.makepyfile(test_plain="def test_one():\n    pass\n")
    result = collect(pytester)
    result.stdout.fnmatch_lines(["test_plain.py::test_one", "1 test collected*"])


def test_start_up_objects_are_frozen_only_in_a_session_of_its_own_process(
    pytester: pytest.Pytester,
) -> None:
    # Freezing moves objects out of the garbage collector's reach for good: a session
    # run inside another program (pytester here) must leave that program's alone.
    write_tree(pytester.path, [entry("alpha")])
    frozen = gc.get_freeze_count()
    collect(pytester, "--mad-tags", "alpha").assert_outcomes()
    assert gc.get_freeze_count() == frozen
    pytester.makeconftest(
        "import gc\n"
        "def pytest_unconfigure(config):\n"
        "    print('frozen:', gc.get_freeze_count() > 0)\n"
    )
    alone = pytester.runpytest_subprocess("--collect-only", "-q", "--mad-tags", "alpha")
    alone.stdout.fnmatch_lines(["frozen: True"])
    plain = pytester.runpytest_subprocess("--collect-only", "-q")  # no MAD session
    plain.stdout.fnmatch_lines(["frozen: False"])


def test_selection_by_name_tag_all_scope_and_params(pytester: pytest.Pytester) -> None:
    write_tree(
        pytester.path,
        [entry("alpha", tags=["fast"]), entry("beta", tags=["slow"])],
        {
            "scripts/group/models.json": json.dumps(
                [
                    {
                        "name": "gamma",
                        "dockerfile": "../../docker/dummy",
                        "scripts": "../dummy/run.sh",
                        "tags": ["fast"],
                    }
                ]
            )
        },
    )
    fast = collect(pytester, "--mad-tags", "fast")
    fast.stdout.fnmatch_lines(["models.json::alpha", "*group/models.json::group/gamma", "2 tests*"])
    scoped = collect(pytester, "--mad-tags", "group/fast")
    scoped.stdout.fnmatch_lines(["*group/models.json::group/gamma", "1 test collected*"])
    everything = collect(pytester, "--mad-tags", "all")
    everything.stdout.fnmatch_lines(["3 tests collected*"])
    params = collect(pytester, "--mad-tags", "beta:batch_size=512:lr=0.1")
    params.stdout.fnmatch_lines(["models.json::beta[[]batch_size=512,lr=0.1[]]", "1 test*"])


def test_model_selected_by_several_tags_appears_once(pytester: pytest.Pytester) -> None:
    write_tree(pytester.path, [entry("alpha", tags=["fast", "smoke"])])
    result = collect(pytester, "--mad-tags", "fast,smoke", "--mad-tags", "alpha")
    result.stdout.fnmatch_lines(["models.json::alpha", "1 test collected*"])


def test_tags_become_markers_and_k_works(pytester: pytest.Pytester) -> None:
    write_tree(pytester.path, [entry("alpha", tags=["fast"]), entry("beta", tags=["slow"])])
    by_marker = collect(pytester, "--mad-tags", "all", "-m", "slow", "--strict-markers")
    by_marker.stdout.fnmatch_lines(["models.json::beta", "1/2 tests collected (1 deselected)*"])
    by_keyword = collect(pytester, "--mad-tags", "all", "-k", "alpha")
    by_keyword.stdout.fnmatch_lines(["models.json::alpha", "1/2 tests collected (1 deselected)*"])


def test_verbose_collection_shows_the_dockerfile_for_the_context(pytester: pytest.Pytester):
    write_tree(pytester.path, [entry("alpha")])
    amd = pytester.runpytest("--collect-only", "-v", "--mad-tags", "alpha")
    amd.stdout.fnmatch_lines(
        ["*dockerfile docker/dummy.ubuntu.amd.Dockerfile, image ci-alpha_dummy.ubuntu.amd*"]
    )
    nvidia = pytester.runpytest(
        "--collect-only", "-v", "--mad-tags", "alpha", "--mad-context", '{"gpu_vendor": "NVIDIA"}'
    )
    nvidia.stdout.fnmatch_lines(["*dockerfile docker/dummy.ubuntu.nvidia.Dockerfile*"])


def test_skip_gpu_arch_skips_with_reason(pytester: pytest.Pytester) -> None:
    write_tree(pytester.path, [entry("alpha", skip_gpu_arch="gfx90a, A100")])
    result = pytester.runpytest(
        "-rs",
        "--mad-tags",
        "alpha",
        "--mad-gpus",
        "2",
        "--mad-context",
        '{"gpu_vendor": "AMD", "gpu_architecture": "gfx90a"}',
    )
    result.stdout.fnmatch_lines(["SKIPPED*skip_gpu_arch lists gfx90a (this host: gfx90a)*"])
    result.assert_outcomes(skipped=1)


def test_no_fitting_dockerfile_skips_with_reason(pytester: pytest.Pytester) -> None:
    write_tree(pytester.path, [entry("alpha")])
    result = pytester.runpytest(
        "-rs", "--mad-tags", "alpha", "--mad-context", '{"guest_os": "CENTOS"}'
    )
    result.stdout.fnmatch_lines(
        ["SKIPPED*none of the 2 Dockerfile(s) docker/dummy.* fits gpu_vendor=AMD, guest_os=CENTOS*"]
    )


def test_without_gpus_the_session_says_once_how_to_declare_them(pytester: pytest.Pytester):
    write_tree(pytester.path, [entry("alpha")])
    result = collect(pytester, "--mad-tags", "alpha")
    hint = "madengine: no GPU detected and none declared; declare them with --mad-gpus*"
    result.stdout.fnmatch_lines([hint])
    assert sum("no GPU detected" in line for line in result.outlines) == 1
    declared = pytester.runpytest("--collect-only", "--mad-tags", "alpha", "--mad-gpus", "0,2-3")
    declared.stdout.fnmatch_lines(["madengine: GPUs: 3 virtual AMD GPU(s) [[]0,2,3[]] (declared)"])
    assert "no GPU detected" not in declared.stdout.str()


# --- bad input: one clear line each, other files still collected ---------------------------


def test_malformed_json_names_file_line_and_column(pytester: pytest.Pytester) -> None:
    write_tree(
        pytester.path,
        [entry("alpha")],
        {"scripts/broken/models.json": '[\n  {"name": "x",\n   "dockerfile" "d"}\n]\n'},
    )
    result = collect(pytester, "--mad-tags", "all")
    result.stdout.fnmatch_lines(
        [
            "models.json::alpha",
            "scripts/broken/models.json:3:17: invalid JSON: Expecting ':' delimiter",
            "1 test collected, 1 error*",
        ]
    )
    assert result.ret == pytest.ExitCode.INTERRUPTED


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        (
            {"dockerfile": "docker/dummy", "scripts": "scripts/dummy/run.sh"},
            "models.json: entry #2: missing field 'name'",
        ),
        (
            {"name": "nodocker", "scripts": "scripts/dummy/run.sh"},
            "models.json: model 'nodocker': missing field 'dockerfile'",
        ),
        (
            {"name": "noscripts", "dockerfile": "docker/dummy"},
            "models.json: model 'noscripts': missing field 'scripts'",
        ),
        (
            entry("has:colon"),
            "models.json: model 'has:colon': name contains the reserved character ':'",
        ),
        (
            entry("has/slash"),
            "models.json: model 'has/slash': name contains the reserved character '/'",
        ),
        (
            entry("nofile", dockerfile="docker/missing"),
            "models.json: model 'nofile': dockerfile 'docker/missing' matches no file"
            " (docker/missing.*Dockerfile)",
        ),
        (
            entry("badgpus", n_gpus="two"),
            "models.json: model 'badgpus': field 'n_gpus' must be an integer, got 'two'",
        ),
        ("not an object", "models.json: entry #2: expected an object, got str"),
    ],
)
def test_bad_entry_names_file_and_entry(pytester: pytest.Pytester, bad, message) -> None:
    write_tree(pytester.path, [entry("alpha"), bad])
    result = collect(pytester, "--mad-tags", "all")
    result.stdout.fnmatch_lines([message, "*1 error*"])


def test_bad_file_does_not_stop_other_files(pytester: pytest.Pytester) -> None:
    write_tree(
        pytester.path,
        [entry("alpha"), entry("alpha")],
        {
            "scripts/good/models.json": json.dumps(
                [
                    {
                        "name": "beta",
                        "dockerfile": "../../docker/dummy",
                        "scripts": "../dummy/run.sh",
                        "tags": ["dummies"],
                    }
                ]
            )
        },
    )
    result = collect(pytester, "--mad-tags", "dummies")
    result.stdout.fnmatch_lines(
        [
            "scripts/good/models.json::good/beta",
            "models.json: model 'alpha': duplicate name, first defined in models.json",
            "1 test collected, 1 error*",
        ]
    )


def test_models_json_and_get_models_json_in_one_directory(pytester: pytest.Pytester) -> None:
    write_tree(
        pytester.path,
        [entry("alpha")],
        {
            "scripts/both/models.json": "[]",
            "scripts/both/get_models_json.py": "def list_models():\n    return []\n",
        },
    )
    result = collect(pytester, "--mad-tags", "all")
    result.stdout.fnmatch_lines(
        [
            "models.json::alpha",
            "scripts/both: has both models.json and get_models_json.py; keep one",
            "1 test collected, 1 error*",
        ]
    )


def test_get_models_json_that_raises(pytester: pytest.Pytester) -> None:
    code = textwrap.dedent(
        """
        from madengine.utils.discover_models import CustomModel

        def list_models():
            raise RuntimeError("cannot reach the model zoo")
        """
    )
    write_tree(pytester.path, [entry("alpha")], {"scripts/dyn/get_models_json.py": code})
    result = collect(pytester, "--mad-tags", "all")
    result.stdout.fnmatch_lines(
        [
            "models.json::alpha",
            "scripts/dyn/get_models_json.py: raised RuntimeError: cannot reach the model zoo",
            "1 test collected, 1 error*",
        ]
    )


def test_tag_that_selects_nothing_lists_close_names(pytester: pytest.Pytester) -> None:
    write_tree(pytester.path, [entry("resnet50", tags=["vision"]), entry("bert", tags=["nlp"])])
    result = collect(pytester, "--mad-tags", "resnet5,bert")
    result.stdout.fnmatch_lines(
        [
            "models.json::bert",
            "--mad-tags: 'resnet5' selects no model; close names: resnet50",
            "1 test collected, 1 error*",
        ]
    )


def test_missing_root_is_a_usage_error(pytester: pytest.Pytester) -> None:
    result = collect(pytester, "--mad-root", "nowhere", "--mad-tags", "all")
    result.stderr.fnmatch_lines(["ERROR: MAD root nowhere: no such directory"])
    assert result.ret == pytest.ExitCode.USAGE_ERROR


def test_bad_context_is_a_usage_error(pytester: pytest.Pytester) -> None:
    write_tree(pytester.path, [entry("alpha")])
    result = collect(pytester, "--mad-tags", "all", "--mad-context", '{"gpu_vendor": "INTEL"}')
    result.stderr.fnmatch_lines(
        ["ERROR: --mad-context: 'gpu_vendor' must be one of AMD, NVIDIA, got 'INTEL'"]
    )
    assert result.ret == pytest.ExitCode.USAGE_ERROR


def test_test_files_in_the_tree_are_left_alone_unless_named(pytester: pytest.Pytester) -> None:
    broken = "import no_such_module\n\ndef test_x():\n    pass\n"
    write_tree(pytester.path, [entry("alpha")], {"scripts/dummy/test_model_code.py": broken})
    pytester.makepyfile(test_mine="def test_mine():\n    pass\n")
    only_models = collect(pytester, "--mad-tags", "all")
    only_models.stdout.fnmatch_lines(["models.json::alpha", "1 test collected*"])
    named = collect(pytester, "--mad-tags", "all", "test_mine.py")
    named.stdout.fnmatch_lines(["test_mine.py::test_mine", "1 test collected*"])

"""credential.json of any shape: loaded whole, checked when used, never shown."""

from __future__ import annotations

import functools
import json
import shutil
from pathlib import Path

import pytest

from pytest_madengine import credentials as credentials_module
from pytest_madengine.core.records import ModelFacts, ResultRow, Status, TestRecord
from pytest_madengine.credentials import MASK, GitLogin, load_credentials
from pytest_madengine.errors import MadError
from pytest_madengine.masking import StreamMask, mask_all, mask_text

# Our conformance tree's file: the shapes real MAD trees hold.
CONFORMANCE_CREDENTIALS = Path(__file__).parents[1] / "mad_conformance" / "credential.json"
SECRETS = (
    "hub-Pa55-not-real", "conf-Pa55-word-not-real", "minio-Pa55-not-real",
    "nas-Pa55-a-not-real", "nas-Pa55-b-not-real",
)  # fmt: skip


@pytest.fixture
def credentials(tmp_path: Path):
    shutil.copy(CONFORMANCE_CREDENTIALS, tmp_path / "credential.json")
    return load_credentials(tmp_path, environ={})


def test_every_real_world_shape_loads_and_every_secret_is_known(credentials) -> None:
    assert set(credentials.entries) == {"dockerhub", "CONF_CRED", "MAD_MINIO", "NAS_NODES",
                                        "GIT_SSH"}  # fmt: skip
    # Secrets under any key that names one, at any depth (the NAS_NODES list included).
    assert set(SECRETS) <= set(credentials.secrets())
    assert "conf-user" not in credentials.secrets()  # a username is no secret
    text = " ".join(SECRETS)
    assert credentials.redact(text) == " ".join([MASK] * len(SECRETS))


def test_cred_gives_variables_named_as_madengine_names_them(credentials) -> None:
    assert credentials.model_variables("CONF_CRED", "m") == {
        "CONF_CRED_USERNAME": "conf-user",
        "CONF_CRED_PASSWORD": "conf-Pa55-word-not-real",
    }
    assert credentials.model_variables("MAD_MINIO", "m")["MAD_MINIO_MINIO_ENDPOINT"] == (
        "http://127.0.0.1:9999"
    )


def test_an_entry_is_checked_only_when_used_and_errors_show_no_value(credentials) -> None:
    with pytest.raises(MadError) as caught:
        credentials.model_variables("NAS_NODES", "nasmodel")
    message = str(caught.value)
    assert message.endswith(
        "credential.json: credential 'NAS_NODES' (model 'nasmodel': cred): must be an object,"
        " not a list"
    )
    assert not any(secret in message for secret in SECRETS)
    with pytest.raises(MadError, match=r"model 'm': cred: no entry 'NOPE' in .*credential.json"):
        credentials.model_variables("NOPE", "m")


def test_nested_values_are_refused_by_key_never_shown(tmp_path: Path) -> None:
    (tmp_path / "credential.json").write_text(json.dumps({"x": {"token": {"v": "t0ken-x"}}}))
    credentials = load_credentials(tmp_path, environ={})
    assert "t0ken-x" in credentials.secrets()
    with pytest.raises(MadError) as caught:
        credentials.model_variables("x", "m")
    assert "'token' must be a string or a number" in str(caught.value)
    assert "t0ken-x" not in str(caught.value)


def test_registry_logins_take_upper_case_keys(tmp_path: Path) -> None:
    (tmp_path / "credential.json").write_text(
        json.dumps({"reg:5000": {"USERNAME": "u", "PASSWORD": "p4ss"}})
    )
    credentials = load_credentials(tmp_path, environ={})
    assert credentials.registry_auth("reg:5000") == {"username": "u", "password": "p4ss"}


def test_git_login_of_a_url_model(credentials) -> None:
    assert credentials.git_login("CONF_CRED", "m") == GitLogin(
        "conf-user", "conf-Pa55-word-not-real", None
    )
    assert credentials.git_login("GIT_SSH", "m") == GitLogin(
        "git", None, "/nonexistent/conformance/id_ed25519"
    )


def test_a_file_that_is_not_an_object_is_refused(tmp_path: Path) -> None:
    (tmp_path / "credential.json").write_text("[1, 2]")
    with pytest.raises(MadError, match=r"credential.json: expected an object of named"):
        load_credentials(tmp_path, environ={})


def test_a_secret_too_short_to_mask_is_refused_where_it_is_used(tmp_path: Path) -> None:
    # "abc" cannot be masked without masking every abc (and a perf.csv value of 123).
    entries = {
        "dockerhub": {"username": "ci", "password": "abc"},
        "SHORT": {"user": "me", "token": "12"},
        "NAS_NODES": [{"HOST": "nas", "PASSWORD": "xyz"}],
        "MAD_MINIO": {"USERNAME": "ak", "PASSWORD": "long-enough-secret"},
        "HF_TOKEN": {"user": "bob-the-builder", "value": 1.5},  # all of it secret
        "FINE": {"username": "u", "password": "long-enough", "token_ttl": 60, "key_id": 7,
                 "token_type": "pat", "ssh_key_file": "~/k"},
    }  # fmt: skip
    (tmp_path / "credential.json").write_text(json.dumps(entries))
    credentials = load_credentials(tmp_path, environ={})
    assert credentials.model_variables("FINE", "m")["FINE_TOKEN_TYPE"] == "pat"
    refused = {
        "dockerhub": lambda: credentials.registry_auth(None),
        "SHORT": lambda: credentials.model_variables("SHORT", "m"),
        "NAS_NODES": lambda: credentials.entry("NAS_NODES"),
        "MAD_MINIO": lambda: credentials.entry("MAD_MINIO"),  # its username is an access key
        "HF_TOKEN": lambda: credentials.model_variables("HF_TOKEN", "m"),
    }
    keys = {"dockerhub": "password", "SHORT": "token", "NAS_NODES": "PASSWORD",
            "MAD_MINIO": "username", "HF_TOKEN": "value"}  # fmt: skip
    for name, use in refused.items():
        with pytest.raises(MadError) as refusal:
            use()
        said = str(refusal.value)
        assert said == (
            f"{tmp_path / 'credential.json'}: credential '{name}': '{keys[name]}' is shorter"
            " than 4 characters, too short to be masked in output; use a longer one"
        )
        assert not any(value in said.split(": ", 1)[1] for value in ("abc", "12", "xyz", "1.5"))
    # From the environment, the variable is named.
    environ = {"MAD_MINIO": json.dumps({"USERNAME": "long-enough", "PASSWORD": "pw"})}
    with pytest.raises(MadError, match=r"^environment variable MAD_MINIO: credential 'MAD_MINIO'"):
        load_credentials(tmp_path, environ=environ).entry("MAD_MINIO")


def test_stream_mask_catches_a_secret_split_across_chunks() -> None:
    mask = StreamMask(["s3cret-value", "s3cret"])
    chunks = [b"line one\nthe s3c", b"ret-val", b"ue is here\nand s3cret", b" too\n", b"tail s3"]
    out = b"".join(mask.feed(chunk) for chunk in chunks) + mask.flush()
    assert out == b"line one\nthe *** is here\nand *** too\ntail s3"


def test_stream_mask_lets_whole_lines_through_at_once() -> None:
    mask = StreamMask(["abcdef"])
    # Only what could still start a secret is held: the longest secret less one byte.
    assert mask.feed(b"first line\nsecond") == b"first line\ns"
    assert mask.feed(b" line\n") == b"econd line\n"
    assert StreamMask([]).feed(b"no secrets, no holding back") == b"no secrets, no holding back"


def test_mask_text_takes_the_longest_secret_first() -> None:
    assert mask_text("key=abc123 and abc", ["abc", "abc123"]) == "key=*** and ***"


def test_no_secret_shows_in_a_repr_of_the_credentials_or_a_git_login(tmp_path: Path) -> None:
    """A repr reaches tracebacks and debug prints: it names no secret."""
    secret = "registry-pass-1234"
    path = tmp_path / "credential.json"
    path.write_text(json.dumps({"dockerhub": {"username": "someone", "password": secret}}))
    credentials = load_credentials(tmp_path, environ={})
    assert credentials.entry("dockerhub")["password"] == secret
    assert secret not in repr(credentials)
    assert secret not in repr(GitLogin("someone", secret))


def _record(reason: str, properties: dict[str, str]) -> TestRecord:
    facts = ModelFacts("m", 1, args="--token s3cret")
    rows = (ResultRow("m", Status.FAILURE),)
    return TestRecord("m", Status.FAILURE, facts, reason, rows=rows, properties=properties)


def test_mask_all_masks_a_secret_however_deep_and_copies_only_what_changed() -> None:
    redact = functools.partial(mask_text, secrets=["s3cret"])
    record = _record("exit code 1", {"node": "n1", "url": "https://u:s3cret@h"})
    masked = mask_all(record, redact)
    assert (
        masked.facts.args == f"--token {MASK}" and masked.properties["url"] == f"https://u:{MASK}@h"
    )
    assert masked.rows is record.rows and masked.reason is record.reason  # nothing to mask there


def test_mask_all_gives_a_record_without_secrets_back_as_it_is() -> None:
    record = _record("exit code 1", {"node": "n1"})
    assert mask_all(record, functools.partial(mask_text, secrets=["other"])) is record


def test_a_session_without_secrets_does_not_walk_its_records(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each record is masked by the run and again by the reporter: with no secret to
    mask, neither walks it (a fleet's thousands of records)."""
    record = _record("exit code 1", {"url": "https://u:s3cret@h"})
    (tmp_path / "credential.json").write_text(json.dumps({"git": {"password": "s3cret"}}))
    assert load_credentials(tmp_path, environ={}).mask_all(record).facts.args == f"--token {MASK}"

    def walked(value: object, redact: object) -> object:
        raise AssertionError("a record was walked with nothing to mask")

    monkeypatch.setattr(credentials_module, "mask_all", walked)
    assert load_credentials(tmp_path / "none", environ={}).mask_all(record) is record

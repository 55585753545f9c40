"""--mad-history as written -> the URL the controller opens, and URLs as they are shown."""

from __future__ import annotations

from pathlib import Path

import pytest

from pytest_madengine.core.history import History, make_url, masked_url
from pytest_madengine.core.history_url import resolve_history_url, sqlite_file

BASE, OUTPUT = Path("/work/here"), Path("/work/here/mad_output")


@pytest.mark.parametrize(
    ("given", "url"),
    [
        (None, "sqlite:////work/here/mad_output/history.sqlite"),
        ("", "sqlite:////work/here/mad_output/history.sqlite"),
        ("none", None),
        ("OFF", None),
        ("results/team.db", "sqlite:////work/here/results/team.db"),
        ("/abs/h.sqlite", "sqlite:////abs/h.sqlite"),
        ("postgresql+psycopg://u:p@db/mad", "postgresql+psycopg://u:p@db/mad"),
    ],
)
def test_history_option_resolves(given: str | None, url: str | None) -> None:
    assert resolve_history_url(given, BASE, OUTPUT) == url


def test_the_default_is_beside_the_output() -> None:
    assert History.default_url(OUTPUT) == resolve_history_url(None, BASE, OUTPUT)


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        (
            "postgresql+psycopg://mad:s3cret@127.0.0.1:5439/h",
            "postgresql+psycopg://mad:***@127.0.0.1:5439/h",
        ),
        ("postgresql://mad:s3cret@[::1", "postgresql://mad:***@[::1"),  # does not parse
        ("sqlite:////tmp/h.sqlite", "sqlite:////tmp/h.sqlite"),
    ],
)
def test_a_url_is_shown_without_its_password(url: str, shown: str) -> None:
    assert masked_url(url) == shown


@pytest.mark.parametrize(
    ("url", "path"),
    [
        ("sqlite:////work/here/mad_output/history.sqlite", "/work/here/mad_output/history.sqlite"),
        ("sqlite:///rel/h.db", "rel/h.db"),
        ("sqlite:////work/a b/h.db", "/work/a b/h.db"),
        # SQLAlchemy reads these: quoting, options, a driver, memory, a server.
        ("sqlite:////work/a%20b/h.db", None),
        ("sqlite:////work/h.db?timeout=5", None),
        ("sqlite+pysqlite:////work/h.db", None),
        ("sqlite:///:memory:", None),
        ("sqlite://", None),
        ("postgresql://mad:pw@db/mad", None),
    ],
)
def test_a_plain_sqlite_file_is_opened_without_sqlalchemy(url: str, path: str | None) -> None:
    assert sqlite_file(url) == path
    if path is not None:  # shown as SQLAlchemy shows it: it holds no password
        assert masked_url(url) == make_url(url).render_as_string(hide_password=True) == url

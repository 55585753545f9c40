"""What every Docker SDK client of ours is, whoever made it (pure: no engine is asked)."""

from __future__ import annotations

import docker
import pytest
import requests

from pytest_madengine.backends.docker.containers import bounded


def test_a_request_reads_nothing_of_the_process_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """requests looks up proxy variables in os.environ at each request unless told not
    to; a run's thread iterating os.environ while pytest sets PYTEST_CURRENT_TEST on the
    main thread raised KeyError mid-session."""
    client = bounded(
        docker.DockerClient(base_url="unix:///nonexistent/docker.sock", version="1.41")
    )

    def environment_read(*args: object, **kwargs: object) -> None:
        raise AssertionError("a request read the process environment")

    monkeypatch.setattr(requests.sessions, "get_environ_proxies", environment_read)
    url = "http+docker://localhost/v1.41/version"
    settings = client.api.merge_environment_settings(url, {}, None, None, None)
    assert settings["proxies"] == {}

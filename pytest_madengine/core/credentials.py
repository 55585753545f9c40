"""credential.json of a MAD tree: registry logins and the secrets models ask for by `cred`.

Secrets never reach our output: `redact` blanks every known secret value in a text
before it is shown (failure lines, JUnit properties).
"""

from __future__ import annotations

import base64
import functools
import json
import os
import urllib.parse
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pytest_madengine.errors import MadError, read_json

DOCKERHUB = "dockerhub"
# madengine's overrides of the dockerhub entry.
DOCKERHUB_ENV = {
    "username": "MAD_DOCKERHUB_USER",
    "password": "MAD_DOCKERHUB_PASSWORD",
    "repository": "MAD_DOCKERHUB_REPO",
}
MASK = "***"
SECRET_KEYS = ("password", "passwd", "pwd", "token", "secret", "key", "credential")


def registry_key(registry: str | None) -> str:
    """The credential.json key of a registry: as given, `dockerhub` for Docker Hub."""
    if not registry or registry.lower() in ("docker.io", "index.docker.io", DOCKERHUB):
        return DOCKERHUB
    return registry


def registry_of(reference: str) -> str | None:
    """The registry part of an image reference (None: Docker Hub)."""
    first, _, rest = reference.partition("/")
    return first if rest and ("." in first or ":" in first or first == "localhost") else None


def secret_forms(secret: str) -> set[str]:
    """A secret as it may be written out: as is, URL-quoted, and in base64."""
    raw = secret.encode()
    forms = {
        secret,
        urllib.parse.quote(secret, safe=""),
        urllib.parse.quote_plus(secret),
        json.dumps(secret)[1:-1],  # as written inside a JSON string
    }
    for encoded in (base64.b64encode(raw), base64.urlsafe_b64encode(raw)):
        text = encoded.decode()
        forms.update({text, text.rstrip("=")})
    return {form for form in forms if len(form) >= 4}  # masking "a" would mask every a


@dataclass(frozen=True)
class Credentials:
    entries: Mapping[str, Mapping[str, str]] = field(default_factory=dict)
    source: str = "credential.json"

    def registry_auth(self, registry: str | None) -> dict[str, str] | None:
        """username/password for the registry, or None when there is no entry."""
        entry = self.entries.get(registry_key(registry))
        if not entry or "username" not in entry or "password" not in entry:
            return None
        return {"username": entry["username"], "password": entry["password"]}

    def secrets(self) -> tuple[str, ...]:
        return self._secrets

    @functools.cached_property
    def _secrets(self) -> tuple[str, ...]:
        """Every value that must not be shown, longest first (so parts are not left)."""
        values: set[str] = set()
        for entry in self.entries.values():
            lowered = {key.lower(): value for key, value in entry.items()}
            for key, value in lowered.items():
                if value and any(word in key for word in SECRET_KEYS):
                    values.update(secret_forms(value))
            if lowered.get("username") and lowered.get("password"):
                # What HTTP basic auth sends: a registry that echoes its Authorization
                # header would otherwise show the login in base64.
                values.update(secret_forms(f"{lowered['username']}:{lowered['password']}"))
        return tuple(sorted(values, key=len, reverse=True))

    def redact(self, text: str) -> str:
        for secret in self._secrets:
            text = text.replace(secret, MASK)
        return text

    def redact_file(self, path: Path) -> None:
        """Masks the secrets in a file (a model's log), rewriting it only when one is
        there; read line by line, so a big log costs no memory."""
        if not self._secrets or not path.exists():
            return
        with path.open(encoding="utf-8", errors="surrogateescape") as handle:
            if not any(secret in line for line in handle for secret in self._secrets):
                return
        masked = path.with_name(path.name + ".masked")
        with path.open(encoding="utf-8", errors="surrogateescape") as source, masked.open(
            "w", encoding="utf-8", errors="surrogateescape"
        ) as out:
            for line in source:
                out.write(self.redact(line))
        masked.replace(path)


def _entries(data: Any, where: str) -> dict[str, dict[str, str]]:
    if not isinstance(data, dict):
        raise MadError(f"{where}: expected an object of credentials")
    entries = {}
    for key, entry in data.items():
        if not isinstance(entry, dict) or not all(
            isinstance(value, str | int) and not isinstance(value, bool) for value in entry.values()
        ):
            # The values are secrets: name the entry, never show it.
            raise MadError(f"{where}: credential '{key}' must be an object of strings")
        entries[str(key)] = {str(name): str(value) for name, value in entry.items()}
    return entries


def load_credentials(root: Path, environ: Mapping[str, str] | None = None) -> Credentials:
    """credential.json at the tree's root (none is fine), with the dockerhub entry
    overridden by MAD_DOCKERHUB_USER / _PASSWORD / _REPO."""
    environ = os.environ if environ is None else environ
    path = root / "credential.json"
    entries: dict[str, dict[str, str]] = {}
    if path.exists():
        entries = _entries(read_json(path), str(path))
    hub = {key: environ[name] for key, name in DOCKERHUB_ENV.items() if environ.get(name)}
    if hub:
        entries[DOCKERHUB] = {**entries.get(DOCKERHUB, {}), **hub}
    return Credentials(entries, str(path))

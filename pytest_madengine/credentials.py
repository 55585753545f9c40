"""credential.json of a MAD tree: registry logins, the secrets models ask for by `cred`,
and the logins of the data providers.

Real files hold entries of many shapes (objects with lower- or upper-case keys, lists
like `NAS_NODES`), so every entry loads as it is and is checked only by the code that
uses it; a wrong one is named, never shown. The data providers' entries (`MAD_MINIO`,
`MAD_AWS_S3`, `NAS_NODES`) can come from environment variables of the same name holding
JSON, which override the file.

Secrets never reach our output: `redact` blanks every known secret value in a text
before it is shown (failure lines, JUnit properties).
"""

from __future__ import annotations

import base64
import functools
import json
import os
import re
import urllib.parse
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from pytest_madengine.errors import MadError, parse_json, read_json
from pytest_madengine.masking import MASK, mask_all

T = TypeVar("T")

DOCKERHUB = "dockerhub"
# madengine's overrides of the dockerhub entry.
DOCKERHUB_ENV = {
    "username": "MAD_DOCKERHUB_USER",
    "password": "MAD_DOCKERHUB_PASSWORD",
    "repository": "MAD_DOCKERHUB_REPO",
}
# Entries of the data providers that an environment variable of the same name overrides.
DATA_ENTRIES = ("MAD_MINIO", "MAD_AWS_S3", "NAS_NODES")
SECRET_KEYS = ("password", "passwd", "pwd", "token", "secret", "key", "credential", "credentials")
# The keys of a registry's entry (case-blind); any other is named when the login is short.
REGISTRY_KEYS = ("username", "password", "repository")
# An S3 access key id rides in USERNAME: not a password, but not for logs either.
ACCESS_KEY_ENTRIES = ("MAD_MINIO", "MAD_AWS_S3")


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
    """A secret as it may be written out: as is, URL-quoted, JSON-escaped, in hex, and in
    base64 (alone or inside a longer base64 text)."""
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
    # Inside a longer base64 text (`echo $PASSWORD | base64`, a header, a token) the
    # secret's characters depend on where its bytes fall in the 3-byte groups: for each
    # of the three places, the characters that its bytes alone decide.
    for offset in range(3):
        first, last = -(-8 * offset // 6), 8 * (offset + len(raw)) // 6
        for encode in (base64.b64encode, base64.urlsafe_b64encode):
            forms.add(encode(b"\0" * offset + raw).decode()[first:last])
    forms.update({raw.hex(), raw.hex().upper()})
    return {form for form in forms if len(form) >= MIN_MASKED}


# Shorter texts are not masked: masking "a" (or "123") would mask every a, and numbers
# in perf.csv. A secret this short is refused where it is used instead (see _maskable).
MIN_MASKED = 4


def field_of(entry: Mapping[str, Any], *names: str) -> Any:
    """The value of the first of `names` the entry has, keys compared case-blind
    (`USERNAME` and `username` are one key); None when it has none."""
    folded = {str(key).lower(): value for key, value in entry.items()}
    for name in names:
        value = folded.get(name.lower())
        if value is not None and value != "":
            return value
    return None


def _secrets_under(
    value: Any, names_secret: Callable[[object], bool], key: str = "", secret: bool = False
) -> Iterator[tuple[str, str | int | float]]:
    """(key, value) of every scalar under a key that `names_secret` says names a
    secret, at any depth (an item of a list counts under the list's key)."""
    if isinstance(value, Mapping):
        for inner, item in value.items():
            yield from _secrets_under(item, names_secret, str(inner), secret or names_secret(inner))
    elif isinstance(value, list):
        for item in value:
            yield from _secrets_under(item, names_secret, key, secret)
    elif secret and isinstance(value, str | int | float) and not isinstance(value, bool):
        yield key, value


def _holds_a_secret_word(key: object) -> bool:
    return any(word in str(key).lower() for word in SECRET_KEYS)


def _secret_values(value: Any) -> Iterator[str]:
    """Every string (or whole number) under a key that holds a secret's word."""
    for _, found in _secrets_under(value, _holds_a_secret_word):
        if not isinstance(found, float) and str(found):
            yield str(found)


def _names_a_secret(key: object) -> bool:
    """Whether a key is a secret's own name (`password`, `api_key`, `HF_TOKEN`), not
    one that merely holds such a word (`token_ttl`, `key_id`, `ssh_key_file`)."""
    words = re.split(r"[^a-z0-9]+", re.sub(r"([a-z0-9])([A-Z])", r"\1_\2", str(key)).lower())
    return bool(words) and words[-1] in SECRET_KEYS


def _short_secret(value: Any) -> str | None:
    """The key of a secret too short to be masked, if any (see MIN_MASKED)."""
    for key, found in _secrets_under(value, _names_a_secret):
        if 0 < len(str(found)) < MIN_MASKED:
            return key
    return None


def _scalar(value: Any) -> str | None:
    """A value as text when it is one (a string or a number), else None."""
    if isinstance(value, str):
        return value
    if isinstance(value, int | float) and not isinstance(value, bool):
        return str(value)
    return None


@dataclass(frozen=True)
class GitLogin:
    """What a `url` model's clone uses from its `cred` entry."""

    username: str | None = None
    password: str | None = field(default=None, repr=False)
    ssh_key_file: str | None = None


def _login_of(entry: Any) -> tuple[str | None, str | None]:
    """(username, password) of an object entry, as strings, else Nones."""
    if not isinstance(entry, Mapping):
        return None, None
    username, password = field_of(entry, "username"), field_of(entry, "password")
    if not isinstance(username, str | int) or not isinstance(password, str | int):
        return None, None
    return str(username), str(password)


@dataclass(frozen=True)
class Credentials:
    # As the file has them: every secret, so never in a repr (a traceback, a debug print).
    entries: Mapping[str, Any] = field(default_factory=dict, repr=False)
    source: str = "credential.json"
    # Raw JSON of the environment variables that override data entries (parsed on use).
    environ: Mapping[str, str] = field(default_factory=dict, repr=False)

    def entry(self, name: str) -> Any:
        """The entry as written (the environment variable of that name first, for the
        data entries); None when there is none. MadError naming the variable when it is
        not JSON."""
        text = self.environ.get(name)
        if text is not None:
            where = f"environment variable {name}"
            return self._maskable(name, parse_json(text, where), where)
        return self._maskable(name, self.entries.get(name))

    def _maskable(self, name: str, entry: Any, where: str = "") -> Any:
        """The entry, unless a secret of it is too short to be masked in output: a
        MadError naming the entry and the key then (never the value)."""
        key = _short_secret({name: entry})
        if key is None and name in ACCESS_KEY_ENTRIES and isinstance(entry, Mapping):
            username = field_of(entry, "username")
            short = isinstance(username, str) and 0 < len(username) < MIN_MASKED
            key = "username" if short else None
        if key is not None:
            raise MadError(
                f"{where or self.source}: credential '{name}': '{key}' is shorter than {MIN_MASKED}"
                " characters, too short to be masked in output; use a longer one"
            )
        return entry

    def registry_auth(self, registry: str | None) -> dict[str, str] | None:
        """username/password for the registry, or None when there is no entry."""
        key = registry_key(registry)
        entry = self._maskable(key, self.entries.get(key))
        if entry is None:
            return None
        if not isinstance(entry, dict) or not all(
            isinstance(value, str | int) and not isinstance(value, bool) for value in entry.values()
        ):
            # The values are secrets: name the entry, never show it.
            raise MadError(f"{self.source}: credential '{key}' must be an object of strings")
        username, password = field_of(entry, "username"), field_of(entry, "password")
        if username is not None and password is not None:
            return {"username": str(username), "password": str(password)}
        unknown = [str(name) for name in entry if str(name).lower() not in REGISTRY_KEYS]
        if username is None and password is None and not unknown:
            return None  # an entry for `repository` alone: pulls and pushes go anonymous
        # Half a login (`passwd` for `password`) would go anonymous with no word.
        missing = [name for name, value in (("username", username), ("password", password))
                   if value is None]  # fmt: skip
        unknown_keys = f"; unknown key {', '.join(map(repr, unknown))}" if unknown else ""
        raise MadError(
            f"{self.source}: credential '{key}': no {' and no '.join(map(repr, missing))}"
            f"{unknown_keys} (a registry login has 'username' and 'password')"
        )

    def repository(self, registry: str | None) -> str | None:
        """The entry's `repository` (images are pushed as `<registry>/<repository>:<name>`)."""
        entry = self.entries.get(registry_key(registry))
        value = field_of(entry, "repository") if isinstance(entry, Mapping) else None
        return str(value) if isinstance(value, str | int) and str(value) else None

    def _flat(self, name: str, use: str) -> dict[str, str]:
        """Entry `name` as an object of strings (numbers written as text), for `use`."""
        entry = self.entry(name)
        if entry is None:
            raise MadError(f"{use}: no entry '{name}' in {self.source}")
        where = f"{self.source}: credential '{name}'"
        if not isinstance(entry, Mapping):
            kind = "a list" if isinstance(entry, list) else type(entry).__name__
            raise MadError(f"{where} ({use}): must be an object, not {kind}")
        flat = {}
        for key, value in entry.items():
            text = _scalar(value)
            if text is None:
                # The values are secrets: name the key, never show the value.
                raise MadError(f"{where} ({use}): '{key}' must be a string or a number")
            flat[str(key)] = text
        return flat

    def model_variables(self, name: str, model: str) -> dict[str, str]:
        """`cred: name` of a model: each key of the entry as `<name>_<KEY>` (madengine's
        names), given to the model's build as build args and to its run as variables."""
        entry = self._flat(name, f"model '{model}': cred")
        return {f"{name}_{key.upper()}": value for key, value in entry.items()}

    def git_login(self, name: str, model: str) -> GitLogin:
        """The clone login of a `url` model from its `cred` entry."""
        entry = self._flat(name, f"model '{model}': cred")
        return GitLogin(
            username=field_of(entry, "username", "user"),
            password=field_of(entry, "password", "token"),
            ssh_key_file=field_of(entry, "ssh_key_file"),
        )

    def secrets(self) -> tuple[str, ...]:
        return self._secrets

    @functools.cached_property
    def _secrets(self) -> tuple[str, ...]:
        """Every value that must not be shown, longest first (so parts are not left)."""
        values = set(_secret_values(dict(self.entries)))
        parsed_entries: list[Any] = list(self.entries.values())
        for name in ACCESS_KEY_ENTRIES:
            entry = self.entries.get(name)
            if isinstance(entry, Mapping) and isinstance(field_of(entry, "username"), str):
                values.add(field_of(entry, "username"))
        for name, text in self.environ.items():
            try:
                parsed = parse_json(text, name)
            except MadError:
                values.add(text)  # not JSON: all of it may be secret
                continue
            parsed_entries.append(parsed)
            values.update(_secret_values(parsed))
            if name in ACCESS_KEY_ENTRIES and isinstance(parsed, Mapping):
                username = field_of(parsed, "username")
                if isinstance(username, str):
                    values.add(username)
        for entry in parsed_entries:
            username, password = _login_of(entry)
            if username and password:
                # What HTTP basic auth sends: a registry that echoes its Authorization
                # header would otherwise show the login in base64.
                values.add(f"{username}:{password}")
        forms = {form for value in values if value for form in secret_forms(value)}
        return tuple(sorted(forms, key=len, reverse=True))

    def redact(self, text: str) -> str:
        for secret in self._secrets:
            text = text.replace(secret, MASK)
        return text

    def mask_all(self, value: T) -> T:
        """`value` with every secret in any text of it masked (masking.mask_all); the
        very value, not walked at all, when there is no secret (a fleet's thousands of
        records, each walked twice, cost a few percent of the controller's time)."""
        return mask_all(value, self.redact) if self._secrets else value

    def redact_file(self, path: Path) -> None:
        """Masks the secrets in a file (a model's log), rewriting it only when one is
        there; read line by line, so a big log costs no memory."""
        if not self._secrets or not path.exists():
            return
        with path.open(encoding="utf-8", errors="surrogateescape") as handle:
            if not any(secret in line for line in handle for secret in self._secrets):
                return
        masked = path.with_name(path.name + ".masked")
        with (
            path.open(encoding="utf-8", errors="surrogateescape") as source,
            masked.open("w", encoding="utf-8", errors="surrogateescape") as out,
        ):
            for line in source:
                out.write(self.redact(line))
        masked.replace(path)


def load_credentials(root: Path, environ: Mapping[str, str] | None = None) -> Credentials:
    """credential.json at the tree's root (none is fine), with the dockerhub entry
    overridden by MAD_DOCKERHUB_USER / _PASSWORD / _REPO and the data entries by the
    environment variables of their names. Entries are checked when used, not here."""
    environ = os.environ if environ is None else environ
    path = root / "credential.json"
    entries: dict[str, Any] = {}
    if path.exists():
        data = read_json(path)
        if not isinstance(data, dict):
            raise MadError(f"{path}: expected an object of named credentials")
        entries = {str(key): value for key, value in data.items()}
    hub = {key: environ[name] for key, name in DOCKERHUB_ENV.items() if environ.get(name)}
    if hub:
        current = entries.get(DOCKERHUB)
        entries[DOCKERHUB] = {**(current if isinstance(current, dict) else {}), **hub}
    overrides = {name: environ[name] for name in DATA_ENTRIES if environ.get(name)}
    return Credentials(entries, str(path), overrides)

"""Registry credentials chosen the way the kubelet chooses them.

archaudit must see an image with the credentials the kubelet would pull it with, or it would report a
private image as unresolvable (too few credentials) or vouch for an image the node cannot pull (too many).
So this module copies the kubelet's keyring (pkg/credentialprovider): which fields of a docker config it
reads, how a config key is normalized, how keys match an image, and in which order credentials are tried.

It contains no I/O: inputs are the bytes, strings or API-shaped dicts the callers already hold.
Secret material never leaves a `Credential`: its repr shows an irreversible identity, and errors name
the secret or the config key, never a username, password or `auth` value.
"""

from __future__ import annotations

import base64
import binascii
import fnmatch
import hashlib
import json
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any, Protocol
from urllib.parse import urlsplit

from archaudit.core.errors import CredentialsError

__all__ = [
    "Credential",
    "CredentialsError",
    "Keyring",
    "decode_auth",
    "keyring_from_docker_config",
    "keyring_from_dockercfg",
    "keyring_from_secret",
]

DOCKER_CONFIG_JSON_TYPE = "kubernetes.io/dockerconfigjson"
DOCKERCFG_TYPE = "kubernetes.io/dockercfg"
_DOCKER_CONFIG_JSON_KEY = ".dockerconfigjson"
_DOCKERCFG_KEY = ".dockercfg"

# The key `docker login` writes for Docker Hub; the kubelet normalizes it (and "index.docker.io") to this.
_DOCKER_HUB_KEY = "index.docker.io"


class _Image(Protocol):
    """What key matching needs of an image: `archaudit.core.reference.ImageReference` has it."""

    @property
    def registry(self) -> str: ...

    @property
    def repository(self) -> str: ...


@dataclass(frozen=True, repr=False)
class Credential:
    """A username and password for one registry (a token from `auth` decodes to the same pair)."""

    username: str
    password: str

    @property
    def identity(self) -> str:
        """A stable id for cache keys and logs that cannot be turned back into the secret."""
        digest = hashlib.sha256(f"{self.username}\0{self.password}".encode()).hexdigest()
        return f"cred:{digest[:16]}"

    def __repr__(self) -> str:
        return f"Credential({self.identity})"

    __str__ = __repr__


@dataclass(frozen=True)
class _Key:
    """A config key as the kubelet keeps it: host labels, port and path prefix, matched against images."""

    text: str  # normalized, e.g. "registry.example.com:5000/team"; also the sort key
    labels: tuple[str, ...]
    port: str
    path: str

    @classmethod
    def parse(cls, raw: str) -> _Key | None:
        """Normalize a config key: drop the scheme and a leading /v1/ or /v2/ (kubelet's Add)."""
        value = raw if raw.startswith(("http://", "https://")) else "https://" + raw
        try:
            parsed = urlsplit(value)
            parsed.port  # noqa: B018 -- raises on a malformed port, as Go's url.Parse refuses it
        except ValueError:
            return None
        host = parsed.netloc.rpartition("@")[2]
        path = parsed.path
        if path.startswith(("/v1/", "/v2/")):
            path = path[3:]
        text = host + path if path not in ("", "/") else host
        return cls.of(text)

    @classmethod
    def of(cls, text: str) -> _Key:
        """A normalized key or image name split as the kubelet's URLsMatch splits it."""
        host, _, rest = text.partition("/")
        name, port = _split_host_port(host)
        return cls(text=text, labels=tuple(name.split(".")), port=port, path="/" + rest if rest else "")

    def matches(self, image: _Key) -> bool:
        """`*` is one whole label or part of one; label counts and ports match; the path is a prefix."""
        return (
            self.port == image.port
            and len(self.labels) == len(image.labels)
            and image.path.startswith(self.path)
            and all(
                fnmatch.fnmatchcase(part, glob) for glob, part in zip(self.labels, image.labels, strict=True)
            )
        )


def _split_host_port(host: str) -> tuple[str, str]:
    """Go's net.SplitHostPort, falling back to (host, "") as the kubelet does when it fails."""
    if host.startswith("["):
        end = host.find("]")
        if end != -1 and host[end + 1 : end + 2] == ":":
            return host[1:end], host[end + 2 :]
        return host, ""
    if host.count(":") == 1:
        name, _, port = host.partition(":")
        return name, port
    return host, ""


def _is_docker_hub(image: _Image) -> bool:
    return image.registry in ("docker.io", _DOCKER_HUB_KEY)


class Keyring:
    """Credentials by registry key, looked up per image as the kubelet does.

    A keyring built from one config sorts its keys in reverse order, so that a longer key (a path, a port)
    comes before a shorter one it extends: the most specific credentials are tried first. Adding keyrings
    keeps them apart as the kubelet's union keyring does: every match of the left one, then the right one's.
    """

    def __init__(self, entries: Iterable[tuple[str, Credential]] = ()) -> None:
        by_key: dict[str, list[Credential]] = {}
        keys: dict[str, _Key] = {}
        for raw, credential in entries:
            key = _Key.parse(raw)
            if key is None:
                continue  # the kubelet logs and skips a key it cannot parse; so do we, silently
            keys.setdefault(key.text, key)
            by_key.setdefault(key.text, []).append(credential)
        order = sorted(keys, reverse=True)
        ring = tuple((keys[text], tuple(by_key[text])) for text in order)
        self._rings: tuple[tuple[tuple[_Key, tuple[Credential, ...]], ...], ...] = (ring,) if ring else ()

    @classmethod
    def _union(cls, rings: tuple[tuple[tuple[_Key, tuple[Credential, ...]], ...], ...]) -> Keyring:
        keyring = cls()
        keyring._rings = rings
        return keyring

    def lookup(self, image: _Image) -> list[Credential]:
        """Every credential whose key matches `image`, most specific key first, without repeats."""
        found: list[Credential] = []
        for ring in self._rings:
            found.extend(_lookup_one(ring, image))
        return list(dict.fromkeys(found))

    def __add__(self, other: Keyring) -> Keyring:
        if not isinstance(other, Keyring):
            return NotImplemented
        return Keyring._union(self._rings + other._rings)

    def __len__(self) -> int:
        return sum(len(creds) for ring in self._rings for _, creds in ring)

    def __iter__(self) -> Iterator[str]:
        """The normalized keys, in lookup order (for diagnostics: keys are not secret)."""
        return (key.text for ring in self._rings for key, _ in ring)

    def __repr__(self) -> str:
        return f"Keyring({len(self)} credentials)"


def _lookup_one(ring: tuple[tuple[_Key, tuple[Credential, ...]], ...], image: _Image) -> list[Credential]:
    target = _Key.of(f"{image.registry}/{image.repository}")
    found = [cred for key, creds in ring if key.matches(target) for cred in creds]
    if found or not _is_docker_hub(image):
        return found
    # The kubelet falls back to the key `docker login` writes for Docker Hub only when nothing else matched.
    return [cred for key, creds in ring if key.text == _DOCKER_HUB_KEY for cred in creds]


def decode_auth(value: str, where: str) -> tuple[str, str]:
    """`auth` is base64("user:pass"), padded or not; split at the first colon. `where` names it in errors."""
    text = value.strip()
    try:
        decoded = base64.b64decode(text + "=" * (-len(text) % 4), validate=True).decode()
    except (binascii.Error, UnicodeDecodeError):
        raise CredentialsError(f"{where}: `auth` is not base64") from None
    username, colon, password = decoded.partition(":")
    if not colon:
        raise CredentialsError(f"{where}: `auth` must be base64 of username:password")
    return username, password


def _entry(key: str, value: Any) -> Credential | None:
    """One config entry -> its credential; `auth` wins over username/password, other fields are ignored."""
    if not isinstance(value, Mapping):
        raise CredentialsError(f"entry {key!r} is not an object")
    fields: dict[str, str] = {}
    for name in ("username", "password", "auth"):
        field = value.get(name)
        if field is not None and not isinstance(field, str):
            raise CredentialsError(f"entry {key!r}: `{name}` is not a string")
        fields[name] = field or ""
    username, password = fields["username"], fields["password"]
    if fields["auth"]:
        username, password = decode_auth(fields["auth"], f"entry {key!r}")
    if not username and not password:
        return None  # nothing to send: the same as an anonymous pull, which is tried anyway
    return Credential(username, password)


def _load(data: bytes | str | Mapping[str, Any], what: str) -> Mapping[str, Any]:
    if isinstance(data, Mapping):
        return data
    try:
        loaded = json.loads(data)
    except json.JSONDecodeError as e:
        # position only: the document's text may be secret
        raise CredentialsError(f"{what} is not valid JSON (line {e.lineno}, column {e.colno})") from None
    except UnicodeDecodeError:
        raise CredentialsError(f"{what} is not UTF-8 text") from None
    if not isinstance(loaded, Mapping):
        raise CredentialsError(f"{what} is not a JSON object")
    return loaded


def _keyring(entries: Mapping[str, Any]) -> Keyring:
    pairs: list[tuple[str, Credential]] = []
    for key, value in entries.items():
        credential = _entry(str(key), value)
        if credential is not None:
            pairs.append((str(key), credential))
    return Keyring(pairs)


def keyring_from_docker_config(data: bytes | str | Mapping[str, Any]) -> Keyring:
    """A config.json or `.dockerconfigjson`: `{"auths": {KEY: {...}}}` (credential helpers are not run)."""
    document = _load(data, "docker config")
    auths = document.get("auths")
    if auths is None:
        return Keyring()
    if not isinstance(auths, Mapping):
        raise CredentialsError('docker config: "auths" is not an object')
    return _keyring(auths)


def keyring_from_dockercfg(data: bytes | str | Mapping[str, Any]) -> Keyring:
    """A legacy `.dockercfg`: the map of keys to entries, without "auths"."""
    return _keyring(_load(data, "dockercfg"))


def keyring_from_secret(secret: Mapping[str, Any]) -> Keyring:
    """The credentials of a pull secret as the API returns it (`type`, base64 `data`).

    Secrets of other types, or without the data key, give an empty keyring, as the kubelet ignores them.
    A pull secret whose data cannot be read raises `CredentialsError` naming the secret (the kubelet
    fails the pull then; callers usually log the message and go on without that secret).
    """
    kind = secret.get("type")
    data_key = {DOCKER_CONFIG_JSON_TYPE: _DOCKER_CONFIG_JSON_KEY, DOCKERCFG_TYPE: _DOCKERCFG_KEY}.get(
        str(kind)
    )
    data = secret.get("data") or {}
    if data_key is None or not isinstance(data, Mapping) or not data.get(data_key):
        return Keyring()
    name = _secret_name(secret)
    encoded = data[data_key]
    try:
        raw = base64.b64decode(encoded, validate=True) if isinstance(encoded, str | bytes) else None
    except (binascii.Error, ValueError):
        raw = None
    if raw is None:
        raise CredentialsError(f"secret {name}: {data_key} is not base64")
    try:
        if kind == DOCKER_CONFIG_JSON_TYPE:
            return keyring_from_docker_config(raw)
        return keyring_from_dockercfg(raw)
    except CredentialsError as e:
        raise CredentialsError(f"secret {name}: {e}") from None


def _secret_name(secret: Mapping[str, Any]) -> str:
    metadata = secret.get("metadata") or {}
    if not isinstance(metadata, Mapping):
        return "(unnamed)"
    namespace, name = metadata.get("namespace"), metadata.get("name")
    if name and namespace:
        return f"{namespace}/{name}"
    return str(name or "(unnamed)")

"""Where an image is fetched from: k3s `registries.yaml` mirrors, rewrites and per-host configs.

A node configured with mirrors never talks to docker.io for docker.io images (or talks to it last), and
a mirror may hold an image under another name (rewrites). archaudit must ask the same hosts, in the same
order, with the same TLS settings and credentials, or it would judge an image the node never sees. So
this module reads the very file k3s nodes read and turns an image reference into the ordered list of
endpoints containerd would try: each mirror in order, then the registry itself (the default endpoint,
to which rewrites never apply).

Pure: the file is read by `archaudit.adapters.registry.files.registries_from_file`.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol
from urllib.parse import quote, urlsplit

import yaml

from archaudit.core.credentials import Credential, CredentialsError, decode_auth

__all__ = ["EMPTY", "Endpoint", "RegistriesConfig", "TLSConfig"]

_DOCKER_HUB = "docker.io"
_DOCKER_HUB_HOST = "registry-1.docker.io"  # where containerd sends docker.io requests
_DOCKER_HUB_ALIASES = frozenset({_DOCKER_HUB_HOST, "index.docker.io"})  # endpoints that *are* the default
_WILDCARD = "*"
_API_PATH = "/v2"


class _Image(Protocol):
    @property
    def registry(self) -> str: ...

    @property
    def repository(self) -> str: ...


@dataclass(frozen=True)
class TLSConfig:
    """`configs.<host>.tls`: files are paths on the machine archaudit runs on."""

    ca_file: str = ""
    cert_file: str = ""
    key_file: str = ""
    insecure_skip_verify: bool = False


@dataclass(frozen=True)
class Endpoint:
    """One place to ask for an image, with everything needed to ask it."""

    scheme: str  # "https" | "http"
    host: str  # "mirror.example:5000": host[:port], the key of `configs`
    repository: str  # the path to request, after a mirror's rewrite
    is_mirror: bool
    ns: str | None  # the original registry, sent as ?ns= to mirrors; None for the default endpoint
    tls: TLSConfig
    credential: Credential | None  # from configs[host].auth
    path: str = _API_PATH  # the API root: "/v2", or an endpoint URL's own path (k3s override_path)

    @property
    def base_url(self) -> str:
        """scheme://host and any path before /v2: append "/v2/..." to it, or use `api_url`."""
        prefix = self.path.removesuffix(_API_PATH) if self.path.endswith(_API_PATH) else self.path
        return f"{self.scheme}://{self.host}{prefix}"

    @property
    def api_url(self) -> str:
        """The API root requests are made under, e.g. https://registry-1.docker.io/v2."""
        return f"{self.scheme}://{self.host}{self.path}"

    def url(self, kind: str, locator: str) -> str:
        """`kind` is "manifests" or "blobs"; mirrors get ?ns=<registry> as containerd sends it."""
        url = f"{self.api_url}/{self.repository}/{kind}/{locator}"
        if self.is_mirror and self.ns:
            url += "?ns=" + quote(self.ns, safe="")
        return url

    def __repr__(self) -> str:
        mirror = f" mirror of {self.ns}" if self.is_mirror else ""
        return f"Endpoint({self.api_url}/{self.repository}{mirror})"


@dataclass(frozen=True)
class _HostConfig:
    tls: TLSConfig = TLSConfig()
    credential: Credential | None = None


@dataclass(frozen=True)
class _Mirror:
    endpoints: tuple[tuple[str, str, str], ...]  # (scheme, host, path) in order
    rewrites: tuple[tuple[re.Pattern[str], str], ...]


@dataclass(frozen=True)
class RegistriesConfig:
    """The mirrors and configs of one registries.yaml; `EMPTY` when there is none."""

    mirrors: Mapping[str, _Mirror] = field(default_factory=dict)
    # None: an entry present but empty, which still hides the "*" entry (k3s semantics)
    configs: Mapping[str, _HostConfig | None] = field(default_factory=dict)

    @classmethod
    def load(cls, text: str) -> RegistriesConfig:
        """Parse registries.yaml text; a ValueError names the first part with the wrong shape."""
        try:
            document = yaml.safe_load(text)
        except yaml.YAMLError as e:
            where = getattr(e, "problem_mark", None)
            at = f" at line {where.line + 1}" if where is not None else ""
            raise ValueError(f"registries.yaml is not valid YAML{at}") from None
        if document is None:
            return cls()
        document = _mapping(document, "registries.yaml")
        unknown = set(document) - {"mirrors", "configs"}
        if unknown:
            raise ValueError(f"registries.yaml: unknown top-level key(s) {sorted(map(str, unknown))}")
        mirrors = _mapping(document.get("mirrors") or {}, "mirrors")
        configs = _mapping(document.get("configs") or {}, "configs")
        return cls(
            mirrors={str(name): _parse_mirror(str(name), value) for name, value in mirrors.items()},
            configs={str(host): _parse_host_config(str(host), value) for host, value in configs.items()},
        )

    def endpoints_for(self, ref: _Image, insecure: Collection[str] = ()) -> list[Endpoint]:
        """The endpoints containerd tries for `ref`, in order: its mirrors (or "*"'s), then the default."""
        registry = ref.registry
        default = self._default_endpoint(ref, insecure)
        mirror = self.mirrors.get(registry) or self.mirrors.get(_WILDCARD)
        endpoints: list[Endpoint] = []
        if mirror is not None:
            repository = _rewrite(mirror.rewrites, ref.repository)
            for scheme, host, path in mirror.endpoints:
                if _is_default(registry, scheme, host, path):
                    continue  # k3s ignores a mirror endpoint that is the default: it comes last, unrewritten
                config = self._config(host)
                endpoints.append(
                    Endpoint(scheme, host, repository, True, registry, config.tls, config.credential, path)
                )
        endpoints.append(default)
        return endpoints

    def _default_endpoint(self, ref: _Image, insecure: Collection[str]) -> Endpoint:
        registry = ref.registry
        host = _DOCKER_HUB_HOST if registry == _DOCKER_HUB else registry
        scheme = "http" if _is_insecure(registry, insecure) else "https"
        config = self._config(host, registry)
        return Endpoint(scheme, host, ref.repository, False, None, config.tls, config.credential)

    def _config(self, *hosts: str) -> _HostConfig:
        """configs[host] for the first host listed there, else configs["*"]; an empty entry means none."""
        for host in hosts:
            if host in self.configs:
                return self.configs[host] or _HostConfig()
        return self.configs.get(_WILDCARD) or _HostConfig()


EMPTY = RegistriesConfig()


def _mapping(value: Any, where: str) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise ValueError(f"{where}: expected a mapping, got {type(value).__name__}")
    return value


def _parse_endpoint(url: str, where: str) -> tuple[str, str, str]:
    """An endpoint URL -> (scheme, host, API path); no scheme means https, no path means /v2."""
    text = url.strip()
    if "://" not in text:
        text = "https://" + text
    try:
        parts = urlsplit(text)
        parts.port  # noqa: B018 -- raises on a malformed port
    except ValueError:
        raise ValueError(f"{where}: {url!r} is not a URL") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"{where}: {url!r} must be http:// or https:// with a host")
    path = parts.path.rstrip("/")
    return parts.scheme, parts.netloc.rpartition("@")[2], path or _API_PATH


def _parse_mirror(name: str, value: Any) -> _Mirror:
    where = f"mirrors.{name}"
    body = _mapping(value or {}, where)
    endpoints = body.get("endpoint") or []
    if isinstance(endpoints, str) or not isinstance(endpoints, list):
        raise ValueError(f"{where}.endpoint: expected a list of URLs")
    parsed = []
    for i, url in enumerate(endpoints):
        if not isinstance(url, str):
            raise ValueError(f"{where}.endpoint[{i}]: expected a URL string")
        parsed.append(_parse_endpoint(url, f"{where}.endpoint[{i}]"))
    rewrites = []
    for pattern, replacement in _mapping(body.get("rewrite") or {}, f"{where}.rewrite").items():
        if not isinstance(replacement, str):
            raise ValueError(f"{where}.rewrite[{pattern!r}]: expected a string")
        try:
            rewrites.append((re.compile(str(pattern)), replacement))
        except re.error as e:
            raise ValueError(f"{where}.rewrite: {pattern!r} is not a regular expression: {e}") from None
    return _Mirror(tuple(parsed), tuple(rewrites))


def _parse_host_config(host: str, value: Any) -> _HostConfig | None:
    where = f"configs.{host}"
    if value is None:
        return None
    body = _mapping(value, where)
    tls_body = _mapping(body.get("tls") or {}, f"{where}.tls")
    tls = TLSConfig(
        ca_file=_string(tls_body, "ca_file", f"{where}.tls"),
        cert_file=_string(tls_body, "cert_file", f"{where}.tls"),
        key_file=_string(tls_body, "key_file", f"{where}.tls"),
        insecure_skip_verify=_boolean(tls_body, "insecure_skip_verify", f"{where}.tls"),
    )
    auth = _mapping(body.get("auth") or {}, f"{where}.auth")
    return _HostConfig(tls=tls, credential=_credential(auth, f"{where}.auth"))


def _credential(auth: Mapping[str, Any], where: str) -> Credential | None:
    username = _string(auth, "username", where)
    password = _string(auth, "password", where)
    token = _string(auth, "auth", where)
    if token:
        try:
            username, password = decode_auth(token, where)
        except CredentialsError:
            raise ValueError(f"{where}.auth: must be base64 of username:password") from None
    if not username and not password:
        return None
    return Credential(username, password)


def _string(body: Mapping[str, Any], key: str, where: str) -> str:
    value = body.get(key)
    if value is None:
        return ""
    if not isinstance(value, str | int) or isinstance(value, bool):
        raise ValueError(f"{where}.{key}: expected a string")
    return str(value)


def _boolean(body: Mapping[str, Any], key: str, where: str) -> bool:
    value = body.get(key, False)
    if not isinstance(value, bool):
        raise ValueError(f"{where}.{key}: expected true or false")
    return value


def _is_default(registry: str, scheme: str, host: str, path: str) -> bool:
    if scheme != "https" or path != _API_PATH:
        return False
    return host in _DOCKER_HUB_ALIASES if registry == _DOCKER_HUB else host == registry


def _is_insecure(registry: str, insecure: Collection[str]) -> bool:
    """An entry "host:port" names that registry; a bare "host" names it on every port."""
    hostname = registry.rsplit(":", 1)[0] if registry.count(":") == 1 else registry
    return registry in insecure or hostname in insecure


def _rewrite(rewrites: tuple[tuple[re.Pattern[str], str], ...], repository: str) -> str:
    """The first rewrite whose pattern matches renames the repository (Go replacement syntax: $1, ${name})."""
    for pattern, replacement in rewrites:
        if pattern.search(repository):
            return pattern.sub(_go_expander(replacement), repository)
    return repository


_GO_REFERENCE = re.compile(r"\$(?:\$|\{(\w+)\}|(\w+))")


def _go_expander(template: str) -> Callable[[re.Match[str]], str]:
    """Go's Regexp.Expand: `$1`, `${1}`, `$name`, `$$`; an unknown group expands to nothing."""

    def expand(match: re.Match[str]) -> str:
        def reference(ref: re.Match[str]) -> str:
            name = ref.group(1) or ref.group(2)
            if name is None:
                return "$"
            try:
                group = match.group(int(name) if name.isdigit() else name)
            except IndexError:  # no such group
                return ""
            return group or ""

        return _GO_REFERENCE.sub(reference, template)

    return expand

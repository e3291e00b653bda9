"""A real registry for tests: Debian's docker-registry (CNCF distribution 2.8) on a loopback port.

Three setups, because clients break differently on each:
  plain  HTTP, anonymous;
  basic  TLS with a TestCA certificate and htpasswd (bcrypt) Basic auth;
  token  HTTP with `auth: token`: a Bearer flow against a small token issuer written here, which signs
         JWTs with an EC key whose self-signed certificate is the registry's rootcertbundle (the
         token header carries the certificate as `x5c`, which distribution verifies against it).

Images are pushed through the registry's HTTP API only (blob POST+PUT, manifest PUT), never through
a storage back door, so what the tests read is exactly what a registry serves. `seed_samples()` pushes
the sample images the integration tests and the demo use.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import datetime as dt
import hashlib
import json
import os
import ssl
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import bcrypt
import yaml
from aiohttp import web
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
from cryptography.x509.oid import NameOID

from tests.harness.certs import TestCA
from tests.harness.procs import Service, free_port, wait_until

REGISTRY_BIN = "/usr/bin/docker-registry"

MEDIA_OCI_INDEX = "application/vnd.oci.image.index.v1+json"
MEDIA_DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
MEDIA_OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
MEDIA_DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
MEDIA_OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
MEDIA_DOCKER_CONFIG = "application/vnd.docker.container.image.v1+json"
MEDIA_OCI_LAYER = "application/vnd.oci.image.layer.v1.tar+gzip"
MEDIA_DOCKER_LAYER = "application/vnd.docker.image.rootfs.diff.tar.gzip"
ALL_MANIFEST_TYPES = ", ".join(
    [MEDIA_OCI_INDEX, MEDIA_DOCKER_LIST, MEDIA_OCI_MANIFEST, MEDIA_DOCKER_MANIFEST]
)

USERNAME = "alice"
PASSWORD = "wonder land:pass"  # a space and a colon: Basic and form encodings must both cope
SERVICE = "archaudit-test-registry"
ISSUER = "archaudit-test-issuer"


def sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


# --------------------------------------------------------------------------------------------------
# An aiohttp app in a background thread (token issuer, fault proxy): usable from sync and async tests.


class BackgroundApp:
    """Runs an aiohttp Application on 127.0.0.1:<free port> in its own thread and event loop.

    `handler_cancellation`: a handler is cancelled the moment its client hangs up (aiohttp's option),
    instead of running on until it next looks at the connection.
    """

    def __init__(self, app: web.Application, name: str, *, handler_cancellation: bool = False) -> None:
        self.app = app
        self.name = name
        self.handler_cancellation = handler_cancellation
        self.port = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._runner: web.AppRunner | None = None
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.port}"

    def _run(self) -> None:
        loop = asyncio.new_event_loop()
        self._loop = loop
        try:
            loop.run_until_complete(self._start())
        except BaseException as e:
            self._error = e
            self._ready.set()
            return
        self._ready.set()
        loop.run_forever()
        loop.run_until_complete(self._cleanup())
        loop.close()

    async def _start(self) -> None:
        self._runner = web.AppRunner(
            self.app, access_log=None, handler_cancellation=self.handler_cancellation
        )
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        server = site._server
        assert isinstance(server, asyncio.Server)
        self.port = int(server.sockets[0].getsockname()[1])

    async def _cleanup(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    def start(self) -> BackgroundApp:
        self._thread.start()
        if not self._ready.wait(timeout=30):
            raise TimeoutError(f"{self.name} did not start within 30s")
        if self._error is not None:
            raise RuntimeError(f"{self.name} failed to start: {self._error!r}")
        return self

    def stop(self) -> None:
        if self._loop is not None and self._thread.is_alive():
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(timeout=30)


# --------------------------------------------------------------------------------------------------
# Token issuer (the `auth: token` realm)


@dataclass
class TokenRequest:
    method: str
    service: str
    scope: str
    user: str | None  # None = anonymous


@dataclass
class TokenIssuer:
    """A Docker token-auth realm: POST (OAuth2 password grant) and GET (Basic or anonymous).

    Knobs for the client's fallbacks: `post_status` answers POSTs with that status (GCR/GAR say 404,
    ACR 400), `token_field` picks "token", "access_token" or "both" (the two differing: the client
    must prefer access_token), `anonymous_prefix` repositories anyone may pull, `expires_in`.
    """

    directory: Path
    users: Mapping[str, str] = field(default_factory=lambda: {USERNAME: PASSWORD})
    anonymous_prefix: str = "public/"
    post_status: int | None = None
    token_field: str = "both"
    expires_in: int = 300
    requests: list[TokenRequest] = field(default_factory=list)
    _server: BackgroundApp | None = None

    def __post_init__(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        self._key = ec.generate_private_key(ec.SECP256R1())
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, ISSUER)])
        now = time.time()
        self._cert = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(self._key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(dt.datetime.fromtimestamp(now - 300, dt.UTC))
            .not_valid_after(dt.datetime.fromtimestamp(now + 2 * 86400, dt.UTC))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(self._key, hashes.SHA256())
        )
        self.bundle_path = self.directory / "token-issuer.crt"
        self.bundle_path.write_bytes(self._cert.public_bytes(serialization.Encoding.PEM))
        self._x5c = base64.b64encode(self._cert.public_bytes(serialization.Encoding.DER)).decode()

    # -- JWT

    def mint(self, subject: str, access: list[dict[str, Any]], *, lifetime: int | None = None) -> str:
        now = int(time.time())
        header = {"typ": "JWT", "alg": "ES256", "x5c": [self._x5c]}
        claims = {
            "iss": ISSUER,
            "sub": subject,
            "aud": SERVICE,
            "exp": now + (lifetime if lifetime is not None else self.expires_in),
            "nbf": now - 5,
            "iat": now,
            "jti": uuid.uuid4().hex,
            "access": access,
        }
        signing_input = f"{_b64url(json.dumps(header).encode())}.{_b64url(json.dumps(claims).encode())}"
        der = self._key.sign(signing_input.encode(), ec.ECDSA(hashes.SHA256()))
        r, s = decode_dss_signature(der)  # JWS ES256 wants raw r||s, not DER
        return f"{signing_input}.{_b64url(r.to_bytes(32, 'big') + s.to_bytes(32, 'big'))}"

    def push_token(self, repository: str) -> str:
        return self.mint(USERNAME, [{"type": "repository", "name": repository, "actions": ["pull", "push"]}])

    def _grant(self, user: str | None, scope: str) -> list[dict[str, Any]]:
        parts = scope.split(":")
        if len(parts) != 3 or parts[0] != "repository":
            return []
        _, name, _actions = parts
        if user is None and not name.startswith(self.anonymous_prefix):
            return []  # like Docker Hub: an anonymous token that grants nothing
        return [{"type": "repository", "name": name, "actions": ["pull"]}]

    def _answer(self, user: str | None, scope: str) -> web.Response:
        token = self.mint(user or "", self._grant(user, scope))
        body: dict[str, Any] = {"expires_in": self.expires_in, "issued_at": "2024-01-01T00:00:00Z"}
        if self.token_field in ("token", "both"):
            # with "both" the plain `token` is garbage: a client that prefers it fails visibly
            body["token"] = token if self.token_field == "token" else "not-the-access-token"
        if self.token_field in ("access_token", "both"):
            body["access_token"] = token
        return web.json_response(body)

    def _check(self, user: str | None, password: str | None) -> bool:
        return user is not None and self.users.get(user) == password

    async def _get(self, request: web.Request) -> web.Response:
        service = request.query.get("service", "")
        scope = request.query.get("scope", "")
        user: str | None = None
        header = request.headers.get("Authorization", "")
        if header.lower().startswith("basic "):
            raw = base64.b64decode(header[6:]).decode()
            name, _, password = raw.partition(":")
            if not self._check(name, password):
                self.requests.append(TokenRequest("GET", service, scope, name))
                return web.json_response({"details": "bad credentials"}, status=401)
            user = name
        self.requests.append(TokenRequest("GET", service, scope, user))
        return self._answer(user, scope)

    async def _post(self, request: web.Request) -> web.Response:
        form = await request.post()
        service, scope = str(form.get("service", "")), str(form.get("scope", ""))
        user = str(form.get("username", "")) or None
        self.requests.append(TokenRequest("POST", service, scope, user))
        if self.post_status is not None:
            return web.Response(status=self.post_status, text="no POST here")
        if form.get("grant_type") != "password" or not self._check(user, str(form.get("password"))):
            return web.json_response({"error": "invalid_grant"}, status=401)
        return self._answer(user, scope)

    def start(self) -> TokenIssuer:
        app = web.Application()
        app.router.add_get("/token", self._get)
        app.router.add_post("/token", self._post)
        self._server = BackgroundApp(app, "token-issuer").start()
        return self

    @property
    def realm(self) -> str:
        assert self._server is not None
        return f"http://{self._server.host}/token"

    def stop(self) -> None:
        if self._server is not None:
            self._server.stop()


# --------------------------------------------------------------------------------------------------
# The registry process


@dataclass
class Registry:
    """One running docker-registry. `host` is "127.0.0.1:PORT", as image references name it."""

    setup: str
    host: str
    scheme: str
    service: Service
    ca_file: Path | None = None
    issuer: TokenIssuer | None = None
    username: str | None = None
    password: str | None = None

    @property
    def base_url(self) -> str:
        return f"{self.scheme}://{self.host}"

    def ssl_context(self) -> ssl.SSLContext | None:
        if self.ca_file is None:
            return None
        return ssl.create_default_context(cafile=str(self.ca_file))

    def pusher(self) -> Pusher:
        return Pusher(self)

    def ref(self, repository: str, locator: str) -> str:
        sep = "@" if locator.startswith("sha256:") else ":"
        return f"{self.host}/{repository}{sep}{locator}"

    def registries_yaml(self, path: Path, *, with_credentials: bool = True) -> Path:
        """A k3s registries.yaml that trusts this registry's CA (and, optionally, logs in)."""
        config: dict[str, Any] = {}
        if self.ca_file is not None:
            config["tls"] = {"ca_file": str(self.ca_file)}
        if with_credentials and self.username is not None:
            config["auth"] = {"username": self.username, "password": self.password}
        path.write_text(yaml.safe_dump({"configs": {self.host: config}} if config else {}))
        return path

    def docker_config(self, path: Path) -> Path:
        """A docker config.json with this registry's credentials."""
        assert self.username is not None
        assert self.password is not None
        auth = base64.b64encode(f"{self.username}:{self.password}".encode()).decode()
        path.write_text(json.dumps({"auths": {self.host: {"auth": auth}}}))
        return path

    def stop(self) -> None:
        self.service.stop()
        if self.issuer is not None:
            self.issuer.stop()


def _write_config(
    directory: Path, port: int, auth: dict[str, Any] | None, tls: dict[str, str] | None
) -> Path:
    http: dict[str, Any] = {
        "addr": f"127.0.0.1:{port}",
        "secret": uuid.uuid4().hex,
        "headers": {"X-Content-Type-Options": ["nosniff"]},
    }
    if tls:
        http["tls"] = tls
    config: dict[str, Any] = {
        "version": 0.1,
        "log": {"level": "info", "accesslog": {"disabled": False}, "formatter": "text"},
        "storage": {
            "filesystem": {"rootdirectory": str(directory / "data")},
            "delete": {"enabled": True},
            "cache": {"blobdescriptor": "inmemory"},
        },
        "http": http,
        "health": {"storagedriver": {"enabled": False}},
    }
    if auth:
        config["auth"] = auth
    path = directory / "config.yml"
    path.write_text(yaml.safe_dump(config))
    return path


def _wait_ready(registry: Registry) -> None:
    def answers() -> bool:
        req = urllib.request.Request(f"{registry.base_url}/v2/")
        try:
            with urllib.request.urlopen(req, timeout=2, context=registry.ssl_context()) as resp:
                return int(resp.status) == 200
        except urllib.error.HTTPError as e:
            return e.code == 401  # up, and asking for credentials
        except OSError:
            return False

    wait_until(
        answers,
        timeout=30,
        what=f"docker-registry ({registry.setup}) on {registry.host}",
        service=registry.service,
    )


def start_registry(
    setup: str,
    directory: Path,
    *,
    ca: TestCA | None = None,
    users: Mapping[str, str] | None = None,
    dns: tuple[str, ...] = (),
) -> Registry:
    """Start docker-registry in `setup` ("plain", "basic" or "token") under `directory`.

    "basic" only: `users` replaces the one htpasswd user (the first one pushes), and `dns` adds names
    to the serving certificate (a cloud registry's name, reached through a test host mapping).
    """
    directory.mkdir(parents=True, exist_ok=True)
    port = free_port()
    host = f"127.0.0.1:{port}"
    auth: dict[str, Any] | None = None
    tls: dict[str, str] | None = None
    issuer: TokenIssuer | None = None
    ca_file: Path | None = None
    username = password = None
    scheme = "http"
    if setup == "basic":
        ca = ca or TestCA(directory / "pki")
        pair = ca.issue(f"registry-{port}", dns=("localhost", *dns))
        tls = {"certificate": str(pair.cert), "key": str(pair.key)}
        ca_file = ca.cert_path
        scheme = "https"
        accounts = dict(users or {USERNAME: PASSWORD})
        # cost 4, the minimum: the registry checks the hash on every request
        lines = [
            f"{name}:{bcrypt.hashpw(secret.encode(), bcrypt.gensalt(rounds=4)).decode()}\n"
            for name, secret in accounts.items()
        ]
        htpasswd = directory / "htpasswd"
        htpasswd.write_text("".join(lines))
        auth = {"htpasswd": {"realm": "archaudit-test", "path": str(htpasswd)}}
        username, password = next(iter(accounts.items()))
    elif setup == "token":
        issuer = TokenIssuer(directory / "issuer").start()
        auth = {
            "token": {
                "realm": issuer.realm,
                "service": SERVICE,
                "issuer": ISSUER,
                "rootcertbundle": str(issuer.bundle_path),
            }
        }
        username, password = USERNAME, PASSWORD
    elif setup != "plain":
        raise ValueError(f"unknown registry setup {setup!r}")
    config = _write_config(directory, port, auth, tls)
    service = Service(f"docker-registry-{setup}", [REGISTRY_BIN, "serve", str(config)], directory)
    service.start()
    registry = Registry(setup, host, scheme, service, ca_file, issuer, username, password)
    try:
        _wait_ready(registry)
    except BaseException:
        registry.stop()
        raise
    return registry


@contextlib.contextmanager
def running_registry(setup: str, directory: Path) -> Iterator[Registry]:
    registry = start_registry(setup, directory)
    try:
        yield registry
    finally:
        registry.stop()


# --------------------------------------------------------------------------------------------------
# Pushing through the HTTP API


class PushError(RuntimeError):
    pass


class Pusher:
    """Pushes blobs and manifests with urllib: the test side stays independent of the client under test."""

    def __init__(self, registry: Registry) -> None:
        self.registry = registry
        self._ssl = registry.ssl_context()

    def _auth(self, repository: str) -> dict[str, str]:
        r = self.registry
        if r.setup == "basic":
            raw = f"{r.username}:{r.password}".encode()
            return {"Authorization": "Basic " + base64.b64encode(raw).decode()}
        if r.setup == "token":
            assert r.issuer is not None
            return {"Authorization": "Bearer " + r.issuer.push_token(repository)}
        return {}

    def _call(
        self,
        method: str,
        url: str,
        repository: str,
        *,
        data: bytes | None = None,
        headers: Mapping[str, str] | None = None,
        expect: tuple[int, ...] = (200, 201, 202),
    ) -> tuple[int, Mapping[str, str], bytes]:
        all_headers = {**self._auth(repository), **(headers or {})}
        req = urllib.request.Request(url, data=data, method=method, headers=all_headers)
        try:
            with urllib.request.urlopen(req, timeout=30, context=self._ssl) as resp:
                return int(resp.status), dict(resp.headers.items()), resp.read()
        except urllib.error.HTTPError as e:
            body = e.read()
            if e.code in expect:
                return e.code, dict(e.headers.items()), body
            raise PushError(f"{method} {url} -> {e.code}: {body[:500]!r}") from None

    def blob(self, repository: str, data: bytes) -> dict[str, Any]:
        """Monolithic upload (POST to open, PUT with the digest); returns the descriptor fields."""
        digest = sha256(data)
        base = self.registry.base_url
        _, headers, _ = self._call("POST", f"{base}/v2/{repository}/blobs/uploads/", repository, data=b"")
        location = headers.get("Location") or headers.get("location")
        if not location:
            raise PushError(f"no Location after opening an upload in {repository}")
        url = urllib.parse.urljoin(base + "/", location)
        url += ("&" if "?" in url else "?") + urllib.parse.urlencode({"digest": digest})
        self._call("PUT", url, repository, data=data, headers={"Content-Type": "application/octet-stream"})
        return {"digest": digest, "size": len(data)}

    def manifest(self, repository: str, reference: str, body: bytes, media_type: str) -> str:
        """PUT a manifest/index by tag or digest; returns its digest."""
        url = f"{self.registry.base_url}/v2/{repository}/manifests/{reference}"
        _, headers, _ = self._call("PUT", url, repository, data=body, headers={"Content-Type": media_type})
        digest = sha256(body)
        announced = headers.get("Docker-Content-Digest")
        if announced and announced != digest:
            raise PushError(f"registry stored {announced}, we computed {digest}")
        return digest

    def delete_manifest(self, repository: str, digest: str) -> None:
        url = f"{self.registry.base_url}/v2/{repository}/manifests/{digest}"
        self._call("DELETE", url, repository, expect=(202,))


# --------------------------------------------------------------------------------------------------
# Image builders


def image_config(os_: str, architecture: str, variant: str = "", **extra: Any) -> bytes:
    """A real-looking image config JSON (as docker/buildkit write them)."""
    config: dict[str, Any] = {
        "architecture": architecture,
        "os": os_,
        "config": {
            "Env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"],
            "Cmd": ["sh"],
        },
        "created": "2024-05-01T00:00:00Z",
        "history": [{"created": "2024-05-01T00:00:00Z", "created_by": "ADD rootfs.tar /"}],
        "rootfs": {"type": "layers", "diff_ids": ["sha256:" + hashlib.sha256(os.urandom(8)).hexdigest()]},
    }
    if variant:
        config["variant"] = variant
    config.update(extra)
    return json.dumps(config, indent=2).encode()


def _dump(doc: Mapping[str, Any]) -> bytes:
    return json.dumps(doc, indent=3).encode()  # registries serve bytes as pushed: any indentation


@dataclass(frozen=True)
class Pushed:
    """A manifest in the registry: its digest, media type and size (to reference it from an index)."""

    digest: str
    media_type: str
    size: int
    platform: Mapping[str, str] | None = None

    def descriptor(self, **extra: Any) -> dict[str, Any]:
        d: dict[str, Any] = {"mediaType": self.media_type, "digest": self.digest, "size": self.size}
        if self.platform is not None:
            d["platform"] = dict(self.platform)
        d.update(extra)
        return d


def push_image(
    pusher: Pusher,
    repository: str,
    os_: str,
    architecture: str,
    variant: str = "",
    *,
    oci: bool = True,
    tag: str | None = None,
    config: bytes | None = None,
) -> Pushed:
    """One single-platform image (config + one small random layer + manifest), by digest or tag."""
    config = config if config is not None else image_config(os_, architecture, variant)
    cfg = pusher.blob(repository, config)
    layer = pusher.blob(repository, os.urandom(64))
    media = MEDIA_OCI_MANIFEST if oci else MEDIA_DOCKER_MANIFEST
    body = _dump(
        {
            "schemaVersion": 2,
            "mediaType": media,
            "config": {"mediaType": MEDIA_OCI_CONFIG if oci else MEDIA_DOCKER_CONFIG, **cfg},
            "layers": [{"mediaType": MEDIA_OCI_LAYER if oci else MEDIA_DOCKER_LAYER, **layer}],
        }
    )
    digest = pusher.manifest(repository, tag or sha256(body), body, media)
    platform = {"os": os_, "architecture": architecture}
    if variant:
        platform["variant"] = variant
    return Pushed(digest, media, len(body), platform)


def push_attestation(pusher: Pusher, repository: str, subject: Pushed) -> Pushed:
    """A buildkit-style attestation manifest (in-toto layer) for `subject`."""
    cfg = pusher.blob(repository, b"{}")
    statement = pusher.blob(repository, json.dumps({"_type": "https://in-toto.io/Statement/v0.1"}).encode())
    body = _dump(
        {
            "schemaVersion": 2,
            "mediaType": MEDIA_OCI_MANIFEST,
            "config": {"mediaType": MEDIA_OCI_CONFIG, **cfg},
            "layers": [
                {
                    "mediaType": "application/vnd.in-toto+json",
                    **statement,
                    "annotations": {"in-toto.io/predicate-type": "https://slsa.dev/provenance/v0.2"},
                }
            ],
        }
    )
    digest = pusher.manifest(repository, sha256(body), body, MEDIA_OCI_MANIFEST)
    return Pushed(digest, MEDIA_OCI_MANIFEST, len(body), {"os": "unknown", "architecture": "unknown"})


def push_index(
    pusher: Pusher,
    repository: str,
    children: list[dict[str, Any]],
    *,
    oci: bool = True,
    tag: str | None = None,
    with_media_type: bool = True,
) -> Pushed:
    media = MEDIA_OCI_INDEX if oci else MEDIA_DOCKER_LIST
    doc: dict[str, Any] = {"schemaVersion": 2}
    if with_media_type:
        doc["mediaType"] = media
    doc["manifests"] = children
    body = _dump(doc)
    digest = pusher.manifest(repository, tag or sha256(body), body, media)
    return Pushed(digest, media, len(body))


def push_artifact(pusher: Pusher, repository: str, tag: str) -> Pushed:
    """An OCI artifact (a Helm chart): config media type is not an image config."""
    cfg = pusher.blob(repository, b'{"name":"demo","version":"0.1.0"}')
    chart = pusher.blob(repository, os.urandom(64))
    body = _dump(
        {
            "schemaVersion": 2,
            "mediaType": MEDIA_OCI_MANIFEST,
            "config": {"mediaType": "application/vnd.cncf.helm.config.v1+json", **cfg},
            "layers": [{"mediaType": "application/vnd.cncf.helm.chart.content.v1.tar+gzip", **chart}],
        }
    )
    digest = pusher.manifest(repository, tag, body, MEDIA_OCI_MANIFEST)
    return Pushed(digest, MEDIA_OCI_MANIFEST, len(body))


@dataclass(frozen=True)
class Sample:
    """A seeded image: its reference (by tag) and what a correct resolver must find."""

    reference: str
    digest: str
    media_type: str
    platforms: tuple[str, ...]  # "os/arch[/variant]", in the order the resolver must report them
    children: Mapping[str, str] = field(default_factory=dict)  # platform -> manifest digest pulled


SAMPLE_DESCRIPTIONS = {
    "multiarch": "Docker manifest list: linux/amd64, linux/arm64, linux/arm/v7",
    "attested": "OCI index: linux/amd64 + its buildkit attestation manifest (unknown/unknown)",
    "nested": "OCI index whose first entry is an OCI index (linux/arm64, linux/arm/v7), then linux/amd64",
    "arm64-oci": "single OCI image manifest, config linux/arm64",
    "amd64-docker": "single Docker v2 manifest, config linux/amd64",
    "schema2-only": "single Docker v2 manifest, config linux/arm/v6 (no list at all)",
    "artifact": "OCI artifact (Helm chart config): never runnable",
}


def _plat(p: Pushed) -> str:
    assert p.platform is not None
    parts = [p.platform["os"], p.platform["architecture"]]
    if p.platform.get("variant"):
        parts.append(p.platform["variant"])
    return "/".join(parts)


def seed_samples(registry: Registry, prefix: str = "samples") -> dict[str, Sample]:
    """Push the sample images; returns name -> Sample (see SAMPLE_DESCRIPTIONS)."""
    p = registry.pusher()
    out: dict[str, Sample] = {}

    def add(name: str, repo: str, tag: str, top: Pushed, kids: list[Pushed]) -> None:
        out[name] = Sample(
            registry.ref(repo, tag),
            top.digest,
            top.media_type,
            tuple(_plat(k) for k in kids),
            {_plat(k): k.digest for k in kids},
        )

    repo = f"{prefix}/multiarch"
    kids = [
        push_image(p, repo, "linux", "amd64", oci=False),
        push_image(p, repo, "linux", "arm64", "v8", oci=False),
        push_image(p, repo, "linux", "arm", "v7", oci=False),
    ]
    add(
        "multiarch",
        repo,
        "1.0",
        push_index(p, repo, [k.descriptor() for k in kids], oci=False, tag="1.0"),
        kids,
    )

    repo = f"{prefix}/attested"
    amd = push_image(p, repo, "linux", "amd64")
    att = push_attestation(p, repo, amd)
    children = [
        amd.descriptor(),
        att.descriptor(
            annotations={
                "vnd.docker.reference.type": "attestation-manifest",
                "vnd.docker.reference.digest": amd.digest,
            }
        ),
    ]
    add("attested", repo, "1.0", push_index(p, repo, children, tag="1.0"), [amd])

    repo = f"{prefix}/nested"
    arm64 = push_image(p, repo, "linux", "arm64")
    armv7 = push_image(p, repo, "linux", "arm", "v7")
    inner = push_index(p, repo, [arm64.descriptor(), armv7.descriptor()])
    amd = push_image(p, repo, "linux", "amd64")
    top = push_index(p, repo, [inner.descriptor(), amd.descriptor()], tag="1.0", with_media_type=False)
    add("nested", repo, "1.0", Pushed(top.digest, MEDIA_OCI_INDEX, top.size), [arm64, armv7, amd])

    repo = f"{prefix}/arm64-oci"
    add("arm64-oci", repo, "1.0", (img := push_image(p, repo, "linux", "arm64", tag="1.0")), [img])

    repo = f"{prefix}/amd64-docker"
    add(
        "amd64-docker",
        repo,
        "1.0",
        (img := push_image(p, repo, "linux", "amd64", oci=False, tag="1.0")),
        [img],
    )

    repo = f"{prefix}/schema2-only"
    add(
        "schema2-only",
        repo,
        "1.0",
        (img := push_image(p, repo, "linux", "arm", "v6", oci=False, tag="1.0")),
        [img],
    )

    repo = f"{prefix}/artifact"
    art = push_artifact(p, repo, "1.0")
    out["artifact"] = Sample(registry.ref(repo, "1.0"), art.digest, art.media_type, ())
    return out


def seed_many(registry: Registry, count: int, prefix: str = "many") -> list[str]:
    """`count` distinct tags (cheap: 1/3 multi-arch lists, the rest single-arch) for benchmarks."""
    p = registry.pusher()
    refs = []
    for i in range(count):
        repo = f"{prefix}/app{i % 10}"
        if i % 3 == 0:
            kids = [push_image(p, repo, "linux", "amd64"), push_image(p, repo, "linux", "arm64")]
            push_index(p, repo, [k.descriptor() for k in kids], tag=f"v{i}")
        else:
            push_image(p, repo, "linux", "amd64" if i % 2 else "arm64", tag=f"v{i}")
        refs.append(registry.ref(repo, f"v{i}"))
    return refs


def main(argv: list[str] | None = None) -> int:  # pragma: no cover - manual use
    """`python -m tests.harness.registry SETUP DIR`: start a seeded registry, print samples, wait."""
    import sys

    args = list(argv if argv is not None else sys.argv[1:])
    setup = args[0] if args else "plain"
    directory = args[1] if len(args) > 1 else "/tmp/archaudit-registry"
    registry = start_registry(setup, Path(directory))
    try:
        for name, sample in seed_samples(registry).items():
            print(f"{name:14} {sample.reference}  ({SAMPLE_DESCRIPTIONS[name]})")
        print(f"registry {registry.base_url} running; Ctrl-C stops it", flush=True)
        with contextlib.suppress(KeyboardInterrupt):
            threading.Event().wait()
    finally:
        registry.stop()
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())

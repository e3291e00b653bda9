"""The registry client's protocol logic, driven through an in-memory transport (no sockets, no sleeps).

`Network` is a `Transport` (the seam in archaudit.adapters.registry.transport) that routes each
request by host to a tiny fake: `FakeRegistry` answers the distribution API from the real manifest
fixtures in tests/unit/fixtures/manifests (anonymous, Basic or Bearer), `TokenService` issues tokens
as distribution's token spec says, `Storage` serves redirected blobs. Scripted faults (`Network.inject`)
come before the fakes' own answers. Time is a `FakeTime`: the client's retries "sleep" on it.

The aiohttp transport, TLS and the host guard at connect time are tested against the real
docker-registry in tests/integration; these tests need no service.
"""

from __future__ import annotations

import ast
import asyncio
import base64
import email.utils
import json
import urllib.parse
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from archaudit.adapters import registry as registry_package
from archaudit.adapters.registry.client import ClientOptions, RegistryClient
from archaudit.adapters.registry.transport import (
    BodyTooLargeError,
    Headers,
    Request,
    Response,
    TransportError,
)
from archaudit.core import manifests
from archaudit.core.config import RegistrySettings
from archaudit.core.credentials import Credential
from archaudit.core.errors import Reason, ResolutionError
from archaudit.core.mirrors import EMPTY, RegistriesConfig
from archaudit.core.reference import parse

FIXTURES = Path(__file__).parent / "fixtures" / "manifests"
HOST = "registry.test"
REALM = "https://auth.test/token"
GOOD = Credential("alice", "right-password")
WRONG = Credential("alice", "wrong-password")
ALL_MANIFEST_TYPES = (
    "application/vnd.oci.image.index.v1+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
    "application/vnd.oci.image.manifest.v1+json",
    "application/vnd.docker.distribution.manifest.v2+json",
)


def fixture(name: str) -> bytes:
    return (FIXTURES / f"{name}.json").read_bytes()


def _json(doc: Any) -> bytes:
    return json.dumps(doc, indent=3).encode()


def _error(status: int, code: str) -> Response:
    body = _json({"errors": [{"code": code, "message": code.lower()}]})
    return Response(status, (("Content-Type", "application/json"),), body, "")


# ---------------------------------------------------------------------------------------------------------
# The in-memory network


class FakeTime:
    """The event loop's clock plus what the client slept; the wall clock for Retry-After dates.

    `now` never runs behind the loop's own clock, so the client's real `asyncio.timeout_at` (on the
    loop) never fires before the fake deadline does.
    """

    def __init__(self) -> None:
        self.slept: list[float] = []
        self.wall = 1_800_000_000.0  # a fixed Unix time: HTTP-dates are relative to it

    def now(self) -> float:
        return asyncio.get_running_loop().time() + sum(self.slept)

    async def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)

    def wall_clock(self) -> float:
        return self.wall + sum(self.slept)


@dataclass
class FakeRegistry:
    """One registry host: manifests by (repository, tag or digest), blobs by digest, one auth scheme."""

    auth: str = "none"  # "none" | "basic" | "bearer"
    credential: Credential | None = None  # the one Basic or the token service accepts
    manifests: dict[tuple[str, str], tuple[str, bytes]] = field(default_factory=dict)
    blobs: dict[str, bytes] = field(default_factory=dict)
    blob_redirect: str = ""  # "https://storage.test": blobs are served there (S3-style)
    tokens: set[str] = field(default_factory=set)  # valid Bearer tokens (the token service adds them)

    def push(self, repository: str, body: bytes, *tags: str, media_type: str = "") -> str:
        digest = manifests.sha256_digest(body)
        kind = media_type or json.loads(body).get("mediaType", "")
        for ref in (digest, *tags):
            self.manifests[(repository, ref)] = (kind, body)
        return digest

    def push_blob(self, body: bytes) -> str:
        digest = manifests.sha256_digest(body)
        self.blobs[digest] = body
        return digest

    def answer(self, request: Request, host: str) -> Response:
        path = urllib.parse.urlsplit(request.url).path
        repository, kind, ref = _route(path)
        if not self._authorized(request):
            return self._challenge(repository)
        if kind == "manifests":
            found = self.manifests.get((repository, ref))
            if found is None:
                return _error(404, "MANIFEST_UNKNOWN")
            media_type, body = found
            headers: Headers = (
                ("Content-Type", media_type),
                ("Docker-Content-Digest", manifests.sha256_digest(body)),
                ("Content-Length", str(len(body))),
            )
            return Response(200, headers, b"" if request.method == "HEAD" else body, request.url)
        if kind == "blobs":
            if ref not in self.blobs:
                return _error(404, "BLOB_UNKNOWN")
            if self.blob_redirect:
                return Response(307, (("Location", f"{self.blob_redirect}/{ref}?sig=x"),), b"", request.url)
            return Response(
                200, (("Content-Type", "application/octet-stream"),), self.blobs[ref], request.url
            )
        return _error(404, "NAME_UNKNOWN")

    def _authorized(self, request: Request) -> bool:
        given = request.header("Authorization") or ""
        if self.auth == "basic":
            return self.credential is not None and given == _basic(self.credential)
        if self.auth == "bearer":
            return given.startswith("Bearer ") and given.removeprefix("Bearer ") in self.tokens
        return True

    def _challenge(self, repository: str) -> Response:
        if self.auth == "basic":
            value = 'Basic realm="fake registry"'
        else:
            value = f'Bearer realm="{REALM}",service="{HOST}",scope="repository:{repository}:pull"'
        return Response(401, (("WWW-Authenticate", value),), b"", "")


@dataclass
class TokenService:
    """distribution's token server: POST (OAuth2 password grant) unless `post_status` says otherwise,
    GET with Basic or anonymously; tokens scoped to what was asked."""

    registry: FakeRegistry
    post_status: int = 200  # 404 (GAR), 400 (ACR): "this realm does not do POST"
    anonymous: bool = False  # public repositories: anonymous GETs get a token
    issued: int = 0

    def answer(self, request: Request, host: str) -> Response:
        if request.method == "POST":
            if self.post_status != 200:
                return Response(self.post_status, (), b"", request.url)
            form = urllib.parse.parse_qs((request.body or b"").decode())
            assert form["grant_type"] == ["password"]
            assert form["service"] == [HOST]
            given = Credential(form["username"][0], form["password"][0])
            return self._issue(request, given == self.registry.credential, form["scope"][0], "access_token")
        query = urllib.parse.parse_qs(urllib.parse.urlsplit(request.url).query)
        assert query["service"] == [HOST]
        authorization = request.header("Authorization")
        if authorization is None:
            ok = self.anonymous
        else:
            ok = self.registry.credential is not None and authorization == _basic(self.registry.credential)
        return self._issue(request, ok, query["scope"][0], "token")

    def _issue(self, request: Request, ok: bool, scope: str, field_name: str) -> Response:
        if not ok:
            return Response(401, (), b"", request.url)
        self.issued += 1
        token = f"token-{self.issued}-{scope}"
        self.registry.tokens.add(token)
        return Response(200, (), _json({field_name: token, "expires_in": 300}), request.url)


@dataclass
class Storage:
    """Blob storage a registry redirects to: no registry credentials may reach it."""

    registry: FakeRegistry

    def answer(self, request: Request, host: str) -> Response:
        assert request.header("Authorization") is None, "registry credentials leaked to blob storage"
        digest = urllib.parse.urlsplit(request.url).path.rsplit("/", 1)[-1]
        return Response(200, (), self.registry.blobs[digest], request.url)


Scripted = Response | TransportError | BodyTooLargeError | ResolutionError  # the last: a guard refusal


@dataclass
class Network:
    """The `Transport`: routes by host; scripted answers first; every request kept, in order."""

    routes: dict[str, Any] = field(default_factory=dict)
    requests: list[Request] = field(default_factory=list)
    scripts: list[tuple[str, str, list[Scripted]]] = field(default_factory=list)
    closed: bool = False

    def inject(self, method: str, url_part: str, *answers: Scripted) -> None:
        """The next requests with `method` whose URL contains `url_part` get `answers`, in order."""
        self.scripts.append((method, url_part, list(answers)))

    async def send(self, request: Request) -> Response:
        self.requests.append(request)
        for method, part, answers in self.scripts:
            if answers and request.method == method and part in request.url:
                answer = answers.pop(0)
                if isinstance(answer, Exception):
                    raise answer
                return Response(answer.status, answer.headers, answer.body, request.url)
        host = urllib.parse.urlsplit(request.url).netloc
        if host not in self.routes:
            raise TransportError(host, "Name or service not known")
        response: Response = self.routes[host].answer(request, host)
        return Response(response.status, response.headers, response.body, request.url)

    async def aclose(self) -> None:
        self.closed = True

    def seen(self) -> list[tuple[str, str]]:
        """(method, host + path) of every request, without the scheme and query."""
        out = []
        for r in self.requests:
            parts = urllib.parse.urlsplit(r.url)
            out.append((r.method, parts.netloc + parts.path))
        return out


def _route(path: str) -> tuple[str, str, str]:
    """/v2/<repository>/<manifests|blobs>/<reference> -> its three parts."""
    rest = path.removeprefix("/v2/")
    for kind in ("manifests", "blobs"):
        repository, sep, ref = rest.rpartition(f"/{kind}/")
        if sep:
            return repository, kind, ref
    return rest, "", ""


def _basic(credential: Credential) -> str:
    return "Basic " + base64.b64encode(f"{credential.username}:{credential.password}".encode()).decode()


# ---------------------------------------------------------------------------------------------------------
# Fixtures: a registry holding real documents


@dataclass
class World:
    network: Network
    registry: FakeRegistry
    tokens: TokenService
    time: FakeTime
    list_digest: str = ""
    single_digest: str = ""
    config_digest: str = ""
    nested_digest: str = ""
    child_digest: str = ""

    def client(self, registries: RegistriesConfig = EMPTY, **options: Any) -> RegistryClient:
        return RegistryClient(
            RegistrySettings(),
            registries=registries,
            options=ClientOptions(**{"max_retries": 2, "max_redirects": 5, **options}),
            transport=self.network,
            clock=self.time.now,
            timer=self.time.now,
            sleep=self.time.sleep,
            wall_clock=self.time.wall_clock,
        )


def _world(auth: str = "none", credential: Credential | None = None) -> World:
    registry = FakeRegistry(auth=auth, credential=credential)
    tokens = TokenService(registry)
    network = Network(routes={HOST: registry, "auth.test": tokens, "storage.test": Storage(registry)})
    world = World(network, registry, tokens, FakeTime())
    world.list_digest = registry.push(
        "library/busybox", fixture("dockerhub__busybox-latest__docker-manifest-list"), "latest"
    )
    # a single-platform image: the real manifest, pointed at the real config pushed as a blob
    config = fixture("mcr__dotnet-runtime-7.0__linux-amd64-image-config")
    world.config_digest = registry.push_blob(config)
    single = json.loads(fixture("mcr__dotnet-runtime-7.0__linux-amd64-docker-v2-manifest"))
    single["config"].update(digest=world.config_digest, size=len(config))
    world.single_digest = registry.push("dotnet/runtime", _json(single), "7.0")
    # a nested index: an OCI index whose first entry is another index (the image-spec example)
    child = fixture("containers-image__ociv1.image.index")
    world.child_digest = registry.push(
        "nested/app", child, media_type="application/vnd.oci.image.index.v1+json"
    )
    parent = {
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [
            {
                "mediaType": "application/vnd.oci.image.index.v1+json",
                "digest": world.child_digest,
                "size": len(child),
            },
            {
                "mediaType": "application/vnd.oci.image.manifest.v1+json",
                "digest": "sha256:" + "5" * 64,
                "size": 100,
                "platform": {"os": "linux", "architecture": "riscv64"},
            },
        ],
    }
    world.nested_digest = registry.push("nested/app", _json(parent), "1")
    return world


@pytest.fixture
def world() -> World:
    return _world()


def ref(text: str) -> Any:
    return parse(f"{HOST}/{text}")


async def resolve(client: RegistryClient, text: str, credentials: tuple[Credential, ...] = ()) -> Any:
    """HEAD the tag, then GET the digest: what the resolver does on a cold cache."""
    reference = ref(text)
    found = await client.lookup(reference, credentials)
    if found.image is not None:
        return found.image
    return await client.fetch(reference, found.digest, credentials)


async def fails(
    client: RegistryClient, text: str, credentials: tuple[Credential, ...] = ()
) -> ResolutionError:
    with pytest.raises(ResolutionError) as info:
        await resolve(client, text, credentials)
    assert info.value.message.startswith(f"{HOST}/{text.split(':')[0]}"), (
        info.value.message
    )  # names the image
    return info.value


# ---------------------------------------------------------------------------------------------------------
# The questions the runtime asks


async def test_every_manifest_request_accepts_all_four_types(world: World) -> None:
    await resolve(world.client(), "library/busybox:latest")
    assert world.network.requests
    for request in world.network.requests:
        accept = [t.strip() for t in (request.header("Accept") or "").split(",")]
        assert set(ALL_MANIFEST_TYPES) <= set(accept), accept
        assert "*/*" in accept


async def test_head_the_tag_then_get_by_digest(world: World) -> None:
    image = await resolve(world.client(), "library/busybox:latest")
    assert world.network.seen() == [
        ("HEAD", f"{HOST}/v2/library/busybox/manifests/latest"),
        ("GET", f"{HOST}/v2/library/busybox/manifests/{world.list_digest}"),
    ]
    assert image.digest == world.list_digest
    assert image.kind == "index"
    assert [str(p) for p in image.platforms][:4] == [
        "linux/amd64",
        "linux/arm/v5",
        "linux/arm/v6",
        "linux/arm/v7",
    ]


async def test_a_flat_index_never_fetches_its_children(world: World) -> None:
    await resolve(world.client(), "library/busybox:latest")
    assert len(world.network.requests) == 2


async def test_head_without_a_digest_means_get_by_tag_and_hash(world: World) -> None:
    world.network.inject("HEAD", "/manifests/latest", Response(200, (), b"", ""))
    image = await resolve(world.client(), "library/busybox:latest")
    assert image.digest == world.list_digest  # the hash of what came, not a header
    assert [m for m, _ in world.network.seen()] == ["HEAD", "GET"]
    assert world.network.requests[1].url.endswith("/manifests/latest")


@pytest.mark.parametrize("status", [405, 400])  # proxies that refuse HEAD
async def test_a_refused_head_falls_back_to_get_by_tag(world: World, status: int) -> None:
    world.network.inject("HEAD", "/manifests/latest", _status(status))
    image = await resolve(world.client(), "library/busybox:latest")
    assert image.digest == world.list_digest
    assert world.network.seen() == [
        ("HEAD", f"{HOST}/v2/library/busybox/manifests/latest"),
        ("GET", f"{HOST}/v2/library/busybox/manifests/latest"),
    ]


async def test_a_forbidden_answer_is_an_auth_failure(world: World) -> None:
    world.network.inject("HEAD", "/manifests/latest", _error(403, "DENIED"))
    error = await fails(world.client(), "library/busybox:latest")
    assert error.reason is Reason.AUTH
    assert "HTTP 403" in error.message


async def test_a_body_that_does_not_match_its_digest_is_refused(world: World) -> None:
    media_type, body = world.registry.manifests[("library/busybox", world.list_digest)]
    tampered = body.replace(b'"amd64"', b'"arm64"')
    world.registry.manifests[("library/busybox", world.list_digest)] = (media_type, tampered)
    error = await fails(world.client(), "library/busybox:latest")
    assert error.reason is Reason.INVALID_MANIFEST
    assert world.list_digest in error.message
    assert "tampered" in error.message


async def test_a_config_blob_that_does_not_match_its_digest_is_refused(world: World) -> None:
    world.registry.blobs[world.config_digest] += b" "
    error = await fails(world.client(), "dotnet/runtime:7.0")
    assert error.reason is Reason.INVALID_MANIFEST
    assert world.config_digest in error.message


async def test_an_oversized_manifest_is_refused_even_if_the_transport_delivers_it(world: World) -> None:
    huge = _json({"schemaVersion": 2, "manifests": [], "padding": "x" * manifests.MAX_MANIFEST_BYTES})
    world.registry.push("big/image", huge, "1", media_type="application/vnd.oci.image.index.v1+json")
    error = await fails(world.client(), "big/image:1")
    assert error.reason is Reason.INVALID_MANIFEST
    assert f"{manifests.MAX_MANIFEST_BYTES}-byte limit for a manifest" in error.message


async def test_a_transport_that_stops_an_oversized_body_is_reported_with_the_size(world: World) -> None:
    too_big = BodyTooLargeError(
        f"https://{HOST}/v2/library/busybox/manifests/x", manifests.MAX_MANIFEST_BYTES, 50_000_000
    )
    world.network.inject("GET", "/manifests/sha256:", too_big)
    error = await fails(world.client(), "library/busybox:latest")
    assert error.reason is Reason.INVALID_MANIFEST
    assert "announces 50000000 bytes" in error.message


async def test_a_nested_index_is_descended_into(world: World) -> None:
    image = await resolve(world.client(), "nested/app:1")
    assert [str(p) for p in image.platforms] == ["linux/ppc64le", "linux/amd64", "linux/riscv64"]
    assert world.network.seen()[-1] == ("GET", f"{HOST}/v2/nested/app/manifests/{world.child_digest}")
    assert len(world.network.requests) == 3  # HEAD, GET the index, GET the child index; no manifests


async def test_a_single_manifest_gets_its_platform_from_the_config_blob(world: World) -> None:
    image = await resolve(world.client(), "dotnet/runtime:7.0")
    assert image.kind == "manifest"
    assert [str(p) for p in image.platforms] == ["linux/amd64"]
    assert world.network.seen()[-1] == ("GET", f"{HOST}/v2/dotnet/runtime/blobs/{world.config_digest}")


# ---------------------------------------------------------------------------------------------------------
# Authentication


def _auth_headers(network: Network) -> list[str | None]:
    return [r.header("Authorization") for r in network.requests]


async def test_bearer_challenge_posts_for_a_token_and_retries_with_it() -> None:
    world = _world("bearer", GOOD)
    await resolve(world.client(), "library/busybox:latest", (GOOD,))
    assert [(m, path.split("/", 1)[0]) for m, path in world.network.seen()] == [
        ("HEAD", HOST),  # 401 with the challenge
        ("POST", "auth.test"),
        ("HEAD", HOST),
        ("GET", HOST),  # pre-authorized: the challenge is remembered
    ]
    form = urllib.parse.parse_qs((world.network.requests[1].body or b"").decode())
    assert form["scope"] == ["repository:library/busybox:pull"]
    assert form["client_id"] == ["archaudit"]
    token = "Bearer token-1-repository:library/busybox:pull"
    assert _auth_headers(world.network)[2:] == [token, token]


@pytest.mark.parametrize("post_status", [404, 400, 405, 401])  # GAR, ACR, others
async def test_a_realm_refusing_post_gets_a_get_with_basic_credentials(post_status: int) -> None:
    world = _world("bearer", GOOD)
    world.tokens.post_status = post_status
    await resolve(world.client(), "library/busybox:latest", (GOOD,))
    token_requests = [r for r in world.network.requests if r.url.startswith(REALM)]
    assert [r.method for r in token_requests] == ["POST", "GET"]
    assert token_requests[1].header("Authorization") == _basic(GOOD)
    query = urllib.parse.parse_qs(urllib.parse.urlsplit(token_requests[1].url).query)
    assert query == {"scope": ["repository:library/busybox:pull"], "service": [HOST]}


async def test_the_token_is_cached_across_images_of_one_repository() -> None:
    world = _world("bearer", GOOD)
    client = world.client()
    await resolve(client, "library/busybox:latest", (GOOD,))
    world.registry.push("library/busybox", fixture("dockerhub__debian-latest__docker-manifest-list"), "other")
    await resolve(client, "library/busybox:other", (GOOD,))
    assert world.tokens.issued == 1
    assert sum(r.url.startswith(REALM) for r in world.network.requests) == 1


async def test_a_token_the_registry_revokes_is_fetched_again() -> None:
    world = _world("bearer", GOOD)
    client = world.client()
    await resolve(client, "library/busybox:latest", (GOOD,))
    world.registry.tokens.clear()  # revoked before its expiry
    await resolve(client, "library/busybox:latest", (GOOD,))
    assert world.tokens.issued == 2


async def test_anonymous_bearer_gets_a_token_without_credentials() -> None:
    world = _world("bearer")
    world.tokens.anonymous = True
    await resolve(world.client(), "library/busybox:latest")
    token_requests = [r for r in world.network.requests if r.url.startswith(REALM)]
    assert [r.method for r in token_requests] == ["GET"]
    assert token_requests[0].header("Authorization") is None


async def test_anonymous_refused_says_the_image_may_be_private() -> None:
    world = _world("bearer")
    error = await fails(world.client(), "library/busybox:latest")
    assert error.reason is Reason.AUTH
    assert "imagePullSecret" in error.message


async def test_basic_challenge_then_basic_on_every_request() -> None:
    world = _world("basic", GOOD)
    await resolve(world.client(), "library/busybox:latest", (GOOD,))
    assert [m for m, _ in world.network.seen()] == ["HEAD", "HEAD", "GET"]
    assert _auth_headers(world.network) == [None, _basic(GOOD), _basic(GOOD)]


async def test_each_credential_is_tried_in_order_and_none_leaks() -> None:
    world = _world("basic", GOOD)
    await resolve(world.client(), "library/busybox:latest", (WRONG, GOOD))
    assert _basic(WRONG) in _auth_headers(world.network)
    error = await fails(world.client(), "library/busybox:latest", (WRONG,))
    assert error.reason is Reason.AUTH
    assert "wrong-password" not in str(error)
    assert "alice" not in str(error)


# ---------------------------------------------------------------------------------------------------------
# Retries: bounded by count and by the deadline; waits are the registry's or our backoff


def _status(status: int, *headers: tuple[str, str]) -> Response:
    return Response(status, headers, b"", "")


async def test_429_with_retry_after_seconds_waits_that_long(world: World) -> None:
    world.network.inject("HEAD", "/manifests/latest", _status(429, ("Retry-After", "1")))
    image = await resolve(world.client(), "library/busybox:latest")
    assert image.digest == world.list_digest
    assert world.time.slept == [1.0]


async def test_429_with_retry_after_as_an_http_date(world: World) -> None:
    when = email.utils.formatdate(world.time.wall + 2, usegmt=True)
    world.network.inject("HEAD", "/manifests/latest", _status(429, ("Retry-After", when)))
    assert (await resolve(world.client(), "library/busybox:latest")).digest == world.list_digest
    assert world.time.slept == [2.0]


@pytest.mark.parametrize("later", ["3600", "date"])
async def test_429_asking_to_wait_past_the_deadline_fails_at_once(world: World, later: str) -> None:
    value = email.utils.formatdate(world.time.wall + 3600, usegmt=True) if later == "date" else later
    world.network.inject("HEAD", "/manifests/latest", *[_status(429, ("Retry-After", value))] * 5)
    error = await fails(world.client(timeout_seconds=8), "library/busybox:latest")
    assert error.reason is Reason.RATE_LIMITED
    assert world.time.slept == []  # did not wait an hour
    assert len(world.network.requests) == 1  # and did not hammer either


async def test_5xx_is_retried_with_backoff_then_reported(world: World) -> None:
    world.network.inject("HEAD", "/manifests/latest", *[_status(503)] * 5)
    error = await fails(world.client(max_retries=2, backoff_seconds=0.2), "library/busybox:latest")
    assert error.reason is Reason.REGISTRY_ERROR
    assert "HTTP 503" in error.message
    assert len(world.network.requests) == 3
    assert world.time.slept == [0.2, 0.4]


async def test_5xx_once_is_retried_to_success(world: World) -> None:
    world.network.inject("GET", "/manifests/sha256:", _status(500))
    assert (await resolve(world.client(), "library/busybox:latest")).digest == world.list_digest
    assert [m for m, _ in world.network.seen()] == ["HEAD", "GET", "GET"]


async def test_connection_errors_are_retried_boundedly(world: World) -> None:
    world.network.inject("HEAD", "/manifests/latest", *[TransportError(HOST, "Connection refused")] * 5)
    error = await fails(world.client(max_retries=1), "library/busybox:latest")
    assert error.reason is Reason.UNREACHABLE
    assert f"cannot reach {HOST}: Connection refused" in error.message
    assert len(world.network.requests) == 2


async def test_a_tls_failure_is_not_retried(world: World) -> None:
    world.network.inject(
        "HEAD", "/manifests/latest", TransportError(HOST, "certificate verify failed", tls=True)
    )
    error = await fails(world.client(), "library/busybox:latest")
    assert error.reason is Reason.UNREACHABLE
    assert "TLS" in error.message
    assert len(world.network.requests) == 1


async def test_the_host_guard_refusal_names_the_image(world: World) -> None:
    refused = ResolutionError(
        Reason.REFUSED_HOST, "refusing registry host 'auth.test': it resolves to 169.254.1.1"
    )
    world.network.inject("HEAD", "/manifests/latest", refused)
    error = await fails(world.client(), "library/busybox:latest")
    assert error.reason is Reason.REFUSED_HOST


# ---------------------------------------------------------------------------------------------------------
# Redirects


async def test_a_blob_redirect_is_followed_without_the_registrys_credentials() -> None:
    world = _world("basic", GOOD)
    world.registry.blob_redirect = "https://storage.test"
    image = await resolve(world.client(), "dotnet/runtime:7.0", (GOOD,))
    assert [str(p) for p in image.platforms] == ["linux/amd64"]
    last = world.network.requests[-1]
    assert last.url == f"https://storage.test/{world.config_digest}?sig=x"
    assert last.header("Authorization") is None  # Storage asserts it too
    assert world.network.requests[-2].header("Authorization") == _basic(GOOD)


async def test_a_redirect_on_the_same_host_keeps_the_credentials() -> None:
    world = _world("basic", GOOD)
    moved = _status(308, ("Location", f"/v2/library/busybox/manifests/{world.list_digest}?moved=1"))
    world.network.inject("GET", "/manifests/sha256:", moved)
    image = await resolve(world.client(), "library/busybox:latest", (GOOD,))
    assert image.digest == world.list_digest
    assert world.network.requests[-1].url.endswith("?moved=1")
    assert world.network.requests[-1].header("Authorization") == _basic(GOOD)


async def test_a_303_is_followed_with_a_get_and_no_body() -> None:
    world = _world("bearer", GOOD)
    # "see other": the POST's answer is fetched with a GET that carries no form (RFC 9110 15.4.4)
    world.tokens.anonymous = True
    elsewhere = f"{REALM}?service={HOST}&scope=repository:library/busybox:pull"
    world.network.inject("POST", REALM, _status(303, ("Location", elsewhere)))
    await resolve(world.client(), "library/busybox:latest", (GOOD,))
    token_requests = [r for r in world.network.requests if r.url.startswith(REALM)]
    assert [(r.method, r.body is None) for r in token_requests] == [("POST", False), ("GET", True)]


async def test_a_redirect_loop_is_refused_after_the_cap(world: World) -> None:
    loop = _status(307, ("Location", f"https://{HOST}/v2/library/busybox/manifests/latest"))
    world.network.inject("HEAD", "/manifests/latest", *[loop] * 20)
    error = await fails(world.client(max_redirects=4), "library/busybox:latest")
    assert error.reason is Reason.REGISTRY_ERROR
    assert "redirect" in error.message
    assert len(world.network.requests) == 5  # the first request and 4 redirects followed


# ---------------------------------------------------------------------------------------------------------
# Mirrors


MIRRORS = f"""
mirrors:
  {HOST}:
    endpoint: ["https://mirror-a.test", "https://mirror-b.test:5000"]
"""


async def test_mirrors_are_tried_in_order_then_the_registry(world: World) -> None:
    # mirror-a is unreachable (no route), mirror-b does not have the image: then the registry answers
    world.network.routes["mirror-b.test:5000"] = FakeRegistry()
    client = world.client(RegistriesConfig.load(MIRRORS), max_retries=0)
    image = await resolve(client, "library/busybox:latest")
    assert image.digest == world.list_digest
    hosts = [urllib.parse.urlsplit(r.url).netloc for r in world.network.requests]
    # each operation (the tag, then the digest) starts at the first mirror again, as containerd does
    assert hosts == ["mirror-a.test", "mirror-b.test:5000", HOST] * 2
    for request in world.network.requests:
        is_mirror = HOST not in urllib.parse.urlsplit(request.url).netloc
        assert (f"ns={HOST}" in request.url) is is_mirror, request.url


async def test_a_mirror_that_has_the_image_answers_alone(world: World) -> None:
    mirror = FakeRegistry()
    mirror.push("library/busybox", fixture("dockerhub__busybox-latest__docker-manifest-list"), "latest")
    world.network.routes["mirror-a.test"] = mirror
    image = await resolve(world.client(RegistriesConfig.load(MIRRORS)), "library/busybox:latest")
    assert image.digest == world.list_digest
    assert {urllib.parse.urlsplit(r.url).netloc for r in world.network.requests} == {"mirror-a.test"}


async def test_not_found_everywhere_is_not_found(world: World) -> None:
    error = await fails(world.client(RegistriesConfig.load(MIRRORS), max_retries=0), "library/nothing:1")
    assert error.reason is Reason.NOT_FOUND


async def test_closing_the_client_closes_its_transport(world: World) -> None:
    async with world.client():
        pass
    assert world.network.closed


@pytest.mark.parametrize("module", ["client", "transport"])
def test_the_protocol_side_of_the_seam_does_not_import_aiohttp(module: str) -> None:
    # what makes the in-memory transport a real seam: only aiohttp_transport.py talks HTTP
    source = (Path(registry_package.__file__).parent / f"{module}.py").read_text()
    imported = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            imported |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            imported.add(node.module.split(".")[0])
    assert imported.isdisjoint({"aiohttp", "multidict", "ssl", "socket"}), imported

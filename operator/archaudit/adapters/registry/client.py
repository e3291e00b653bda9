"""The registry HTTP client: an image reference in, the platforms its runtime would see out.

Why it is shaped this way: the kubelet's runtime (containerd, CRI-O) decides what a node pulls, so
this client asks registries the same questions the runtime asks, with the same Accept header, and
trusts what it can verify (bodies hashed against digests) over what it is told (headers). Every way
a registry can fail is turned into a `ResolutionError` whose `reason` users can alert on and whose
message names the image and the registry host, never a credential.

The client does no caching of results (resolver.py does); it caches only Bearer tokens, which are a
property of the conversation with a registry, not of images. Two calls serve the resolver's caches:
`lookup` (tag -> digest, a HEAD that Docker Hub does not count against pull limits) and `fetch`
(digest -> platforms: one GET, plus the config blob of a single-platform image or the child indexes
of a nested index, never the children of a flat index).

HTTP goes through an injected `Transport` (transport.py; aiohttp's in production, an in-memory fake
registry in tests/unit/test_registry_client.py): one exchange per `send`, with the session, TLS, the
host guard at connect time, per-registry semaphores and the streamed size cap behind it.

What stays here, and why it is not behind the transport (httpx draws the same line: its Client, not
its transports, follows redirects and runs auth flows):
- Redirects: following one is a protocol decision (drop the registry's Authorization and TLS client
  settings when blob storage on another host is named; 303 turns into GET), and the cap is reported
  as a redirect loop of this image.
- Retries (5xx, 429 with Retry-After as seconds or an HTTP-date, connection errors; bounded by
  `max_retries`): whether to wait depends on the per-image deadline, which only the client knows; a
  wait that would end past it is not started, so a "Retry-After: 3600" fails at once as
  rate-limited instead of hanging. Time is injected (`timer`, `sleep`, `wall_clock`) so tests wait
  for nothing.
- Digest verification: which digest a body must hash to (the one asked for; a signed schema1's
  payload) is a property of the request the protocol made, not of bytes on a wire. The transport
  caps sizes while streaming, since only it holds the stream; the client refuses an oversized body
  too, so no transport can hand it more than it asked for.

Guards, in the order a request meets them: the per-image deadline (everything, retries included,
runs inside it), the host guard (the allow list for the registry a user named, here; deny list and
address rules for every host contacted, in the transport), the per-registry concurrency semaphore,
a redirect cap, the response-size cap, bounded retries.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import datetime as dt
import email.utils
import json
import logging
import re
import time
import urllib.parse
from collections.abc import Awaitable, Callable, Collection, Coroutine, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any, TypeVar

from archaudit.adapters.registry.aiohttp_transport import AiohttpTransport
from archaudit.adapters.registry.files import registries_from_file
from archaudit.adapters.registry.safety import HostGuard
from archaudit.adapters.registry.transport import (
    MAX_ERROR_BYTES,
    BodyTooLargeError,
    Headers,
    Observer,
    Request,
    Response,
    Transport,
    TransportError,
)
from archaudit.core import manifests
from archaudit.core.auth import (
    Challenge,
    TokenCache,
    basic_authorization,
    fetch_token,
    parse_www_authenticate,
    pick_challenge,
    pull_scope,
    token_key,
)
from archaudit.core.config import RegistrySettings
from archaudit.core.credentials import Credential
from archaudit.core.errors import ManifestError, Reason, ResolutionError
from archaudit.core.manifests import ImagePlatforms, Index
from archaudit.core.mirrors import EMPTY, Endpoint, RegistriesConfig
from archaudit.core.platforms import Platform
from archaudit.core.reference import ImageReference

__all__ = ["ClientOptions", "Observer", "RegistryClient", "TagLookup", "retry_after"]

log = logging.getLogger(__name__)

# An image config is usually a few KiB; a long build history makes it bigger. Cap it anyway.
MAX_CONFIG_BYTES = 8 * 1024 * 1024
# An index inside an index inside an index is already unusual; deeper is refused, not followed.
_MAX_NESTING = 3
_REDIRECTS = frozenset({301, 302, 303, 307, 308})
_RETRYABLE = frozenset({429, 500, 502, 503, 504})
_T = TypeVar("_T")
# Tag lists: pages of this many, at most this many pages (Docker Hub's biggest repositories have
# tens of thousands of tags; the newest are what a fix is found among), each page size-capped.
_TAG_PAGE_SIZE = 1000
_MAX_TAG_PAGES = 5
_MAX_TAGS_BYTES = 1024 * 1024
_LINK_NEXT = re.compile(r'<([^>]+)>\s*;\s*rel="?next"?')
_DIGEST = re.compile(r"^[a-z0-9]+(?:[.+_-][a-z0-9]+)*:[a-zA-Z0-9=_-]{32,}$")


@dataclass(frozen=True)
class ClientOptions:
    """The client's knobs (from config.RegistrySettings, where the defaults live)."""

    timeout_seconds: float = 8.0
    connect_timeout_seconds: float = 3.0
    max_retries: int = 2
    concurrency_per_registry: int = 8
    max_redirects: int = 5
    backoff_seconds: float = 0.2

    @classmethod
    def from_settings(cls, s: RegistrySettings) -> ClientOptions:
        return cls(
            timeout_seconds=s.timeout_seconds,
            connect_timeout_seconds=s.connect_timeout_seconds,
            max_retries=s.max_retries,
            concurrency_per_registry=s.concurrency_per_registry,
            max_redirects=s.max_redirects,
        )


@dataclass(frozen=True)
class TagLookup:
    """A tag's digest; `image` is set when it came from a GET by tag (the HEAD gave no digest)."""

    digest: str
    image: ImagePlatforms | None = None


class _UnauthorizedError(Exception):
    """This credential (or anonymity) is not good enough here: try the next one."""

    def __init__(self, status: int) -> None:
        super().__init__(status)
        self.status = status


@dataclass(frozen=True)
class _Attempt:
    """One image against one endpoint with one credential, inside one deadline."""

    ref: ImageReference
    endpoint: Endpoint
    credential: Credential | None
    deadline: float  # loop time

    @property
    def registry(self) -> str:
        return self.endpoint.host

    @property
    def image(self) -> str:
        """The normalized reference, for messages."""
        return str(self.ref)

    def url(self, kind: str, locator: str) -> str:
        return self.endpoint.url(kind, locator)  # with the mirror's ?ns= and API path


def _parse_ratelimit(value: str) -> int | None:
    """`100;w=21600` -> 100 (Docker Hub's ratelimit-remaining)."""
    head = value.split(";", 1)[0].strip()
    return int(head) if head.isdigit() else None


def retry_after(value: str | None, now: float | None = None) -> float | None:
    """Seconds to wait from a Retry-After header: delay-seconds or an HTTP-date (RFC 9110 10.2.3).

    None when absent or unreadable (the caller's own backoff applies); `now` is Unix time, for tests.
    """
    if not value:
        return None
    text = value.strip()
    try:
        return max(float(text), 0.0)
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(text)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:  # an HTTP-date is always GMT; a naive result means it said "-0000"
        when = when.replace(tzinfo=dt.UTC)
    return max(when.timestamp() - (time.time() if now is None else now), 0.0)


def _error_code(body: bytes) -> str:
    """The registry's error code (`MANIFEST_UNKNOWN`, ...) from a distribution error body, if any."""
    try:
        doc = json.loads(body)
        errors = doc.get("errors") if isinstance(doc, dict) else None
        if isinstance(errors, list) and errors and isinstance(errors[0], dict):
            return str(errors[0].get("code", ""))
    except (ValueError, UnicodeDecodeError):
        pass
    return ""


def _schema1_payload(body: bytes) -> bytes | None:
    """The signed schema1 payload a registry hashes (the JWS without its signatures), if any."""
    try:
        doc = json.loads(body)
        protected = doc["signatures"][0]["protected"]
        header = json.loads(base64.urlsafe_b64decode(protected + "=" * (-len(protected) % 4)))
        length = int(header["formatLength"])
        tail = header["formatTail"]
        return body[:length] + base64.urlsafe_b64decode(tail + "=" * (-len(tail) % 4))
    except (ValueError, KeyError, IndexError, TypeError, binascii.Error):
        return None


def content_digest(body: bytes) -> str:
    """The digest a registry gives `body`: its sha256, except signed schema1 (payload without signatures)."""
    if b'"signatures"' in body:
        payload = _schema1_payload(body)
        if payload is not None:
            return manifests.sha256_digest(payload)
    return manifests.sha256_digest(body)


def _verify(body: bytes, digest: str, what: str) -> None:
    try:
        manifests.verify_digest(body, digest)
    except ManifestError:
        payload = _schema1_payload(body) if b'"signatures"' in body else None
        if payload is not None and manifests.sha256_digest(payload) == digest:
            return
        raise ResolutionError(
            Reason.INVALID_MANIFEST,
            f"{what}: the registry sent content whose digest is not {digest} (corrupt or tampered)",
        ) from None


class RegistryClient:
    """The registry protocol over an injected `Transport` (aiohttp's by default). Use `async with`."""

    def __init__(
        self,
        settings: RegistrySettings | None = None,
        *,
        registries: RegistriesConfig | None = None,
        guard: HostGuard | None = None,
        observer: Observer | None = None,
        insecure: Collection[str] = (),
        options: ClientOptions | None = None,
        clock: Callable[[], float] = time.monotonic,
        transport: Transport | None = None,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        timer: Callable[[], float] | None = None,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        """`transport` defaults to an `AiohttpTransport` with this client's host guard (an injected
        one brings its own). `clock` times token lifetimes; `timer` is the clock deadlines are on (the
        event loop's by default; an injected one must not run behind it, since the deadline is also
        enforced with `asyncio.timeout_at`) and `sleep` waits on it between retries; `wall_clock`
        reads Retry-After dates. Tests inject them so that nothing really waits."""
        settings = settings or RegistrySettings()
        self.options = options or ClientOptions.from_settings(settings)
        if registries is None:
            registries = registries_from_file(settings.registries_file) if settings.registries_file else EMPTY
        self.registries = registries
        self.insecure = frozenset((*settings.insecure, *insecure))
        self.guard = guard or HostGuard(
            allow=settings.allow,
            deny=settings.deny,
            refuse_loopback=settings.refuse_loopback,
            refuse_private=settings.refuse_private,
        )
        self.observer = observer
        self.transport: Transport = transport or AiohttpTransport(
            self.guard,
            connect_timeout_seconds=self.options.connect_timeout_seconds,
            concurrency_per_host=self.options.concurrency_per_registry,
            observer=observer,
        )
        self.tokens = TokenCache()
        self.ratelimit_remaining: dict[str, int] = {}
        self._clock = clock
        self._sleep = sleep
        self._timer = timer or _loop_time
        self._wall_clock = wall_clock
        # what each (host, credential identity) asked for last time: pre-authorize the next request
        self._challenges: dict[tuple[str, str], Challenge] = {}

    # -- lifecycle

    async def __aenter__(self) -> RegistryClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self.transport.aclose()

    # -- public operations

    def deadline(self) -> float:
        """The deadline for one image starting now, on the timer's clock (the event loop's)."""
        return self._timer() + self.options.timeout_seconds

    async def lookup(
        self, ref: ImageReference, credentials: Sequence[Credential] = (), *, deadline: float | None = None
    ) -> TagLookup:
        """The digest `ref`'s tag points to now (`ref.digest` if pinned)."""
        if ref.digest:
            return TagLookup(ref.digest)
        deadline = self.deadline() if deadline is None else deadline
        return await self._over_endpoints(ref, credentials, deadline, self._lookup_at)

    async def fetch(
        self,
        ref: ImageReference,
        digest: str,
        credentials: Sequence[Credential] = (),
        *,
        deadline: float | None = None,
    ) -> ImagePlatforms:
        """The platforms of the manifest or index `digest` in `ref`'s repository."""
        deadline = self.deadline() if deadline is None else deadline

        async def at(attempt: _Attempt) -> ImagePlatforms:
            return await self._fetch_at(attempt, digest)

        return await self._over_endpoints(ref, credentials, deadline, at)

    # -- tag listing: only for the readiness tag finder (adapters/tagfinder.py), off the admission path.
    # Kept apart from lookup/fetch: it reuses the endpoint, credential and request machinery (so it is
    # guarded, capped, authorized and counted in the registry metrics like every other request).

    async def list_tags(
        self,
        ref: ImageReference,
        credentials: Sequence[Credential] = (),
        *,
        deadline: float | None = None,
        max_pages: int = _MAX_TAG_PAGES,
    ) -> list[str]:
        """The tags of `ref`'s repository (`GET /v2/<name>/tags/list`, following `Link` pages, bounded)."""
        deadline = self.deadline() if deadline is None else deadline

        async def at(attempt: _Attempt) -> list[str]:
            return await self._tags_at(attempt, max_pages)

        return await self._over_endpoints(ref, credentials, deadline, at)

    async def _tags_at(self, attempt: _Attempt, max_pages: int) -> list[str]:
        url = attempt.url("tags", "list")
        url += ("&" if "?" in url else "?") + f"n={_TAG_PAGE_SIZE}"
        tags: list[str] = []
        for _page in range(max(1, max_pages)):
            resp = await self._registry_request(attempt, "GET", url, max_body=_MAX_TAGS_BYTES)
            if resp.status != 200:
                self._raise_for(attempt, resp, "tag list")
            try:
                listed = json.loads(resp.body).get("tags") or []
            except (ValueError, AttributeError):
                raise ResolutionError(
                    Reason.INVALID_MANIFEST,
                    f"{attempt.image}: {attempt.registry} sent an unreadable tag list",
                ) from None
            tags.extend(t for t in listed if isinstance(t, str))
            following = _next_page(resp.header("Link") or "", url)
            if following is None:
                break
            url = following
        return tags

    # -- endpoints and credentials

    async def _over_endpoints(
        self,
        ref: ImageReference,
        credentials: Sequence[Credential],
        deadline: float,
        operation: Callable[[_Attempt], Coroutine[Any, Any, _T]],
    ) -> _T:
        image = str(ref)
        endpoints = self.registries.endpoints_for(ref, self.insecure)
        last: ResolutionError | None = None
        try:
            async with asyncio.timeout_at(deadline):
                for endpoint in endpoints:
                    try:
                        return await self._with_credentials(ref, endpoint, credentials, deadline, operation)
                    except ResolutionError as e:
                        if e.reason is Reason.TIMEOUT:
                            raise
                        if endpoint.is_mirror:
                            log.info(
                                "mirror %s failed for %s (%s); trying the next endpoint",
                                endpoint.host,
                                image,
                                e,
                            )
                        last = e
        except TimeoutError:
            raise ResolutionError(
                Reason.TIMEOUT,
                f"{image}: no complete answer from {ref.registry} within {self.options.timeout_seconds:g}s",
            ) from None
        assert last is not None, "endpoints_for always returns the default endpoint"
        raise last

    async def _with_credentials(
        self,
        ref: ImageReference,
        endpoint: Endpoint,
        credentials: Sequence[Credential],
        deadline: float,
        operation: Callable[[_Attempt], Coroutine[Any, Any, _T]],
    ) -> _T:
        try:
            # The allow list speaks of registries users name (docker.io), not of the hosts that serve
            # them (registry-1.docker.io, a mirror): those get the deny list and address rules only.
            self.guard.check_host(ref.registry)
            self.guard.check_target(endpoint.host)
        except ResolutionError as e:
            raise ResolutionError(e.reason, f"{ref}: {e.message}") from None
        # containerd/kubelet: the configured credential, then each pull secret; anonymous only without any
        tried: list[Credential | None] = []
        if endpoint.credential is not None:
            tried.append(endpoint.credential)
        tried.extend(c for c in credentials if c not in tried)
        if not tried:
            tried.append(None)
        last_status = 401
        for credential in tried:
            try:
                return await operation(_Attempt(ref, endpoint, credential, deadline))
            except _UnauthorizedError as e:
                last_status = e.status
        how = (
            "anonymously (the image may be private: give the pod an imagePullSecret)"
            if tried == [None]
            else f"with each of the {len(tried)} credential(s) that match it"
        )
        raise ResolutionError(
            Reason.AUTH, f"{ref}: {endpoint.host} refused access (HTTP {last_status}) {how}"
        )

    # -- the two operations at one endpoint

    async def _lookup_at(self, attempt: _Attempt) -> TagLookup:
        ref_tag = attempt.ref.tag or "latest"
        resp = await self._registry_request(attempt, "HEAD", attempt.url("manifests", ref_tag))
        if resp.status == 200:
            announced = resp.header("Docker-Content-Digest") or ""
            if _DIGEST.match(announced):
                return TagLookup(announced)
        elif resp.status not in (405, 400):  # some proxies refuse HEAD: then GET
            self._raise_for(attempt, resp, f"tag {ref_tag}")
        # no usable digest from HEAD: GET by tag; the digest is the hash of what we got
        resp = await self._registry_request(
            attempt, "GET", attempt.url("manifests", ref_tag), max_body=manifests.MAX_MANIFEST_BYTES
        )
        if resp.status != 200:
            self._raise_for(attempt, resp, f"tag {ref_tag}")
        digest = content_digest(resp.body)
        image = await self._platforms_of(attempt, digest, resp)
        return TagLookup(digest, image)

    async def _fetch_at(self, attempt: _Attempt, digest: str) -> ImagePlatforms:
        resp = await self._get_manifest(attempt, digest)
        return await self._platforms_of(attempt, digest, resp)

    async def _get_manifest(self, attempt: _Attempt, digest: str) -> Response:
        resp = await self._registry_request(
            attempt, "GET", attempt.url("manifests", digest), max_body=manifests.MAX_MANIFEST_BYTES
        )
        if resp.status != 200:
            self._raise_for(attempt, resp, f"manifest {digest}")
        _verify(resp.body, digest, attempt.image)
        return resp

    async def _platforms_of(self, attempt: _Attempt, digest: str, resp: Response) -> ImagePlatforms:
        document = self._parse(attempt, resp)
        if isinstance(document, Index):
            nested = await self._nested_indexes(attempt, document, 1)
            try:
                return manifests.platforms_of_index(document, digest, nested)
            except ManifestError as e:  # a self-referencing or too deeply nested index
                raise ResolutionError(Reason.INVALID_MANIFEST, f"{attempt.image}: {e}") from None
        if isinstance(document, manifests.ImageManifest) and document.is_image:
            config = await self._config_platform(attempt, document.config)
            return manifests.platforms_of_manifest(document, digest, config)
        return manifests.platforms_of_manifest(document, digest, None)

    def _parse(self, attempt: _Attempt, resp: Response) -> manifests.Document:
        try:
            return manifests.parse_document(resp.body, resp.header("Content-Type"))
        except ManifestError as e:
            raise ResolutionError(
                Reason.INVALID_MANIFEST,
                f"{attempt.image}: {attempt.registry} sent an unreadable manifest: {e}",
            ) from None

    async def _nested_indexes(self, attempt: _Attempt, index: Index, depth: int) -> dict[str, Index]:
        """Child indexes of `index`, fetched (they carry platforms the parent does not list)."""
        found: dict[str, Index] = {}
        for child in index.manifests:
            if not child.is_index or child.is_attestation or child.digest in found:
                continue
            if depth > _MAX_NESTING:
                raise ResolutionError(
                    Reason.INVALID_MANIFEST,
                    f"{attempt.image}: indexes nested more than {_MAX_NESTING} deep at {attempt.registry}",
                )
            resp = await self._get_manifest(attempt, child.digest)
            document = self._parse(attempt, resp)
            if not isinstance(document, Index):
                raise ResolutionError(
                    Reason.INVALID_MANIFEST,
                    f"{attempt.image}: entry {child.digest} is declared an index but is not one",
                )
            found[child.digest] = document
            found.update(await self._nested_indexes(attempt, document, depth + 1))
        return found

    async def _config_platform(self, attempt: _Attempt, config: manifests.Descriptor) -> Platform | None:
        resp = await self._registry_request(
            attempt, "GET", attempt.url("blobs", config.digest), max_body=MAX_CONFIG_BYTES
        )
        if resp.status != 200:
            self._raise_for(attempt, resp, f"config blob {config.digest}")
        _verify(resp.body, config.digest, attempt.image)
        try:
            return manifests.platform_from_config(resp.body)
        except ManifestError as e:
            raise ResolutionError(
                Reason.INVALID_MANIFEST, f"{attempt.image}: unreadable image config {config.digest}: {e}"
            ) from None

    def _raise_for(self, attempt: _Attempt, resp: Response, what: str) -> None:
        code = _error_code(resp.body)
        detail = f" ({code})" if code else ""
        where = f"{attempt.image}: {attempt.registry}"
        if resp.status == 404:
            raise ResolutionError(Reason.NOT_FOUND, f"{where} has no {what}{detail} (HTTP 404)")
        if resp.status == 429:
            raise ResolutionError(Reason.RATE_LIMITED, f"{where} is rate-limiting us (HTTP 429)")
        if resp.status in _REDIRECTS:
            raise ResolutionError(
                Reason.REGISTRY_ERROR,
                f"{where}: more than {self.options.max_redirects} redirects for {what} (a redirect loop?)",
            )
        raise ResolutionError(
            Reason.REGISTRY_ERROR, f"{where} answered HTTP {resp.status}{detail} for {what}"
        )

    # -- authorization

    def _identity(self, attempt: _Attempt) -> str:
        return attempt.credential.identity if attempt.credential else ""

    async def _authorization(self, attempt: _Attempt, challenge: Challenge) -> str:
        if challenge.scheme == "basic":
            if attempt.credential is None:
                raise _UnauthorizedError(401)
            return basic_authorization(attempt.credential)
        realm = urllib.parse.urlsplit(challenge.realm)
        if realm.scheme == "http" and attempt.endpoint.scheme == "https":
            raise ResolutionError(
                Reason.REGISTRY_ERROR,
                f"{attempt.image}: {attempt.registry} sends us to a token service over plain HTTP "
                f"({realm.netloc}); refused",
            )
        if realm.scheme not in ("http", "https"):
            raise ResolutionError(
                Reason.REGISTRY_ERROR, f"{attempt.image}: {attempt.registry} named an unusable token realm"
            )

        async def send(
            method: str, url: str, headers: Mapping[str, str], data: bytes | None
        ) -> tuple[int, bytes]:
            host = urllib.parse.urlsplit(url).netloc
            tls = attempt.endpoint.tls if host == attempt.endpoint.host else None
            request = Request(
                method, url, tuple(headers.items()), data, MAX_ERROR_BYTES, tls, attempt.registry
            )
            resp = await self._send(attempt, request)
            return resp.status, resp.body

        try:
            token = await fetch_token(
                send,
                challenge,
                pull_scope(attempt.endpoint.repository),
                attempt.credential,
                self.tokens,
                self._clock,
                image=attempt.image,
            )
        except ResolutionError as e:
            if e.reason is Reason.AUTH:
                raise _UnauthorizedError(401) from None  # this credential is refused: try the next one
            raise
        return "Bearer " + token.value

    async def _registry_request(
        self, attempt: _Attempt, method: str, url: str, *, max_body: int = MAX_ERROR_BYTES
    ) -> Response:
        """A request to the registry, authorized as it asks; raises _UnauthorizedError when refused."""
        key = (attempt.registry, self._identity(attempt))
        known = self._challenges.get(key)
        authorization = await self._authorization(attempt, known) if known is not None else None

        def request(authorization: str | None) -> Request:
            headers: Headers = (("Accept", manifests.ACCEPT),)
            if authorization is not None:
                headers += (("Authorization", authorization),)
            return Request(method, url, headers, None, max_body, attempt.endpoint.tls, attempt.registry)

        resp = await self._send(attempt, request(authorization))
        if resp.status == 401:
            challenge = pick_challenge(
                parse_www_authenticate(", ".join(resp.header_values("WWW-Authenticate")))
            )
            if challenge is None:
                raise _UnauthorizedError(401)
            if known is not None and challenge == known:
                if challenge.scheme != "bearer":
                    raise _UnauthorizedError(401)  # the same Basic credential again: it is refused
                # revoked or expired early
                self.tokens.drop(
                    token_key(challenge, pull_scope(attempt.endpoint.repository), attempt.credential)
                )
            self._challenges[key] = challenge
            resp = await self._send(attempt, request(await self._authorization(attempt, challenge)))
            if resp.status == 401:
                raise _UnauthorizedError(401)
        if resp.status == 403:
            raise _UnauthorizedError(403)
        return resp

    # -- one exchange as the protocol wants it: redirects followed, failures retried, bodies bounded

    async def _send(self, attempt: _Attempt, request: Request) -> Response:
        """`request` through the transport, following redirects and retrying within the deadline."""
        retries = 0
        redirects = 0
        origin = urllib.parse.urlsplit(request.url).netloc
        while True:
            try:
                resp = await self.transport.send(request)
            except TransportError as e:
                if e.tls:
                    raise ResolutionError(
                        Reason.UNREACHABLE, f"{attempt.image}: TLS with {e.host} failed: {e.detail}"
                    ) from None
                wait = self._backoff(retries)
                if retries >= self.options.max_retries or not self._can_wait(attempt, wait):
                    raise ResolutionError(
                        Reason.UNREACHABLE, f"{attempt.image}: cannot reach {e.host}: {e.detail}"
                    ) from None
                await self._sleep(wait)
                retries += 1
                continue
            except BodyTooLargeError as e:
                raise _too_large(attempt, e.url, e.cap, e.declared) from None
            except ResolutionError as e:  # the host guard refused a host or its addresses
                raise ResolutionError(e.reason, f"{attempt.image}: {e.message}") from None
            if resp.status == 200 and len(resp.body) > request.max_body:
                raise _too_large(attempt, request.url, request.max_body, None)  # a transport that overreads
            self._note_ratelimit(attempt.registry, resp)
            location = resp.header("Location")
            if resp.status in _REDIRECTS and location is not None:
                redirects += 1
                if redirects > self.options.max_redirects:
                    return resp  # the caller reports the loop
                request = _redirected(
                    request, resp.status, urllib.parse.urljoin(request.url, location), origin
                )
                continue
            if resp.status in _RETRYABLE:
                asked = retry_after(resp.header("Retry-After"), now=self._wall_clock())
                pause = self._backoff(retries) if asked is None else asked
                if retries >= self.options.max_retries or not self._can_wait(attempt, pause):
                    return resp  # the caller maps the status (429 rate-limited, 5xx registry error)
                await self._sleep(pause)
                retries += 1
                continue
            return resp

    def _backoff(self, retries: int) -> float:
        return float(min(self.options.backoff_seconds * (2**retries), 2.0))

    def _can_wait(self, attempt: _Attempt, seconds: float) -> bool:
        return self._timer() + seconds < attempt.deadline

    def _note_ratelimit(self, registry: str, resp: Response) -> None:
        value = resp.header("ratelimit-remaining")
        if value is None:
            return
        remaining = _parse_ratelimit(value)
        if remaining is None:
            return
        self.ratelimit_remaining[registry] = remaining
        if self.observer is not None:
            self.observer.on_ratelimit(registry, remaining)


def _loop_time() -> float:
    return asyncio.get_running_loop().time()


def _redirected(request: Request, status: int, url: str, origin: str) -> Request:
    """The request to make at a redirect's target: RFC 9110 15.4 as browsers and containerd apply it."""
    headers, tls = request.headers, request.tls
    if urllib.parse.urlsplit(url).netloc != origin:
        # blob storage (S3, GCS) must not see the registry's credentials, nor its client certificate
        headers = tuple((k, v) for k, v in headers if k.lower() != "authorization")
        tls = None
    method, body = request.method, request.body
    if status == 303:
        method, body = ("HEAD" if method == "HEAD" else "GET"), None
    return replace(request, method=method, url=url, headers=headers, body=body, tls=tls)


def _too_large(attempt: _Attempt, url: str, cap: int, declared: int | None) -> ResolutionError:
    said = f"announces {declared} bytes, more than" if declared is not None else "sent more than"
    return ResolutionError(
        Reason.INVALID_MANIFEST,
        f"{attempt.image}: {attempt.registry} {said} the {cap}-byte limit for {_what(url)}",
    )


def _next_page(link: str, url: str) -> str | None:
    """The `rel="next"` URL of a Link header, only on the host that sent it (no hop elsewhere)."""
    match = _LINK_NEXT.search(link)
    if match is None:
        return None
    following = urllib.parse.urljoin(url, match.group(1))
    same = urllib.parse.urlsplit(following).netloc == urllib.parse.urlsplit(url).netloc
    return following if same and following != url else None


def _what(url: str) -> str:
    path = urllib.parse.urlsplit(url).path
    return "a manifest" if "/manifests/" in path else "a blob" if "/blobs/" in path else "this response"

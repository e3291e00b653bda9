"""A fault-injecting reverse proxy in front of the real registry (loopback only).

Why: the registry itself behaves; the ones in the wild sometimes do not. This proxy forwards to a
real docker-registry and misbehaves on purpose, one way at a time, so each client failure mode is
tested against real HTTP rather than a mock. In "pass" mode it only counts: the request log is how
tests assert HEAD-then-GET behaviour and request counts.

Modes (set `proxy.mode`, optionally `proxy.times` = how many requests misbehave before passing again):
  pass                 forward unchanged
  ignore-accept        manifests: ask upstream with every type, answer with a lying Content-Type
                       (a registry that ignores Accept and mislabels: the body is the truth)
  no-digest-header     drop Docker-Content-Digest (the client must GET by tag and hash the body)
  wrong-digest         manifests/blobs GET: alter the body (whitespace), keep the headers
  wrong-digest-header  HEAD: announce a digest the registry does not have
  oversized            manifests GET: a chunked body past 4,393,216 bytes, no Content-Length
  oversized-declared   manifests GET: Content-Length 50 MB announced
  slow                 manifests GET: headers at once, then the body one byte every `drip` seconds
  429                  429 with Retry-After: `retry_after`
  500                  HTTP 500
  redirect-loop        307 to the same URL, forever
  reject-credentials   401 with a Basic challenge to every request, credentials or not
  ratelimit            pass, plus Docker Hub's ratelimit-remaining header (`ratelimit_remaining`)
  latency              pass, each request (any path) answered `latency` seconds late: a far registry
  down                 every request (any path): the connection is dropped unanswered (recorded as 503)
"""

from __future__ import annotations

import asyncio
import ssl
import threading
from dataclasses import dataclass

import aiohttp
from aiohttp import web

from tests.harness.registry import ALL_MANIFEST_TYPES, BackgroundApp, Registry

MODES = (
    "pass",
    "ignore-accept",
    "no-digest-header",
    "wrong-digest",
    "wrong-digest-header",
    "oversized",
    "oversized-declared",
    "slow",
    "429",
    "500",
    "redirect-loop",
    "reject-credentials",
    "ratelimit",
    "latency",
    "down",
)
_HOP_BY_HOP = {
    "connection",
    "keep-alive",
    "transfer-encoding",
    "te",
    "trailer",
    "upgrade",
    "content-length",
    "host",
    "content-encoding",
}
BOGUS_DIGEST = "sha256:" + "0" * 64


@dataclass(frozen=True)
class Seen:
    method: str
    path: str  # path and query, as the client sent it
    status: int
    authorized: bool  # an Authorization header was present


class FaultProxy:
    """Reverse proxy to `upstream`; `host` is what image references should name instead."""

    def __init__(self, upstream: Registry) -> None:
        self.upstream = upstream
        self.mode = "pass"
        self.times: int | None = None  # None: every matching request misbehaves
        self.retry_after = "1"
        self.drip = 0.5
        self.ratelimit_remaining = "42;w=21600"
        self.latency = 0.2
        self.seen: list[Seen] = []
        self.in_flight = 0  # requests being answered now
        self.max_in_flight = 0  # the most at once since the last set()
        self._lock = threading.Lock()
        self._session: aiohttp.ClientSession | None = None
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._handle)
        app.on_cleanup.append(self._close)
        # A request whose client hung up stops counting as in flight at once (its handler is cancelled
        # on the connection's loss): counted until a later look at the connection, a client that hands
        # the slot of an abandoned request to the next one would seem to exceed its concurrency cap.
        self._server = BackgroundApp(app, "fault-proxy", handler_cancellation=True)

    # -- control (from the test thread)

    def start(self) -> FaultProxy:
        self._server.start()
        return self

    def stop(self) -> None:
        self._server.stop()

    @property
    def host(self) -> str:
        return self._server.host

    def set(self, mode: str, *, times: int | None = None) -> None:
        if mode not in MODES:
            raise ValueError(f"unknown mode {mode!r}")
        with self._lock:
            self.mode, self.times = mode, times
            self.seen = []
            self.max_in_flight = self.in_flight

    def requests(self, *, kind: str = "") -> list[Seen]:
        """What the client asked so far (kind "manifests" or "blobs" filters by path)."""
        with self._lock:
            return [s for s in self.seen if f"/{kind}/" in s.path] if kind else list(self.seen)

    def ref(self, upstream_reference: str) -> str:
        """The same image reference, through the proxy."""
        return upstream_reference.replace(self.upstream.host, self.host, 1)

    # -- serving

    def _fault_now(self, request: web.Request) -> str:
        with self._lock:
            if self.mode == "down" and self.times is None:
                return "down"  # a registry that is down is down for /v2/ and token requests too
        if "/manifests/" not in request.path and "/blobs/" not in request.path:
            return "pass"
        with self._lock:
            if self.times is not None:
                if self.times <= 0:
                    return "pass"
                self.times -= 1
            return self.mode

    async def _close(self, _app: web.Application) -> None:
        if self._session is not None:
            await self._session.close()

    def _client(self) -> aiohttp.ClientSession:
        if self._session is None:
            ctx: ssl.SSLContext | bool = self.upstream.ssl_context() or True
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(ssl=ctx), auto_decompress=False
            )
        return self._session

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        with self._lock:
            self.in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            await self._delay(request)
            mode = self._fault_now(request)
            response = await self._respond(request, mode)
        except asyncio.CancelledError:
            # The client hung up first; still a request the registry got (499: nginx's "client closed").
            with self._lock:
                self.seen.append(
                    Seen(request.method, request.path_qs, 499, "Authorization" in request.headers)
                )
            raise
        finally:
            with self._lock:
                self.in_flight -= 1
        with self._lock:
            self.seen.append(
                Seen(request.method, request.path_qs, response.status, "Authorization" in request.headers)
            )
        return response

    async def _delay(self, request: web.Request) -> None:
        with self._lock:
            delay = self.latency if self.mode == "latency" else 0.0
        # The misbehaviour itself (one slow round trip per request), not synchronisation. It ends when
        # the client hangs up (the handler is cancelled), as a Go registry cancels a request whose client
        # went away: requests a client abandoned at its deadline do not count as in flight.
        if delay > 0:
            await asyncio.sleep(delay)

    async def _respond(self, request: web.Request, mode: str) -> web.StreamResponse:
        if mode == "down":
            if request.transport is not None:
                request.transport.abort()  # RST: what a client sees of a registry host going away
            return web.Response(status=503)  # never delivered: the connection is gone
        if mode == "429":
            return web.Response(
                status=429,
                headers={"Retry-After": self.retry_after},
                text='{"errors":[{"code":"TOOMANYREQUESTS"}]}',
            )
        if mode == "500":
            return web.Response(status=500, text="upstream exploded")
        if mode == "redirect-loop":
            return web.Response(status=307, headers={"Location": request.path_qs})
        if mode == "reject-credentials":
            return web.Response(
                status=401,
                headers={"WWW-Authenticate": 'Basic realm="proxy"'},
                text='{"errors":[{"code":"UNAUTHORIZED"}]}',
            )
        if mode == "oversized-declared" and request.method == "GET" and "/manifests/" in request.path:
            resp = web.StreamResponse(
                status=200, headers={"Content-Type": "application/vnd.oci.image.index.v1+json"}
            )
            resp.content_length = 50_000_000
            await resp.prepare(request)
            await resp.write(b"{")
            return resp  # the client must refuse on the header; we never send the rest

        headers = {k: v for k, v in request.headers.items() if k.lower() not in _HOP_BY_HOP}
        if mode == "ignore-accept" and "/manifests/" in request.path:
            headers["Accept"] = ALL_MANIFEST_TYPES
        body = await request.read()
        url = f"{self.upstream.base_url}{request.path_qs}"
        async with self._client().request(
            request.method, url, headers=headers, data=body or None, allow_redirects=False
        ) as up:
            payload = await up.read()
            out_headers = {k: v for k, v in up.headers.items() if k.lower() not in _HOP_BY_HOP}
            status = up.status
        if mode == "no-digest-header":
            out_headers.pop("Docker-Content-Digest", None)
        if mode == "wrong-digest-header" and request.method == "HEAD":
            out_headers["Docker-Content-Digest"] = BOGUS_DIGEST
        if mode == "ratelimit":
            out_headers["ratelimit-limit"] = "100;w=21600"
            out_headers["ratelimit-remaining"] = self.ratelimit_remaining
        if status == 200 and request.method == "GET":
            if mode == "ignore-accept" and "/manifests/" in request.path:
                out_headers["Content-Type"] = "application/vnd.docker.distribution.manifest.v2+json"
            if mode == "wrong-digest":
                payload = payload + b"\n "
            if mode == "oversized" and "/manifests/" in request.path:
                return await self._stream(request, out_headers, payload, oversized=True)
            if mode == "slow" and "/manifests/" in request.path:
                return await self._stream(request, out_headers, payload, oversized=False)
        if request.method == "HEAD":
            # keep the upstream Content-Length on HEAD (aiohttp would otherwise send 0)
            resp = web.Response(status=status, headers=out_headers)
            if "Content-Length" in up.headers:
                resp.headers["Content-Length"] = up.headers["Content-Length"]
            return resp
        return web.Response(status=status, headers=out_headers, body=payload)

    async def _stream(
        self, request: web.Request, headers: dict[str, str], payload: bytes, *, oversized: bool
    ) -> web.StreamResponse:
        resp = web.StreamResponse(status=200, headers=headers)
        resp.enable_chunked_encoding()
        await resp.prepare(request)
        try:
            if oversized:
                await resp.write(payload[:-1])
                filler = b" " * 65536
                for _ in range(5_000_000 // len(filler)):
                    await resp.write(filler)
                await resp.write(payload[-1:])
            else:
                for i in range(len(payload)):
                    await resp.write(payload[i : i + 1])
                    await asyncio.sleep(self.drip)  # the misbehaviour itself, not synchronisation
            await resp.write_eof()
        except (ConnectionResetError, aiohttp.ClientConnectionResetError):
            pass  # the client gave up, as it should
        return resp

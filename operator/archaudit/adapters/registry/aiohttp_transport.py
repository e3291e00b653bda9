"""The production `Transport`: one aiohttp session for every registry archaudit talks to.

What lives here is what only real sockets can show: the session and its connector, TLS contexts built
from registries.yaml's `tls` settings, the host guard (names and IP literals before connecting, the
addresses DNS returned at connect time via `GuardedResolver`, so DNS rebinding cannot slip past), a
concurrency semaphore per host, and the size cap applied while streaming, so a hostile registry
cannot make archaudit buffer more than the cap. Each `send` is one exchange: redirects and retries
are the client's decisions (client.py says why).
"""

from __future__ import annotations

import asyncio
import ssl
import time
import urllib.parse

import aiohttp
import aiohttp.abc

from archaudit.adapters.registry.safety import GuardedResolver, HostGuard
from archaudit.adapters.registry.transport import (
    MAX_ERROR_BYTES,
    BodyTooLargeError,
    Observer,
    Request,
    Response,
    TransportError,
)
from archaudit.core.mirrors import TLSConfig

__all__ = ["AiohttpTransport"]

_CHUNK = 65536


class AiohttpTransport:
    """`Transport` over aiohttp. Use `async with`, or call `aclose()`; the session opens on first use."""

    def __init__(
        self,
        guard: HostGuard,
        *,
        connect_timeout_seconds: float = 3.0,
        concurrency_per_host: int = 8,
        observer: Observer | None = None,
        resolver: aiohttp.abc.AbstractResolver | None = None,
    ) -> None:
        """`resolver` answers DNS under the host guard's check (aiohttp's default resolver when None;
        tests give one that maps cloud registry names to loopback ports, and nothing else)."""
        self.guard = guard
        self.resolver = resolver
        self.connect_timeout_seconds = connect_timeout_seconds
        self.concurrency_per_host = concurrency_per_host
        self.observer = observer
        self._session: aiohttp.ClientSession | None = None
        self._semaphores: dict[str, asyncio.Semaphore] = {}
        self._ssl: dict[TLSConfig, ssl.SSLContext | bool] = {}
        self._default_ssl: ssl.SSLContext | None = None

    async def __aenter__(self) -> AiohttpTransport:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def send(self, request: Request) -> Response:
        parts = urllib.parse.urlsplit(request.url)
        host = parts.netloc
        # Every host contacted (endpoint, token realm, blob storage a redirect names) gets the deny
        # list and the address rules; the allow list is the client's, for registries users name.
        self.guard.check_target(host)
        ssl_arg = self._ssl_for(request.tls) if parts.scheme == "https" else True
        started = time.perf_counter()
        status: int | None = None
        try:
            async with (
                self._semaphore(host),
                self._http().request(
                    request.method,
                    request.url,
                    headers=dict(request.headers),
                    data=request.body,
                    allow_redirects=False,
                    ssl=ssl_arg,
                ) as resp,
            ):
                status = resp.status
                body = b""
                if request.method != "HEAD":
                    body = await _read_capped(resp, request)
                return Response(status, tuple(resp.headers.items()), body, request.url)
        except (aiohttp.ClientConnectorCertificateError, aiohttp.ClientSSLError) as e:
            raise TransportError(host, _short(e), tls=True) from None
        except (aiohttp.ClientError, OSError) as e:
            raise TransportError(host, _short(e)) from None
        finally:
            if self.observer is not None:
                self.observer.on_request(
                    request.registry, request.method, status, time.perf_counter() - started
                )

    def _http(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            connector = aiohttp.TCPConnector(
                resolver=GuardedResolver(self.guard, self.resolver),
                limit=0,
                ttl_dns_cache=30,
                enable_cleanup_closed=True,
            )
            self._session = aiohttp.ClientSession(
                connector=connector,
                timeout=aiohttp.ClientTimeout(total=None, sock_connect=self.connect_timeout_seconds),
                auto_decompress=True,
                # no proxy from the environment: a proxy would connect where the host guard cannot look
                trust_env=False,
            )
        return self._session

    def _semaphore(self, host: str) -> asyncio.Semaphore:
        sem = self._semaphores.get(host)
        if sem is None:
            sem = self._semaphores[host] = asyncio.Semaphore(self.concurrency_per_host)
        return sem

    def _ssl_for(self, tls: TLSConfig | None) -> ssl.SSLContext | bool:
        if tls is None or tls == TLSConfig():
            if self._default_ssl is None:
                self._default_ssl = ssl.create_default_context()
            return self._default_ssl
        ctx = self._ssl.get(tls)
        if ctx is None:
            if tls.insecure_skip_verify:
                ctx = False  # configured per registry, as k3s does; never a silent fallback
            else:
                context = ssl.create_default_context(cafile=tls.ca_file or None)
                if tls.cert_file:
                    context.load_cert_chain(tls.cert_file, tls.key_file or None)
                ctx = context
            self._ssl[tls] = ctx
        return ctx


async def _read_capped(resp: aiohttp.ClientResponse, request: Request) -> bytes:
    ok = resp.status == 200
    cap = request.max_body if ok else min(request.max_body, MAX_ERROR_BYTES)
    declared = resp.content_length
    if ok and declared is not None and declared > cap:
        raise BodyTooLargeError(request.url, cap, declared)
    chunks: list[bytes] = []
    total = 0
    async for chunk in resp.content.iter_chunked(_CHUNK):
        total += len(chunk)
        if total > cap:
            if not ok:
                break  # an error page: its head is enough
            raise BodyTooLargeError(request.url, cap)
        chunks.append(chunk)
    return b"".join(chunks)


def _short(e: BaseException) -> str:
    """An exception in one line, without credentials (aiohttp messages carry host:port and OS errors only)."""
    if isinstance(e, aiohttp.ClientConnectorError):
        # aiohttp's own text embeds the repr of its SSLContext; the OS error is what people need.
        return f"{e.os_error.strerror or e.os_error}" if e.os_error else type(e).__name__
    text = str(e) or type(e).__name__
    return text.splitlines()[0][:200]

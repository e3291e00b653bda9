"""The seam between the registry protocol and HTTP: one `send(request) -> response` coroutine.

Why a seam (as httpx's transports): everything that decides *what* to ask a registry (Accept types,
HEAD then GET, the token flow, mirrors, redirects, retries, digests) lives in `client.py` and is tested
by handing it an in-memory transport; everything that decides *how bytes move* (the aiohttp session,
TLS contexts, the host guard at connect time, per-registry semaphores, the streamed size cap) lives
behind `Transport.send` in `aiohttp_transport.py` and is tested against real registries.

A transport performs exactly one exchange per `send`: it never follows a redirect or retries, so the
client sees (and decides about) every hop and every failure. Its contract:

- a response to any status, redirects included, with at most `request.max_body` bytes of a 200 body
  (a longer one raises `BodyTooLargeError`); a non-200 body may be cut to its head;
- `TransportError` when no response arrived (DNS, connection, TLS: `tls=True`, which is not retried);
- `ResolutionError(Reason.REFUSED_HOST, ...)` when the host guard refuses the host or its addresses.

Nothing here imports aiohttp: the protocol logic can be read, and run, without it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from archaudit.core.mirrors import TLSConfig

__all__ = [
    "MAX_ERROR_BYTES",
    "BodyTooLargeError",
    "Headers",
    "Observer",
    "Request",
    "Response",
    "Transport",
    "TransportError",
]

# Error bodies are only read for their error code: the head of one is enough.
MAX_ERROR_BYTES = 64 * 1024

Headers = tuple[tuple[str, str], ...]  # in order, names as sent; a name may repeat (WWW-Authenticate)


@dataclass(frozen=True)
class Request:
    """One HTTP exchange to make."""

    method: str
    url: str
    headers: Headers = ()
    body: bytes | None = None
    max_body: int = MAX_ERROR_BYTES  # the largest 200 body accepted (a manifest, a config blob)
    tls: TLSConfig | None = None  # the endpoint's TLS settings; None: system trust store
    registry: str = ""  # host[:port] of the registry this is for: the observer's label, not the URL's host

    def header(self, name: str) -> str | None:
        return _first(self.headers, name)


@dataclass(frozen=True)
class Response:
    """What came back; `url` is the URL that answered (the request's: a transport follows nothing)."""

    status: int
    headers: Headers
    body: bytes
    url: str

    def header(self, name: str) -> str | None:
        """The first value of header `name` (case-insensitive), or None."""
        return _first(self.headers, name)

    def header_values(self, name: str) -> list[str]:
        """Every value of header `name`, in order (a registry may send several WWW-Authenticate)."""
        lowered = name.lower()
        return [v for k, v in self.headers if k.lower() == lowered]


def _first(headers: Headers, name: str) -> str | None:
    lowered = name.lower()
    return next((v for k, v in headers if k.lower() == lowered), None)


class TransportError(Exception):
    """No response: the host could not be reached (`tls`: the TLS handshake failed, do not retry).

    `detail` is one line for people, without credentials (it names hosts and OS errors only).
    """

    def __init__(self, host: str, detail: str, *, tls: bool = False) -> None:
        super().__init__(f"{host}: {detail}")
        self.host = host
        self.detail = detail
        self.tls = tls


class BodyTooLargeError(Exception):
    """A 200 body longer than the request's `max_body`: announced (`declared`) or found while streaming."""

    def __init__(self, url: str, cap: int, declared: int | None = None) -> None:
        super().__init__(f"{url}: more than {cap} bytes")
        self.url = url
        self.cap = cap
        self.declared = declared


class Transport(Protocol):
    """One exchange per call; see the module docstring for what a transport promises."""

    async def send(self, request: Request) -> Response: ...

    async def aclose(self) -> None: ...


class Observer(Protocol):
    """What metrics.py wants to know. Called synchronously: keep it cheap."""

    def on_request(self, registry: str, method: str, status: int | None, seconds: float) -> None:
        """One HTTP exchange with `registry` (host[:port]); status None = no answer (connection error)."""

    def on_ratelimit(self, registry: str, remaining: int) -> None:
        """Docker Hub's `ratelimit-remaining` as last seen for `registry`."""

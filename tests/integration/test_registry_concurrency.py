"""The per-registry cap holds while callers abandon requests at their deadline (issue 16).

The slow-registry fault case once saw 10-11 requests in flight at its proxy with a cap of 8: callers
(reviews at the webhook's deadline) abandon requests, and the semaphore slot goes to the next request
at once. Whether the registry then really has more than 8 at once is a question about sockets, so
it is asked of a server that counts exactly: a request is in flight from its arrival until it is
answered or its connection is lost (event-driven, as a Go registry cancels on a client going away).
The answer here: never more than the cap. (The 10-11 were the proxy looking at the connection only
every 50 ms; it now counts on the connection's loss.)
"""

from __future__ import annotations

import asyncio
import contextlib
import random

import pytest

from archaudit.adapters.registry.aiohttp_transport import AiohttpTransport
from archaudit.adapters.registry.safety import HostGuard
from archaudit.adapters.registry.transport import Request, TransportError

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]

CAP = 8
ANSWER_SECONDS = 0.3  # the registry's latency
DEADLINE_SECONDS = 0.35  # the callers': most requests that wait for a slot are abandoned mid-flight
LOAD_SECONDS = 4.0


class _Counting(asyncio.Protocol):
    """One connection of a slow HTTP/1.1 server that counts requests in flight exactly."""

    active = 0
    most = 0
    requests = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        self.buffer = b""
        self.busy = False
        self.answer: asyncio.Task[None] | None = None

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        if b"\r\n\r\n" in self.buffer and not self.busy:
            self.buffer = b""
            self.busy = True
            cls = type(self)
            cls.requests += 1
            cls.active += 1
            cls.most = max(cls.most, cls.active)
            self.answer = asyncio.ensure_future(self._answer())

    async def _answer(self) -> None:
        await asyncio.sleep(ANSWER_SECONDS)  # the slow registry itself, not a synchronisation
        self._done()
        self.transport.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}")

    def _done(self) -> None:
        if self.busy:
            self.busy = False
            type(self).active -= 1

    def connection_lost(self, exc: Exception | None) -> None:
        if self.answer is not None:
            self.answer.cancel()
        self._done()


async def test_abandoned_requests_never_put_more_than_the_cap_in_flight() -> None:
    server = await asyncio.get_running_loop().create_server(_Counting, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    transport = AiohttpTransport(HostGuard(), concurrency_per_host=CAP)
    abandoned = 0

    async def caller(i: int) -> None:
        nonlocal abandoned
        request = Request("GET", f"http://127.0.0.1:{port}/v2/app/manifests/{i}", registry="r")
        try:
            await asyncio.wait_for(transport.send(request), DEADLINE_SECONDS)
        except TimeoutError:
            abandoned += 1
        except TransportError:
            pass

    calls: list[asyncio.Task[None]] = []
    try:
        loop = asyncio.get_running_loop()
        end = loop.time() + LOAD_SECONDS
        i = 0
        while loop.time() < end:
            calls.append(asyncio.ensure_future(caller(i)))
            i += 1
            await asyncio.sleep(random.uniform(0, 0.01))  # arrival pacing of the load
        await asyncio.gather(*calls)
    finally:
        for call in calls:
            call.cancel()
        with contextlib.suppress(Exception):
            await transport.aclose()
        server.close()
        await server.wait_closed()
    assert _Counting.requests > 4 * CAP  # the cap was busy throughout
    assert abandoned > CAP  # and requests were abandoned mid-flight, many times
    assert _Counting.most <= CAP, f"{_Counting.most} requests in flight at once, cap {CAP}"

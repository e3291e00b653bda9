"""A TCP forwarder on loopback that can be shut and opened again: an apiserver that goes away.

Why: killing the real kube-apiserver takes the whole cluster fixture down with it; a test of how one
client rides out an outage only needs that client's connections to fail. Shut, every open connection
is aborted and every new one is accepted and reset at once (what a client sees of a restarting
apiserver); open, bytes flow both ways unchanged (TLS included: the forwarder never reads them).
"""

from __future__ import annotations

import asyncio
import threading


class TcpGate:
    def __init__(self, upstream_host: str, upstream_port: int) -> None:
        self.upstream = (upstream_host, upstream_port)
        self.port = 0
        self.is_open = True
        self.refused = 0  # connections reset while shut
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._writers: set[asyncio.StreamWriter] = set()
        self._server: asyncio.Server | None = None
        self._thread = threading.Thread(target=self._run, name="tcp-gate", daemon=True)

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    def start(self) -> TcpGate:
        self._thread.start()
        if not self._ready.wait(10):
            raise RuntimeError("tcp gate did not start")
        return self

    def shut(self) -> None:
        """From now on no byte passes; connections already open are aborted."""
        self._call(self._shut)

    def open(self) -> None:
        self._call(self._open)

    def stop(self) -> None:
        self._call(self._shut)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)

    def _call(self, fn: object) -> None:
        assert callable(fn)
        done = threading.Event()

        def run() -> None:
            fn()
            done.set()

        self._loop.call_soon_threadsafe(run)
        if not done.wait(10):
            raise RuntimeError("tcp gate did not answer")

    def _shut(self) -> None:
        self.is_open = False
        for writer in list(self._writers):
            writer.transport.abort()
        self._writers.clear()

    def _open(self) -> None:
        self.is_open = True

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        self._server = self._loop.run_until_complete(asyncio.start_server(self._serve, "127.0.0.1", 0))
        self.port = int(self._server.sockets[0].getsockname()[1])
        self._ready.set()
        self._loop.run_forever()
        self._server.close()
        self._loop.close()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if not self.is_open:
            self.refused += 1
            writer.transport.abort()
            return
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.upstream)
        except OSError:
            writer.transport.abort()
            return
        self._writers |= {writer, up_writer}
        await asyncio.gather(_pipe(reader, up_writer), _pipe(up_reader, writer))
        self._writers -= {writer, up_writer}


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while chunk := await reader.read(65536):
            writer.write(chunk)
            await writer.drain()
    except (ConnectionError, OSError):
        pass
    finally:
        writer.close()

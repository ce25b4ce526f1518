"""A TCP proxy to put between the gateway and a server, and break on purpose.

This is how a network partition or a database failover looks from the gateway: every
connection drops at once (``kill``), or stops answering without closing (``blackhole``), and
the address comes back later (``restart``, ``heal``). It runs its own event loop in a thread,
so a test can drive it while the gateway under test runs elsewhere.

    with TcpProxy("127.0.0.1", 5432) as proxy:
        url = f"postgresql://postgres@127.0.0.1:{proxy.port}/db"
        ...
        proxy.kill()      # every connection reset, the port closed
        proxy.restart()   # listening again on the same port
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Coroutine
from typing import Any, TypeVar

from tests.support.processes import free_port

T = TypeVar("T")
_CHUNK = 64 * 1024


class TcpProxy:
    def __init__(self, target_host: str, target_port: int) -> None:
        assert target_host in ("127.0.0.1", "::1", "localhost"), "loopback only"
        self.target = (target_host, target_port)
        self.port = free_port()
        self.accepted = 0
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._server: asyncio.Server | None = None
        self._transports: set[asyncio.Transport] = set()
        self._flowing = asyncio.Event()

    def __enter__(self) -> TcpProxy:
        return self.start()

    def __exit__(self, *_exc: object) -> None:
        self.stop()

    @property
    def open_connections(self) -> int:
        return len(self._transports) // 2

    def start(self) -> TcpProxy:
        self._thread.start()
        self._call(self._set_flowing(True))
        self.restart()
        return self

    def restart(self) -> None:
        """Listen again (on the same port) after ``kill``."""
        self._call(self._listen())

    def kill(self) -> None:
        """Close the port and reset every connection through it, as a crashed server or a
        failover does."""
        self._call(self._kill())

    def blackhole(self) -> None:
        """Keep every connection open but stop moving bytes: a partition with no close."""
        self._call(self._set_flowing(False))

    def heal(self) -> None:
        self._call(self._set_flowing(True))

    def stop(self) -> None:
        if not self._thread.is_alive():
            return
        self._call(self._kill())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=5)
        self._loop.close()

    def _call(self, coroutine: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop).result(timeout=10)

    async def _set_flowing(self, flowing: bool) -> None:
        if flowing:
            self._flowing.set()
        else:
            self._flowing.clear()

    async def _listen(self) -> None:
        if self._server is None:
            self._server = await asyncio.start_server(
                self._handle, "127.0.0.1", self.port, reuse_address=True
            )

    async def _kill(self) -> None:
        if self._server is not None:
            self._server.close()
            self._server = None
        for transport in list(self._transports):
            transport.abort()
        self._transports.clear()

    async def _handle(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        self.accepted += 1
        try:
            server_r, server_w = await asyncio.open_connection(*self.target)
        except OSError:
            client_w.transport.abort()
            return
        pair = {client_w.transport, server_w.transport}
        self._transports |= pair
        try:
            await asyncio.gather(self._pipe(client_r, server_w), self._pipe(server_r, client_w))
        finally:
            for transport in pair:
                transport.abort()
            self._transports -= pair

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(OSError, asyncio.IncompleteReadError):
            while True:
                data = await reader.read(_CHUNK)
                if not data:
                    break
                await self._flowing.wait()
                writer.write(data)
                await writer.drain()
        with contextlib.suppress(OSError):
            writer.transport.abort()

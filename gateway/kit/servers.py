"""Running uvicorn servers inside a program (the demo runs gateway and simulator in one loop)."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import Iterator

import uvicorn
from starlette.types import ASGIApp

from gateway.kit.http_protocol import GatewayHttpProtocol


class EmbeddedServer(uvicorn.Server):
    """A uvicorn server that leaves signal handling to its owner.

    uvicorn installs process-wide SIGINT/SIGTERM handlers per server; with two servers in one
    loop the second would silently replace the first's, so the owner handles signals instead.
    """

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield

    @classmethod
    def for_app(cls, app: ASGIApp) -> EmbeddedServer:
        config = uvicorn.Config(
            app,
            log_config=None,
            access_log=False,
            server_header=False,
            lifespan="on",
            http=GatewayHttpProtocol,
        )
        return cls(config)

    async def start(self, sock: socket.socket) -> asyncio.Task[None]:
        """Start serving on ``sock``; returns once the server accepts connections."""
        task = asyncio.create_task(self.serve(sockets=[sock]))
        while not self.started:
            if task.done():
                task.result()  # re-raises the startup failure
                raise RuntimeError("server exited during startup")
            await asyncio.sleep(0.01)
        return task


def bind_socket(host: str = "127.0.0.1", port: int = 0) -> socket.socket:
    """A listening-ready TCP socket; port 0 picks a free one (read it from ``getsockname``)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError:
        sock.close()
        raise
    sock.set_inheritable(True)
    return sock

"""Real servers over loopback for tests: uvicorn in a background thread."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from starlette.applications import Starlette
from starlette.routing import Route
from starlette.types import ASGIApp

from gateway.kit.servers import EmbeddedServer, bind_socket


class ServerThread:
    def __init__(self, app: ASGIApp, port: int = 0) -> None:
        self.server = EmbeddedServer.for_app(app)
        self.server.config.timeout_graceful_shutdown = 2
        self.socket = bind_socket(port=port)
        self.port: int = self.socket.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self._thread = threading.Thread(
            target=self.server.run, kwargs={"sockets": [self.socket]}, daemon=True
        )

    def start(self) -> ServerThread:
        self._thread.start()
        deadline = time.monotonic() + 20
        while not self.server.started:
            if not self._thread.is_alive():
                raise RuntimeError("server thread died during startup")
            if time.monotonic() > deadline:
                raise RuntimeError("server did not start within 20 s")
            time.sleep(0.01)
        return self

    def stop(self) -> None:
        self.server.should_exit = True
        self._thread.join(timeout=15)
        self.socket.close()


@contextmanager
def running(app: ASGIApp, port: int = 0) -> Iterator[ServerThread]:
    """``app`` served on ``port`` (0: a free one) until the block ends."""
    server = ServerThread(app, port).start()
    try:
        yield server
    finally:
        server.stop()


StartGateway = Callable[..., ServerThread]
"""The ``start_gateway`` fixture: ``start_gateway(transport=..., **settings)`` starts a gateway."""


@contextmanager
def serving(
    path: str, endpoint: Callable[..., Any], *, methods: list[str] | None = None
) -> Iterator[str]:
    """A server with the one route ``path`` (a webhook receiver, a JWKS endpoint); yields the
    route's URL."""
    app = Starlette(routes=[Route(path, endpoint, methods=methods)])
    with running(app) as server:
        yield server.url + path

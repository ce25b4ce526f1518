"""Graceful drain on SIGTERM (PRODUCT §12), for a process that serves nothing else.

The first SIGTERM does not stop the server at once. Readiness answers 503 from that moment
(``DRAIN.draining``), and every response says ``Connection: close``, so a load balancer takes
the replica out of rotation and clients reconnect elsewhere. The listener keeps accepting for
``pause`` seconds, because a load balancer notices a failed probe only after a while. Then
uvicorn's own shutdown runs: it stops accepting, lets the requests in flight finish (a submit
already forwarded records its upstream answer), and runs the application's shutdown (the
outbox flush). A second SIGTERM, or SIGINT, stops at once, as uvicorn does.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import signal
import time
from dataclasses import dataclass
from types import FrameType
from typing import Any

logger = logging.getLogger(__name__)


@dataclass
class Drain:
    draining: bool = False
    since: float | None = None
    """``time.monotonic()`` of the SIGTERM that started the drain."""


DRAIN = Drain()
"""This process's drain state (one per process: it follows the process's signals)."""


def install_drain_on_sigterm(loop: asyncio.AbstractEventLoop, pause: float) -> None:
    """Wrap the SIGTERM handler the server installed (call from the main thread, once the
    server handles signals: in the application's startup)."""
    stop_server: Any = signal.getsignal(signal.SIGTERM)
    if not callable(stop_server):
        logger.warning("no SIGTERM handler to wrap; the drain pause is off")
        return

    def on_sigterm(sig: int, frame: FrameType | None) -> None:
        if DRAIN.draining:
            stop_server(sig, frame)  # asked twice: stop now
            return
        DRAIN.draining = True
        DRAIN.since = time.monotonic()
        logger.info("SIGTERM: draining for %.1f s, then shutting down", pause)
        loop.call_soon_threadsafe(
            loop.call_later, pause, functools.partial(stop_server, sig, frame)
        )

    signal.signal(signal.SIGTERM, on_sigterm)

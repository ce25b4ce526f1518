"""Background work that repeats until the application stops."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable

logger = logging.getLogger(__name__)


async def run_periodically(
    name: str, interval: float, work: Callable[[], Awaitable[None]], stop: asyncio.Event
) -> None:
    """Run ``work`` every ``interval`` seconds until ``stop`` is set. A failed run is logged
    and the next one tries again; ``stop`` interrupts the wait, never a run in progress."""
    while not stop.is_set():
        try:
            await work()
        except Exception:
            logger.exception("background task %s failed", name)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), timeout=interval)

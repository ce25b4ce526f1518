"""``gateway serve``'s processes freeze their startup heap and raise the young-generation
threshold (``gateway.kit.heap``): measured at about 100 µs of CPU per request saved. Checked in
a process of its own, as the factory ``gateway serve`` runs builds it (an app a test builds with
``create_app`` leaves the test process's collector alone: ``own_process`` is off)."""

from __future__ import annotations

import subprocess
import sys

from gateway.kit.heap import YOUNG_THRESHOLD
from tests.support.commands import environment_without_gateway

_PROBE = """
import asyncio, gc
from gateway.app import create_app_from_env

app = create_app_from_env()

async def main():
    frozen_before = gc.get_freeze_count()
    async with app.router.lifespan_context(app):
        print(frozen_before, gc.get_freeze_count(), gc.get_threshold()[0])

asyncio.run(main())
"""


def test_the_served_process_freezes_its_startup_heap(sqlite_url: str) -> None:
    env = environment_without_gateway(
        GATEWAY_DATABASE_URL=sqlite_url,
        GATEWAY_LOG_LEVEL="ERROR",
        GATEWAY_RECONCILER_ENABLED="false",
    )
    probe = subprocess.run(
        [sys.executable, "-c", _PROBE], env=env, capture_output=True, text=True, timeout=60
    )
    assert probe.returncode == 0, probe.stderr[-2000:]
    before, after, threshold = map(int, probe.stdout.split())
    assert before == 0
    assert after > 10_000  # the catalog, the ORM's metadata, FastAPI's routes...
    assert threshold == YOUNG_THRESHOLD

"""Probes and failing closed: /healthz, /readyz, and 503 when the database is unreachable."""

from __future__ import annotations

import socket

import httpx

from tests.conftest import SUBMIT_PATH, SimulatorProbe, StartGateway
from tests.support.database import create_postgres_database, drop_postgres_database
from tests.support.tenants import Tenant


def test_health_and_readiness(gateway: httpx.Client, simulator: SimulatorProbe) -> None:
    assert gateway.get("/healthz").json() == {"status": "ok"}
    ready = gateway.get("/readyz")
    assert ready.status_code == 200
    assert ready.json() == {"status": "ready", "checks": {"database": "ok", "schema": "current"}}


def test_not_ready_when_schema_is_missing(start_gateway: StartGateway, postgres_url: str) -> None:
    empty = create_postgres_database(migrated=False)
    try:
        server = start_gateway(database_url=empty)
        ready = httpx.get(f"{server.url}/readyz")
        assert ready.status_code == 503
        assert ready.json()["checks"]["database"] == "ok"
        assert ready.json()["checks"]["schema"].startswith("behind")
        server.stop()
    finally:
        drop_postgres_database(empty)


def test_database_down_fails_closed_with_503(
    start_gateway: StartGateway, simulator: SimulatorProbe, tenant: Tenant
) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        closed_port = probe.getsockname()[1]
    server = start_gateway(database_url=f"postgresql://postgres@127.0.0.1:{closed_port}/gateway")
    with httpx.Client(base_url=server.url, timeout=30) as client:
        submitted = client.post(
            SUBMIT_PATH,
            json={"model": "grok-imagine-video-1-5", "prompt": "x"},
            headers=tenant.headers,
        )
        polled = client.get("/v1/jobs/job_abc", headers=tenant.headers)
        ready = client.get("/readyz")
        alive = client.get("/healthz")
    for response in (submitted, polled):
        assert response.status_code == 503
        assert response.json()["error"]["code"] == "ledger_unavailable"
    assert ready.status_code == 503
    assert ready.json()["checks"]["database"] == "unreachable"
    assert alive.status_code == 200
    assert simulator.requests() == []

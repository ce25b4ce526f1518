"""Probes and failing closed: /healthz, /readyz, and 503 when the database is unreachable."""

from __future__ import annotations

import httpx
import pytest

from tests.support.api import submit
from tests.support.database import create_postgres_database, drop_postgres_database
from tests.support.processes import free_port
from tests.support.servers import StartGateway
from tests.support.simulator import SimulatorProbe
from tests.support.tenants import Tenant


def test_health_and_readiness(gateway: httpx.Client, simulator: SimulatorProbe) -> None:
    assert gateway.get("/healthz").json() == {"status": "ok"}
    ready = gateway.get("/readyz")
    assert ready.status_code == 200
    assert ready.json() == {
        "status": "ready",
        "checks": {"database": "ok", "schema": "current", "upstream": "reachable"},
    }


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
    closed_port = free_port()  # nothing listens on it
    server = start_gateway(database_url=f"postgresql://postgres@127.0.0.1:{closed_port}/gateway")
    with httpx.Client(base_url=server.url, timeout=30) as client:
        submitted = submit(client, tenant, "x")
        polled = client.get("/v1/jobs/job_abc", headers=tenant.headers)
        ready = client.get("/readyz")
        alive = client.get("/healthz")
    for response in (submitted, polled):
        assert response.status_code == 503
        assert response.json()["error"]["code"] == "ledger_unavailable"
    assert ready.status_code == 503
    assert ready.json()["checks"]["database"] == "unreachable"
    assert ready.json()["checks"]["upstream"] == "reachable"  # reported, whatever the database
    assert alive.status_code == 200
    assert simulator.requests() == []


class _DriverError(Exception):
    def __init__(self, sqlstate: str) -> None:
        super().__init__(sqlstate)
        self.sqlstate = sqlstate


@pytest.mark.parametrize(
    ("sqlstate", "unavailable"),
    [
        ("53300", True),  # too many clients
        ("08006", True),  # connection failure
        ("57P01", True),  # admin shutdown
        ("3D000", True),  # database does not exist
        ("23505", False),  # unique violation: a bug or a race, not an outage
        ("42P01", False),  # undefined table: a bug
    ],
)
def test_database_outages_are_told_from_bugs(sqlstate: str, unavailable: bool) -> None:
    from sqlalchemy.exc import DBAPIError

    from gateway.db.errors import is_database_unavailable

    error = DBAPIError("SELECT 1", None, _DriverError(sqlstate))
    assert is_database_unavailable(error) is unavailable


def test_pool_exhaustion_is_unavailability() -> None:
    from sqlalchemy.exc import TimeoutError as PoolTimeout

    from gateway.db.errors import is_database_unavailable

    assert is_database_unavailable(PoolTimeout("QueuePool limit reached")) is True

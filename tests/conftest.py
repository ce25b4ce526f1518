"""Fixtures: a fresh Postgres database and a SQLite file per run, the real simulator and real
gateway servers over loopback. Postgres is required in CI (``CI=true``): there, an unreachable
server fails the run instead of skipping.

Fixtures only: the helpers they use live in ``tests.support`` and are imported from there."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from gateway.app import create_app
from gateway.upstream.simulator import SimulatorConfig, create_simulator_app
from tests.support.database import (
    create_postgres_database,
    drop_postgres_database,
    migrate,
    postgres_reachable,
    server_url,
)
from tests.support.environment import unavailable
from tests.support.servers import ServerThread, StartGateway, running
from tests.support.settings import gateway_settings
from tests.support.simulator import UPSTREAM_KEY, SimulatorProbe
from tests.support.tenants import Tenant, make_tenant


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    problem = postgres_reachable()
    if problem is not None:
        unavailable(
            f"PostgreSQL at {server_url()} is unreachable ({problem})",
            "Postgres tests SKIPPED; set GATEWAY_TEST_DATABASE_URL",
        )
    url = create_postgres_database()
    yield url
    drop_postgres_database(url)


@pytest.fixture(scope="session")
def sqlite_url(tmp_path_factory: pytest.TempPathFactory) -> str:
    url = f"sqlite+aiosqlite:///{tmp_path_factory.mktemp('sqlite') / 'gateway.db'}"
    migrate(url)
    return url


@pytest.fixture(params=["postgres", "sqlite"])
def database_url(request: pytest.FixtureRequest) -> str:
    """Storage tests run once per supported database."""
    url: str = request.getfixturevalue(f"{request.param}_url")
    return url


@pytest.fixture(scope="session")
def simulator_server() -> Iterator[ServerThread]:
    app = create_simulator_app(SimulatorConfig(api_key=UPSTREAM_KEY, hang_seconds=3.0))
    with running(app) as server:
        yield server


@pytest.fixture
def simulator(simulator_server: ServerThread) -> Iterator[SimulatorProbe]:
    probe = SimulatorProbe(simulator_server.url)
    probe.reset()
    yield probe
    probe.http.close()


@pytest.fixture(scope="session")
def gateway_server(postgres_url: str, simulator_server: ServerThread) -> Iterator[ServerThread]:
    """The default gateway: Postgres ledger, simulator upstream, default settings."""
    with running(create_app(gateway_settings(postgres_url, simulator_server.url))) as server:
        yield server


@pytest.fixture
def gateway(gateway_server: ServerThread, simulator: SimulatorProbe) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=gateway_server.url, timeout=30) as client:
        yield client


@pytest.fixture
def tenant(postgres_url: str) -> Tenant:
    return make_tenant(postgres_url)


@pytest.fixture
def start_gateway(postgres_url: str, simulator_server: ServerThread) -> Iterator[StartGateway]:
    """Start a gateway with other settings: ``start_gateway(upstream_url=..., transport=...)``."""
    started: list[ServerThread] = []

    def _start(
        *, transport: httpx.AsyncBaseTransport | None = None, **overrides: Any
    ) -> ServerThread:
        overrides.setdefault("database_url", postgres_url)
        overrides.setdefault("upstream_url", simulator_server.url)
        settings = gateway_settings(**overrides)
        server = ServerThread(create_app(settings, upstream_transport=transport)).start()
        started.append(server)
        return server

    yield _start
    for server in started:
        server.stop()

"""Fixtures: a fresh Postgres database and a SQLite file per run, the real simulator and real
gateway servers over loopback. Postgres is required in CI (``CI=true``): there, an unreachable
server fails the run instead of skipping.

The fast tier (``@pytest.mark.fast``, ``make test-fast``): ``db`` (each database) and
``postgres_db`` give a service-level test a database of that tier's own, migrated once per
run, inside one transaction that is rolled back after the test (``tests.support.savepoint``).

Fixtures only: the helpers they use live in ``tests.support`` and are imported from there."""

from __future__ import annotations

import asyncio
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
    require_postgres,
    server_url,
)
from tests.support.pgbouncer import THROUGH_PGBOUNCER, route_gateways_through_pgbouncer
from tests.support.savepoint import (
    SavepointDatabase,
    SavepointEngine,
    savepoint_database,
    savepoint_engine,
)
from tests.support.servers import ServerThread, StartGateway, running
from tests.support.settings import gateway_settings
from tests.support.simulator import UPSTREAM_KEY, SimulatorProbe
from tests.support.tenants import Tenant, make_tenant


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    require_postgres()
    url = create_postgres_database()
    yield url
    drop_postgres_database(url)


@pytest.fixture(scope="session", autouse=True)
def _gateways_through_pgbouncer() -> Iterator[None]:
    """``GATEWAY_TEST_THROUGH_PGBOUNCER=1``: every gateway this run starts talks to Postgres
    through one PgBouncer in transaction mode (``tests.support.pgbouncer``)."""
    if not THROUGH_PGBOUNCER:
        yield
        return
    require_postgres()
    with route_gateways_through_pgbouncer(server_url()):
        yield


@pytest.fixture(scope="session")
def sqlite_url(tmp_path_factory: pytest.TempPathFactory) -> str:
    url = f"sqlite+aiosqlite:///{tmp_path_factory.mktemp('sqlite') / 'gateway.db'}"
    migrate(url)
    return url


@pytest.fixture(scope="session")
def savepoint_runner() -> Iterator[asyncio.Runner]:
    """The fast tier's event loop, for the whole run. Given a loop factory, the runner never
    makes it the thread's current loop, which pytest-asyncio's tests keep for their own."""
    with asyncio.Runner(loop_factory=asyncio.new_event_loop) as runner:
        yield runner


@pytest.fixture(scope="session")
def savepoint_postgres(savepoint_runner: asyncio.Runner) -> Iterator[SavepointEngine]:
    """The fast tier's Postgres database: migrated once, never committed to."""
    require_postgres()
    url = create_postgres_database()
    try:
        with savepoint_engine(url, savepoint_runner) as shared:
            yield shared
    finally:
        drop_postgres_database(url)


@pytest.fixture(scope="session")
def savepoint_sqlite(
    tmp_path_factory: pytest.TempPathFactory, savepoint_runner: asyncio.Runner
) -> Iterator[SavepointEngine]:
    """The fast tier's SQLite file: migrated once, never committed to."""
    url = f"sqlite+aiosqlite:///{tmp_path_factory.mktemp('fast') / 'fast.db'}"
    migrate(url)
    with savepoint_engine(url, savepoint_runner) as shared:
        yield shared


@pytest.fixture(params=["postgres", "sqlite"])
def db(request: pytest.FixtureRequest) -> Iterator[SavepointDatabase]:
    """Fast tier: a service-level test once per supported database, inside a transaction
    rolled back after it."""
    shared: SavepointEngine = request.getfixturevalue(f"savepoint_{request.param}")
    with savepoint_database(shared, request.node) as database:
        yield database


@pytest.fixture
def postgres_db(
    request: pytest.FixtureRequest, savepoint_postgres: SavepointEngine
) -> Iterator[SavepointDatabase]:
    """Fast tier, Postgres only: ``db`` for a test that runs on Postgres alone."""
    with savepoint_database(savepoint_postgres, request.node) as database:
        yield database


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

"""Fixtures: a fresh Postgres database and a SQLite file per run, the real simulator and real
gateway servers over loopback. Postgres is required in CI (``CI=true``): there, an unreachable
server fails the run instead of skipping."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest
from pydantic import SecretStr

from gateway.app import create_app
from gateway.config import Settings
from gateway.upstream.simulator import SimulatorConfig, create_simulator_app
from tests.support.database import (
    create_postgres_database,
    drop_postgres_database,
    migrate,
    postgres_reachable,
    server_url,
)
from tests.support.servers import ServerThread, running
from tests.support.tenants import PEPPER, Tenant, make_tenant

# Distinctive, so a test can search every response and log line for it.
UPSTREAM_KEY = "sk-upstream-SECRET-4b1d7e9c2a6f8053"
SUBMIT_PATH = "/v1/videos/generations"


def in_ci() -> bool:
    return os.environ.get("CI", "").lower() == "true"


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    problem = postgres_reachable()
    if problem is not None:
        message = f"PostgreSQL at {server_url()} is unreachable ({problem})"
        if in_ci():
            pytest.fail(f"{message}: CI requires it", pytrace=False)
        pytest.skip(f"!!! {message}: Postgres tests SKIPPED; set GATEWAY_TEST_DATABASE_URL")
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


class SimulatorProbe:
    """Reads the simulator's own record of what reached it."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.http = httpx.Client(base_url=url, timeout=10)

    def reset(self) -> None:
        self.http.post("/_simulator/reset").raise_for_status()

    def requests(self) -> list[dict[str, Any]]:
        response = self.http.get("/_simulator/requests")
        response.raise_for_status()
        records: list[dict[str, Any]] = response.json()["requests"]
        return records

    def submits(self) -> list[dict[str, Any]]:
        return [r for r in self.requests() if r["method"] == "POST" and r["path"] == SUBMIT_PATH]

    def usage(self) -> dict[str, Any]:
        response = self.http.get("/_simulator/usage")
        response.raise_for_status()
        usage: dict[str, Any] = response.json()
        return usage


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


def gateway_settings(database_url: str, upstream_url: str, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "database_url": database_url,
        "upstream_url": upstream_url,
        "upstream_api_key": SecretStr(UPSTREAM_KEY),
        "key_pepper": SecretStr(PEPPER),
        "upstream_read_timeout_seconds": 5.0,
        "log_format": "json",
        # Tests run the reconciler explicitly (or enable it) so that timing never decides.
        "reconciler_enabled": False,
    }
    values.update(overrides)
    return Settings(_env_file=None, **values)


# Overrides that let a reconcile pass release unanswered submits at once: the release timeout
# must exceed the longest a submit can be in flight (the settings refuse it otherwise).
RELEASE_AT_ONCE: dict[str, float] = {
    "unanswered_submit_release_after_seconds": 0.01,
    "upstream_connect_timeout_seconds": 0.001,
    "upstream_write_timeout_seconds": 0.001,
    "upstream_read_timeout_seconds": 0.001,
    "upstream_pool_timeout_seconds": 0.001,
}


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


StartGateway = Callable[..., ServerThread]


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

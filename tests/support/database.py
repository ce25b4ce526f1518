"""Throwaway databases for a test run: a fresh Postgres database and a SQLite file, migrated."""

from __future__ import annotations

import asyncio
import os
import uuid
from dataclasses import dataclass

import asyncpg
from sqlalchemy.engine import make_url

from gateway.db.engine import create_engine
from gateway.db.migrations import upgrade_to_head
from tests.support.environment import unavailable

DEFAULT_SERVER_URL = "postgresql://postgres@127.0.0.1:5432/postgres"


def server_url() -> str:
    return os.environ.get("GATEWAY_TEST_DATABASE_URL", DEFAULT_SERVER_URL)


def asyncpg_dsn(url: str) -> str:
    """A SQLAlchemy database URL as the DSN plain asyncpg connects with."""
    return make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)


async def _execute(url: str, *statements: str, timeout: float = 60) -> None:
    connection = await asyncpg.connect(asyncpg_dsn(url), timeout=timeout)
    try:
        for statement in statements:
            await connection.execute(statement)
    finally:
        await connection.close()


async def _admin(sql: str) -> None:
    await _execute(server_url(), sql, timeout=5)


def admin_sql(sql: str) -> None:
    """Run one statement on the test server's maintenance database."""
    asyncio.run(_admin(sql))


def execute_sql(url: str, *statements: str) -> None:
    """Run ``statements`` in turn on the Postgres database at ``url``, each committing on its
    own (plain asyncpg, none of the gateway's code)."""
    asyncio.run(_execute(url, *statements))


def postgres_reachable() -> str | None:
    """None when the test server answers, else why not."""
    try:
        asyncio.run(_admin("SELECT 1"))
    except Exception as exc:
        return f"{type(exc).__name__}: {exc}"
    return None


def require_postgres() -> None:
    """Skip the test (fail it in CI) unless the test server answers."""
    problem = postgres_reachable()
    if problem is not None:
        unavailable(
            f"PostgreSQL at {server_url()} is unreachable ({problem})",
            "Postgres tests SKIPPED; set GATEWAY_TEST_DATABASE_URL",
        )


def create_postgres_database(*, migrated: bool = True) -> str:
    name = f"gw_test_{uuid.uuid4().hex[:12]}"
    asyncio.run(_admin(f'CREATE DATABASE "{name}"'))
    url = make_url(server_url()).set(database=name).render_as_string(hide_password=False)
    if migrated:
        migrate(url)
    return url


def drop_postgres_database(url: str) -> None:
    name = make_url(url).database
    asyncio.run(_admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


def migrate(url: str) -> None:
    async def _migrate() -> None:
        engine = create_engine(url)
        try:
            await upgrade_to_head(engine)
        finally:
            await engine.dispose()

    asyncio.run(_migrate())


@dataclass(frozen=True)
class OwnDatabase:
    """A test's own Postgres database (the fault suite's ``own_database`` fixture), so that
    refusing connections or terminating backends never touches another test's."""

    url: str
    name: str

    def refuse_connections(self) -> None:
        """``ALLOW_CONNECTIONS false`` and every session ended: what a failover or an
        operator's maintenance looks like to the gateway (SQLSTATE 55000 on connect)."""
        admin_sql(f'ALTER DATABASE "{self.name}" ALLOW_CONNECTIONS false')
        self.terminate_backends()

    def allow_connections(self) -> None:
        admin_sql(f'ALTER DATABASE "{self.name}" ALLOW_CONNECTIONS true')

    def terminate_backends(self) -> None:
        admin_sql(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
            f"WHERE datname = '{self.name}' AND pid <> pg_backend_pid()"
        )

    def set_for_new_sessions(self, setting: str, value: str) -> None:
        admin_sql(f"ALTER DATABASE \"{self.name}\" SET {setting} = '{value}'")

"""Throwaway databases for a test run: a fresh Postgres database and a SQLite file, migrated."""

from __future__ import annotations

import asyncio
import os
import uuid

import asyncpg
from sqlalchemy.engine import make_url

from gateway.db.engine import create_engine
from gateway.db.migrations import upgrade_to_head

DEFAULT_SERVER_URL = "postgresql://postgres@127.0.0.1:5432/postgres"


def server_url() -> str:
    return os.environ.get("GATEWAY_TEST_DATABASE_URL", DEFAULT_SERVER_URL)


def _asyncpg_dsn(url: str) -> str:
    return make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)


async def _admin(sql: str) -> None:
    connection = await asyncpg.connect(_asyncpg_dsn(server_url()), timeout=5)
    try:
        await connection.execute(sql)
    finally:
        await connection.close()


def admin_sql(sql: str) -> None:
    """Run one statement on the test server's maintenance database."""
    asyncio.run(_admin(sql))


def postgres_reachable() -> str | None:
    """None when the test server answers, else why not."""
    try:
        asyncio.run(_admin("SELECT 1"))
    except Exception as exc:
        return f"{type(exc).__name__}: {exc}"
    return None


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

"""Alembic environment: runs on the connection the gateway hands over (``gateway db upgrade``,
``gateway serve --migrate``, tests), or on ``GATEWAY_DATABASE_URL`` for the plain alembic CLI."""

from __future__ import annotations

import asyncio

from alembic import context
from sqlalchemy import Connection

from gateway.config import Settings
from gateway.db.base import Base
from gateway.db.engine import create_engine
from gateway.models import import_all_models

import_all_models()
target_metadata = Base.metadata


def _run(connection: Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        render_as_batch=connection.dialect.name == "sqlite",
        compare_type=True,
    )
    with context.begin_transaction():
        context.run_migrations()


async def _run_with_own_engine() -> None:
    engine = create_engine(Settings().require_database_url())
    async with engine.begin() as connection:
        await connection.run_sync(_run)
    await engine.dispose()


if context.is_offline_mode():
    raise SystemExit("offline (--sql) migrations are not supported; run against a database")

shared = context.config.attributes.get("connection")
if shared is not None:
    _run(shared)
else:
    asyncio.run(_run_with_own_engine())
